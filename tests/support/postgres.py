"""A real PostgreSQL server for the warehouse tests.

The cluster installed on this machine (Debian's ``postgresql``; ``.ci/run`` installs and starts
it), started here when it is down, with a throwaway role and database for the test session;
``CDC_TEST_POSTGRES_DSN`` points the tests at an existing database instead. PostgreSQL not
installed is a test failure with a message saying so, never a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["PostgresDatabase", "postgres_database"]

DSN_ENV = "CDC_TEST_POSTGRES_DSN"


@dataclass(frozen=True)
class PostgresDatabase:
    """A database the tests own, reached over TCP with a password."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg connection (autocommit)."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.database,
            autocommit=True,
            **kwargs,
        )

    def overrides(self, schema: str, password_env: str) -> list[str]:
        """``--set`` overrides that make ``cdc publish`` write to ``schema`` here, the password
        read from the environment variable ``password_env`` (a secret reference)."""
        return [
            "warehouse.target=postgres",
            f"warehouse.host={self.host}",
            f"warehouse.port={self.port}",
            f"warehouse.user={self.user}",
            f"warehouse.database={self.database}",
            f"warehouse.password=env:{password_env}",
            f"warehouse.schema={schema}",
        ]


def _cluster() -> tuple[str, str, int, bool]:
    """The first installed cluster: version, name, port, whether it is online."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        pytest.fail(
            "PostgreSQL is not installed: the warehouse tests need a real server"
            " (apt-get install postgresql; .ci/run installs it)",
            pytrace=False,
        )
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            return fields[0], fields[1], int(fields[2]), fields[3].startswith("online")
    pytest.fail("PostgreSQL is installed but has no cluster (pg_createcluster)", pytrace=False)


def _admin(port: int, sql: str) -> None:
    """Run SQL as the ``postgres`` superuser over the local socket (peer authentication)."""
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(port), "-c", sql]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"psql as postgres failed: {done.stderr.strip()}", pytrace=False)


def _wait_ready(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run(
        ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
    ).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL on port {port} is not ready after {timeout_s:.0f}s")
        time.sleep(0.2)


@contextmanager
def postgres_database() -> Iterator[PostgresDatabase]:
    """A throwaway role and database on the local cluster (started if down), dropped after."""
    existing = os.environ.get(DSN_ENV)
    if existing:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(existing)
        yield PostgresDatabase(
            host=str(parts.get("host", "127.0.0.1")),
            port=int(parts.get("port", 5432)),
            user=str(parts["user"]),
            password=str(parts.get("password", "")),
            database=str(parts["dbname"]),
        )
        return
    version, name, port, online = _cluster()
    if not online:
        if os.geteuid() != 0:
            pytest.fail(
                f"PostgreSQL {version}/{name} is down and only root can start it here:"
                f" pg_ctlcluster {version} {name} start",
                pytrace=False,
            )
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    _wait_ready(port)
    role = f"cdc_test_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    _admin(port, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    _admin(port, f"CREATE DATABASE {role} OWNER {role}")
    try:
        yield PostgresDatabase("127.0.0.1", port, role, password, role)
    finally:
        _admin(port, f"DROP DATABASE IF EXISTS {role} WITH (FORCE)")
        _admin(port, f"DROP ROLE IF EXISTS {role}")
