"""A local AWS-compatible endpoint (moto's server) for SNS, SQS and Secrets Manager tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.endpoints import free_port, serve

__all__ = ["moto_server"]


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Start ``moto.server`` on a free loopback port; yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with serve(command, log_dir / "moto.log", f"{url}/moto-api/", "moto server"):
        yield url
