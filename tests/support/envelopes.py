"""Debezium change envelopes of the ``crm.contacts`` table, as the test producers send them."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["SOURCE_TYPE", "T0", "bronze_schema", "change", "contact_envelope", "contact_row"]

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
"""Source time (epoch ms) of LSN 0: the tests' clock starts here."""

SOURCE_TYPE = pa.struct(
    [
        ("connector", pa.string()),
        ("ts_ms", pa.int64()),
        ("lsn", pa.int64()),
        ("txId", pa.int64()),
        ("file", pa.string()),
        ("pos", pa.int64()),
        ("row", pa.int32()),
        ("commit_lsn", pa.string()),
        ("change_lsn", pa.string()),
        ("event_serial_no", pa.int64()),
    ]
)
"""The ordering fields of the registry's Debezium ``source`` block, as bronze holds them."""


def bronze_schema(key: pa.DataType, value: pa.DataType) -> pa.Schema:
    """The columns of decoded rows the writers read (bronze's, less audit and raw bytes)."""
    return pa.schema(
        [
            ("topic", pa.string()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("timestamp", pa.timestamp("us", "UTC")),
            ("key", key),
            ("value", value),
        ]
    )


def contact_row(contact_id: str = "c1", ts: int = 0, **overrides: Any) -> dict[str, Any]:
    """A ``crm.contacts`` row (the envelope's ``after``) updated ``ts`` ms after :data:`T0`."""
    return {
        "contact_id": contact_id,
        "account_id": "a1",
        "email": "jo@example.com",
        "first_name": "Jo",
        "last_name": "Doe",
        "phone": None,
        "updated_at": T0 + ts,
        **overrides,
    }


def contact_envelope(
    op: str,
    ts: int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    snapshot: bool = False,
) -> dict[str, Any]:
    """A Debezium PostgreSQL envelope of one ``crm.contacts`` change.

    Args:
        op: ``c``, ``u``, ``d`` or ``r`` (snapshot read).
        ts: milliseconds after :data:`T0` the source committed the change; also its LSN.
            The connector emits it 5 ms later.
        before: the row before the change (updates and deletes).
        after: the row after the change (none for a delete).
        snapshot: ``source.snapshot``: the change was read by the initial snapshot.

    Returns:
        The envelope's datum (``crm.contacts-value``).
    """
    return {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": T0 + ts + 5,
        "source": {
            "version": "2.7.0",
            "connector": "postgresql",
            "name": "crm",
            "db": "crm",
            "table": "contacts",
            "ts_ms": T0 + ts,
            "lsn": ts,
            "txId": None,
            "snapshot": snapshot,
        },
    }


def change(
    cid: str,
    op: str,
    ts: int,
    *,
    email: str | None = None,
    last: str = "Doe",
    phone: str | None = None,
    acct: str = "a1",
) -> dict[str, Any]:
    """A ``cdc produce`` line of one ``crm.contacts`` change, committed ``ts`` ms after T0.

    Args:
        cid: the contact (the record's key).
        op: ``c``, ``u``, ``d`` or ``r``.
        ts: the source commit time after :data:`T0` (and the LSN).
        email: the row's email after the change (the contract requires one but on deletes).
        last: its last name.
        phone: its phone (untracked in silver).
        acct: its account.

    Returns:
        ``{"key": ..., "value": <envelope>}``; the row before an update or delete has the
        email ``old@x.io``.
    """
    after = None
    if op != "d":
        after = contact_row(cid, ts, email=email, last_name=last, phone=phone, account_id=acct)
    before = contact_row(cid, ts, email="old@x.io") if op in ("u", "d") else None
    return {"key": {"contact_id": cid}, "value": contact_envelope(op, ts, before, after)}
