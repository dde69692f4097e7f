"""A real PostgreSQL server for the warehouse tests.

The cluster installed on this machine (Debian's ``postgresql``; ``.ci/run`` installs and starts
it), started here when it is down, with a throwaway role and database for the test session;
``CDC_TEST_POSTGRES_DSN`` points the tests at an existing database instead. PostgreSQL not
installed is a test failure with a message saying so, never a skip.

The governance tests need more (``postgres_database(governed=True)``): pgaudit loaded by the
server (added to ``shared_preload_libraries`` and the cluster restarted, once: later sessions
find it loaded), the owner allowed to create roles and to set ``pgaudit.role``, the server log
to read audit lines from (``CDC_TEST_POSTGRES_LOG`` with an existing database), and every role
named ``<owner>_*`` dropped afterwards. pgaudit not installed fails, saying how to install it.
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
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresDatabase", "postgres_database"]

DSN_ENV = "CDC_TEST_POSTGRES_DSN"
LOG_ENV = "CDC_TEST_POSTGRES_LOG"
PGAUDIT_INSTALL = (
    "pgaudit is not installed: apt-get install postgresql-{version}-pgaudit (.ci/run installs it)"
)


@dataclass(frozen=True)
class PostgresDatabase:
    """A database the tests own, reached over TCP with a password."""

    host: str
    port: int
    user: str
    password: str
    database: str
    log: Path | None = None
    """The server's log file (audit lines), when known."""

    def connect(self, user: str | None = None, password: str | None = None, **kwargs: Any) -> Any:
        """A psycopg connection (autocommit), as the owner or as ``user``."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=user or self.user,
            password=self.password if password is None else password,
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


def _cluster() -> tuple[str, str, int, bool, Path]:
    """The first installed cluster: version, name, port, whether it is online, its log."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        pytest.fail(
            "PostgreSQL is not installed: the warehouse tests need a real server"
            " (apt-get install postgresql; .ci/run installs it)",
            pytrace=False,
        )
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 7:
            online = fields[3].startswith("online")
            return fields[0], fields[1], int(fields[2]), online, Path(fields[6])
    pytest.fail("PostgreSQL is installed but has no cluster (pg_createcluster)", pytrace=False)


def _admin(port: int, sql: str, database: str = "postgres") -> str:
    """Run SQL as the ``postgres`` superuser over the local socket (peer authentication);
    returns what it printed (unaligned, tuples only)."""
    command = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-p", str(port)]
    command += ["-d", database, "-c", sql]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"psql as postgres failed: {done.stderr.strip()}", pytrace=False)
    return done.stdout.strip()


def _start(version: str, name: str, action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _ensure_pgaudit(version: str, name: str, port: int) -> None:
    """Have the cluster load pgaudit: added to ``shared_preload_libraries`` and restarted
    the first time, nothing to do later (``ALTER SYSTEM`` keeps it)."""
    if _admin(port, "SELECT count(*) FROM pg_settings WHERE name = 'pgaudit.role'") == "1":
        return
    libdir = subprocess.run(
        [f"/usr/lib/postgresql/{version}/bin/pg_config", "--pkglibdir"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not (Path(libdir) / "pgaudit.so").exists():
        pytest.fail(PGAUDIT_INSTALL.format(version=version), pytrace=False)
    loaded = _admin(port, "SHOW shared_preload_libraries")
    libraries = ",".join([*(lib.strip() for lib in loaded.split(",") if lib.strip()), "pgaudit"])
    _admin(port, f"ALTER SYSTEM SET shared_preload_libraries = '{libraries}'")
    _start(version, name, "restart")
    _wait_ready(port)


def _wait_ready(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run(
        ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
    ).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL on port {port} is not ready after {timeout_s:.0f}s")
        time.sleep(0.2)


@contextmanager
def postgres_database(governed: bool = False) -> Iterator[PostgresDatabase]:
    """A throwaway role and database on the local cluster (started if down), dropped after.

    Args:
        governed: also load pgaudit, let the owner create roles and set ``pgaudit.role``,
            and drop the roles named ``<owner>_*`` afterwards (the governance tests).
    """
    existing = os.environ.get(DSN_ENV)
    if existing:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(existing)
        log = os.environ.get(LOG_ENV)
        found = PostgresDatabase(
            host=str(parts.get("host", "127.0.0.1")),
            port=int(parts.get("port", 5432)),
            user=str(parts["user"]),
            password=str(parts.get("password", "")),
            database=str(parts["dbname"]),
            log=Path(log) if log else None,
        )
        if governed:
            with found.connect() as conn:
                loaded = conn.execute(
                    "SELECT count(*) FROM pg_settings WHERE name = 'pgaudit.role'"
                ).fetchone()
            if not loaded or not loaded[0]:
                pytest.fail(PGAUDIT_INSTALL.format(version="<version>"), pytrace=False)
        yield found
        return
    version, name, port, online, log = _cluster()
    if not online:
        if os.geteuid() != 0:
            pytest.fail(
                f"PostgreSQL {version}/{name} is down and only root can start it here:"
                f" pg_ctlcluster {version} {name} start",
                pytrace=False,
            )
        _start(version, name, "start")
    _wait_ready(port)
    if governed:
        _ensure_pgaudit(version, name, port)
    role = f"cdc_test_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    _admin(port, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    _admin(port, f"CREATE DATABASE {role} OWNER {role}")
    if governed:
        _admin(port, f"ALTER ROLE {role} CREATEROLE")
        _admin(port, f"GRANT SET ON PARAMETER pgaudit.role TO {role}")
    try:
        yield PostgresDatabase("127.0.0.1", port, role, password, role, log)
    finally:
        _admin(port, f"DROP DATABASE IF EXISTS {role} WITH (FORCE)")
        if governed:
            _admin(port, f"REVOKE SET ON PARAMETER pgaudit.role FROM {role}")
            others = _admin(
                port, f"SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{role}_')"
            )
            for other in others.split():
                _admin(port, f'DROP ROLE IF EXISTS "{other}"')
        _admin(port, f"DROP ROLE IF EXISTS {role}")
