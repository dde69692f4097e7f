"""One writer per pipeline checkpoint: an exclusive, non-blocking ``flock`` beside it.

Two queries writing one Spark checkpoint corrupt it, and a replay must not move a checkpoint
aside under a running query. ``cdc run`` and ``cdc replay`` therefore hold
``<checkpoints.root>/<pipeline>.lock`` while they work. The lock file sits *beside* the
checkpoint folder, not inside it, so moving the folder aside does not drop the lock.

The kernel releases a ``flock`` when its holder exits, however it exits (``kill -9``
included), so a stale file never blocks anyone; its content (pid, host, start time of the
holder) only serves the message of whoever is refused.

Limits: the checkpoint root must be a local path (a POSIX file system). On Kubernetes the
PVC holding the checkpoints must support ``flock`` across the pods that mount it (a
``ReadWriteOnce`` volume used by one node does; NFS needs its lock manager) — otherwise
scale the streaming app to 0 before ``cdc replay``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from cdc.errors import ConfigError, PipelineRunningError

__all__ = ["LockHolder", "PipelineLock", "lock_path"]


def lock_path(checkpoint_root: str | Path, pipeline: str) -> Path:
    """The lock file of one pipeline: ``<checkpoint_root>/<pipeline>.lock``.

    Args:
        checkpoint_root: ``checkpoints.root`` (a local path, or a ``file://`` URI).
        pipeline: pipeline name.

    Raises:
        ConfigError: the root is a remote URI (``flock`` needs a local file system).
    """
    root = str(checkpoint_root)
    if root.startswith("file://"):
        root = root[len("file://") :]
    elif "://" in root:
        raise ConfigError(
            f"checkpoints.root {root} is not a local path; pipeline locks (flock) need one"
        )
    return Path(root) / f"{pipeline}.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a pipeline lock, as its holder wrote it into the lock file."""

    pid: int
    host: str
    since: str
    """UTC start time, ISO 8601 (``2026-01-05T08:00:00Z``)."""

    def to_json(self) -> str:
        """The lock file's content."""
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since}) + "\n"

    @classmethod
    def from_text(cls, text: str) -> LockHolder | None:
        """Parse a lock file's content; None when empty or unreadable (holder mid-write)."""
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), host=str(data["host"]), since=str(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PipelineLock:
    """Exclusive, non-blocking lock of one pipeline (a context manager).

    Example::

        with PipelineLock(settings.checkpoints.root, "crm_contacts"):
            ...  # nobody else runs or replays crm_contacts meanwhile
    """

    def __init__(
        self,
        checkpoint_root: str | Path,
        pipeline: str,
        *,
        action: str = "replaying",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Describe the lock; nothing is opened until :meth:`acquire`.

        Args:
            checkpoint_root: ``checkpoints.root``.
            pipeline: pipeline name.
            action: what the refused caller wanted to do, for the refusal message
                (``stop it before <action>``).
            clock: current UTC time (tests).
        """
        self.pipeline = pipeline
        self.path = lock_path(checkpoint_root, pipeline)
        self.action = action
        self._clock = clock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and record this process as its holder.

        Raises:
            PipelineRunningError: another process (or another lock object) holds it.
            ConfigError: the lock file cannot be created.
        """
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # No O_TRUNC: the file names the current holder until we own the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineRunningError(self.refusal()) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(
                f"cannot lock {self.path}: {exc.strerror} (the file system must support flock)"
            ) from None
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.to_json().encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: deleting it would race with the next locker)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def holder(self) -> LockHolder | None:
        """The holder recorded in the lock file (None when none or unreadable)."""
        try:
            return LockHolder.from_text(self.path.read_text())
        except OSError:
            return None

    def is_held_elsewhere(self) -> bool:
        """Probe whether another process holds the lock, without keeping it.

        Returns:
            True when the lock is held by someone else right now.
        """
        if self._fd is not None or not self.path.exists():
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
        return False

    def refusal(self) -> str:
        """The one-line message of a refused caller, naming the holder."""
        holder = self.holder()
        who = (
            f"pid {holder.pid} on host {holder.host} since {holder.since}"
            if holder is not None
            else f"holder not recorded yet in {self.path}"
        )
        return f"pipeline {self.pipeline} is running ({who}); stop it before {self.action}"

    def __enter__(self) -> PipelineLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
