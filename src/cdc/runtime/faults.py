"""Crash injection for the fault suite: SIGKILL the driver at a commit stage of a batch."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from cdc.errors import CdcError

__all__ = ["FAULT_ENV", "FAULT_STAGES", "FaultHook", "fault_hook_from_env"]

FaultHook = Callable[[str, int], None]
"""Called with (stage, batch_id) around each commit; tests use it to inject crashes."""


FAULT_ENV = "CDC_FAULT_INJECT"
FAULT_STAGES = ("before-commit", "mid-commit", "after-commit")


def fault_hook_from_env(environ: dict[str, str] | None = None) -> FaultHook | None:
    """A hook that SIGKILLs this process at ``$CDC_FAULT_INJECT`` = ``<stage>:<batch_id>``.

    For crash tests only: ``cdc run`` refuses it in the ``prod`` env. Stages are
    ``before-commit`` (nothing written), ``mid-commit`` (bronze and quarantine written,
    silver not) and ``after-commit`` (all tables written, Spark's commit log not).
    """
    spec = (environ if environ is not None else dict(os.environ)).get(FAULT_ENV)
    if not spec:
        return None
    stage, _, batch = spec.partition(":")
    if stage not in FAULT_STAGES or not batch.isdigit():
        raise CdcError(
            f"{FAULT_ENV}={spec!r}: expected <stage>:<batch_id>, "
            f"stage one of {', '.join(FAULT_STAGES)}"
        )
    target = int(batch)

    def hook(at: str, batch_id: int) -> None:
        if at == stage and batch_id == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
