"""Rust panic reports are split from the rest of what goes to descriptor 2."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cdc.runtime.rust_output import rust_panics_logged, split_panics

PANIC = """
thread 'tokio-rt-worker' (1486) panicked at /cargo/object_store-0.13.2/src/buffered.rs:369:41:
Already shut down
stack backtrace:
   0: __rustc::rust_begin_unwind
             at /rustc/library/std/src/panicking.rs:697:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
"""


def test_split_keeps_other_lines_and_collects_each_report() -> None:
    kept, panics = split_panics("before\n" + PANIC + "WARN something else\n" + PANIC)
    assert kept == "before\nWARN something else\n"
    assert len(panics) == 2
    assert panics[0].startswith("thread 'tokio-rt-worker' (1486) panicked at ")
    assert panics[0].endswith("for a verbose backtrace.")


def test_capture_replays_other_output_and_drops_panics(capfd: pytest.CaptureFixture[str]) -> None:
    def write(text: str) -> None:
        os.write(2, text.encode())

    with rust_panics_logged():
        write("one\n")
        inner = threading.Thread(target=lambda: write(PANIC))
        with rust_panics_logged():  # another pipeline's thread, at the same time
            inner.start()
            inner.join()
        write("two\n")
        assert capfd.readouterr().err == ""  # held until the last leaver restores
    sys.stderr.flush()
    assert capfd.readouterr().err == "one\ntwo\n"
