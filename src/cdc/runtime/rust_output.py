"""Keep Rust panic reports of delta-rs off the terminal; the error they cause stays.

When a write fails half-way (a full disk, a storage outage), delta-rs's worker threads can
panic while shutting down ("thread 'tokio-rt-worker' panicked at ... Already shut down")
and Rust prints that, with a backtrace when ``RUST_BACKTRACE`` is set, straight to file
descriptor 2. The write itself then fails with a proper exception, which the service turns
into its one-line error. :func:`rust_panics_logged` captures descriptor 2 around delta-rs
calls, passes everything else through unchanged when the call ends, and moves the panic
reports to the debug log.

Several threads may write at once (one per running pipeline): the descriptor is redirected
by the first of them and restored, with the captured text, by the last.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["rust_panics_logged", "split_panics"]

log = logging.getLogger(__name__)

_PANIC = re.compile(r"^thread '.*' (\(\d+\) )?panicked at ")
_PANIC_DETAIL = re.compile(
    r"^(stack backtrace:|note: |\s+\d+: |\s+at |Already shut down|called `\w+::unwrap\(\)`)"
)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture: IO[bytes] | None = None


def split_panics(text: str) -> tuple[str, list[str]]:
    """Split captured stderr into what passes through and the Rust panic reports.

    A report starts at ``thread '...' panicked at`` and runs over the lines Rust prints
    with it (the message, ``stack backtrace:``, numbered frames, ``at`` locations, notes).
    """
    kept: list[str] = []
    panics: list[str] = []
    current: list[str] | None = None
    blank: list[str] = []  # Rust starts a report with an empty line: held until known
    for line in text.splitlines(keepends=True):
        if _PANIC.match(line):
            if current is not None:
                panics.append("".join(current))
            current, blank = [line], []
        elif current is not None and (_PANIC_DETAIL.match(line) or not line.strip()):
            current.append(line)
        elif not line.strip():
            blank.append(line)
        else:
            if current is not None:
                panics.append("".join(current))
                current = None
            kept.extend(blank)
            blank = []
            kept.append(line)
    if current is not None:
        panics.append("".join(current))
    kept.extend(blank)
    return "".join(kept), [p.strip() for p in panics]


@contextmanager
def rust_panics_logged() -> Iterator[None]:
    """Capture descriptor 2 for the block; replay it without Rust panic reports after."""
    global _depth, _saved_fd, _capture
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _capture = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the last leaver)
            _saved_fd = os.dup(2)
            os.dup2(_capture.fileno(), 2)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore()


def _restore() -> None:
    global _saved_fd, _capture
    assert _saved_fd is not None and _capture is not None
    sys.stderr.flush()
    os.dup2(_saved_fd, 2)
    os.close(_saved_fd)
    capture, _saved_fd, _capture = _capture, None, None
    capture.seek(0)
    text = capture.read().decode("utf-8", errors="replace")
    capture.close()
    kept, panics = split_panics(text)
    if kept.strip():
        os.write(2, kept.encode("utf-8"))
    for panic in panics:
        log.debug("delta-rs panicked (its error is reported on its own): %s", panic)
