"""A local AWS-compatible endpoint (moto's server) for SNS, SQS, Secrets Manager and Lake
Formation tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.endpoints import free_port, serve

__all__ = ["moto_server"]


@contextmanager
def moto_server(log_dir: Path, lakeformation: bool = False) -> Iterator[str]:
    """Start ``moto.server`` on a free loopback port; yield its URL.

    Args:
        log_dir: where the server's output goes.
        lakeformation: with the Lake Formation behaviours moto lacks
            (``tests/support/moto_lakeformation.py``).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = (
        [str(Path(__file__).with_name("moto_lakeformation.py"))]
        if lakeformation
        else ["-m", "moto.server"]
    )
    command = [sys.executable, *server, "-H", "127.0.0.1", "-p", str(port)]
    with serve(command, log_dir / "moto.log", f"{url}/moto-api/", "moto server"):
        yield url
