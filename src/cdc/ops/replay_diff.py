"""``cdc replay --diff``: what a replay did to each of the pipeline's tables, with examples.

A corrective replay should do what it was meant to and nothing else. The diff compares each
table before and after the replay:

* silver dimensions by row identity ``(keys, _seq_open)``: versions *added* (and among their
  keys, keys the table did not hold), versions *closed* (current before, not after),
  versions *rewritten* (same identity, other values: an in-place update, a late event that
  moved an interval's end), versions *removed* (a late event merged them away), and the rest
  unchanged;
* silver facts by event id: rows added and removed;
* bronze and quarantine: rows appended.

With a real replay, "before" is each table's Delta version when the replay started (read as
of that version; deletion vectors honoured), "after" its latest. With ``--dry-run`` nothing
of the pipeline is touched: its tables are copied to a scratch lake, the replay runs there
against the same topic (reading only), and the scratch tables are compared with the real
ones, then deleted. The copy costs the tables' size in I/O.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pyarrow import fs as pafs

from cdc.config.lake import pipeline_tables
from cdc.config.settings import Settings
from cdc.pipeline.checkpoint import TOPIC_FILE
from cdc.store import store_for
from cdc.store.files import filesystem

if TYPE_CHECKING:
    from cdc.store import TableStore

__all__ = [
    "TableDiff",
    "diff_pipeline",
    "diff_table",
    "format_diff",
    "scratch_lake",
    "table_versions",
]

_EXAMPLES = 3
_SYSTEM = (
    "_source_topic",
    "_source_partition",
    "_source_offset",
    "_seq_last",
    "_seq_close",
    "_seq_max",
    "_valid_max",
)


@dataclass
class TableDiff:
    """What changed in one table (counts, and a few examples per kind)."""

    role: str
    table: str
    kind: str
    """``scd2``, ``facts`` or ``log`` (bronze and quarantine: appended rows only)."""
    rows_before: int = 0
    rows_after: int = 0
    keys_added: int = 0
    added: int = 0
    closed: int = 0
    rewritten: int = 0
    removed: int = 0
    unchanged: int = 0
    keys_touched: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.closed or self.rewritten or self.removed) or (
            self.rows_after != self.rows_before
        )


def table_versions(settings: Settings, name: str) -> dict[str, int | None]:
    """The latest Delta version of each of the pipeline's tables (None: no table yet)."""
    store = _store(settings)
    return {role: store.version(uri) for role, uri in _tables(settings, name).items()}


def _store(settings: Settings) -> TableStore:
    return store_for(settings.lake.writer, settings.lake.resolved_storage_options())


def _tables(settings: Settings, name: str) -> dict[str, str]:
    return pipeline_tables(settings, settings.pipeline(name))


def _read(store: TableStore, uri: str, version: int | None) -> pl.DataFrame | None:
    """The table as of ``version`` (latest when None); None when it did not exist."""
    rows = store.read(uri, version)
    if rows is None:
        return None
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "")
        return text.removesuffix("000").removesuffix(".000") + "Z"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key_text(row: Mapping[str, Any], keys: list[str]) -> str:
    return ",".join(f"{k}={row[k]}" for k in keys)


def diff_table(
    role: str,
    before: pl.DataFrame | None,
    after: pl.DataFrame | None,
    keys: list[str],
    kind: str,
    table: str,
) -> TableDiff:
    """Compare one table before and after.

    Args:
        role: ``silver``, ``bronze``, ``quarantine`` or ``orphans``.
        before: the table before (None: it did not exist).
        after: the table after.
        keys: the dimension's keys (scd2) or the event id column (facts).
        kind: ``scd2``, ``facts`` or ``log``.
        table: the table's name, for the report.
    """
    out = TableDiff(role, table, kind)
    out.rows_before = 0 if before is None else before.height
    out.rows_after = 0 if after is None else after.height
    if kind == "log" or after is None:
        out.added = max(out.rows_after - out.rows_before, 0) if kind == "log" else 0
        return out
    if before is None:
        before = after.clear()
    if kind == "facts":
        added = after.join(before, on=keys, how="anti", nulls_equal=True)
        removed = before.join(after, on=keys, how="anti", nulls_equal=True)
        out.added, out.removed = added.height, removed.height
        out.unchanged = after.height - added.height
        out.keys_touched = added.height + removed.height
        out.examples += [
            f"added    {_key_text(r, keys)}" for r in added.head(_EXAMPLES).iter_rows(named=True)
        ]
        out.examples += [
            f"removed  {_key_text(r, keys)}" for r in removed.head(_EXAMPLES).iter_rows(named=True)
        ]
        return out
    identity = [*keys, "_seq_open"]
    compare = [c for c in after.columns if c not in identity and c not in _SYSTEM]
    compare = [c for c in compare if c in before.columns]
    old = before.select(*identity, *compare).rename({c: f"{c}__before" for c in compare})
    joined = after.select(*identity, *compare).join(
        old, on=identity, how="full", coalesce=True, nulls_equal=True
    )
    in_after = pl.col("is_current").is_not_null()
    in_before = pl.col("is_current__before").is_not_null()
    closed = in_after & in_before & pl.col("is_current__before") & ~pl.col("is_current")
    values = [c for c in compare if c not in ("is_current", "valid_to")]
    rewrote = pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(f"{c}__before")) for c in values] or [pl.lit(False)]
    ) | (
        pl.col("valid_to").ne_missing(pl.col("valid_to__before"))
        & pl.col("is_current__before").eq(False)
    )
    flagged = joined.with_columns(
        _added=in_after & ~in_before,
        _removed=in_before & ~in_after,
        _closed=closed,
        _rewritten=in_after & in_before & rewrote,
    )
    before_keys = before.select(keys).unique()
    added = flagged.filter("_added")
    out.added = added.height
    out.keys_added = (
        added.select(keys).unique().join(before_keys, on=keys, how="anti", nulls_equal=True).height
    )
    out.removed = flagged.filter("_removed").height
    out.closed = flagged.filter("_closed").height
    out.rewritten = flagged.filter("_rewritten").height
    touched = flagged.filter(pl.any_horizontal("_added", "_removed", "_closed", "_rewritten"))
    out.unchanged = flagged.filter(
        ~pl.any_horizontal("_added", "_removed", "_closed", "_rewritten")
    ).height
    out.keys_touched = touched.select(keys).unique().height

    def changes(row: Mapping[str, Any]) -> str:
        moved = [
            f"{c} {_show(row[f'{c}__before'])} -> {_show(row[c])}"
            for c in compare
            if c != "is_current" and row[c] != row[f"{c}__before"]
        ]
        return "; ".join(moved)

    for label, flag in (
        ("added", "_added"),
        ("closed", "_closed"),
        ("rewritten", "_rewritten"),
        ("removed", "_removed"),
    ):
        for row in flagged.filter(flag).sort(identity).head(_EXAMPLES).iter_rows(named=True):
            when = row["valid_from"] if label != "removed" else row["valid_from__before"]
            text = f"{label:<10}{_key_text(row, keys)} version from {_show(when)}"
            if label in ("closed", "rewritten"):
                text += f": {changes(row)}"
            elif label == "added":
                text += " (current)" if row["is_current"] else f" to {_show(row['valid_to'])}"
            out.examples.append(text)
    return out


def diff_pipeline(
    settings: Settings,
    name: str,
    before_versions: Mapping[str, int | None],
    after_settings: Settings | None = None,
) -> list[TableDiff]:
    """Diff each of the pipeline's tables: as of ``before_versions`` in ``settings``' lake,
    against their latest versions in ``after_settings``' lake (default: the same lake)."""
    pipeline = settings.pipeline(name)
    after_settings = after_settings or settings
    before_uris, after_uris = _tables(settings, name), _tables(after_settings, name)
    stores = _store(settings), _store(after_settings)
    out: list[TableDiff] = []
    for role in ("silver", "bronze", "quarantine"):
        version = before_versions.get(role)
        before = None if version is None else _read(stores[0], before_uris[role], version)
        after = _read(stores[1], after_uris[role], None)
        if role != "silver":
            kind, keys = "log", []
        elif pipeline.kind == "scd2":
            kind, keys = "scd2", list(pipeline.keys)
        else:
            kind, keys = "facts", [pipeline.event_id or "event_id"]
        out.append(diff_table(role, before, after, keys, kind, Path(before_uris[role]).name))
    return out


def format_diff(name: str, diffs: list[TableDiff], *, dry_run: bool) -> str:
    """The report: one row per table, then examples."""
    title = f"diff of the replay of {name}"
    if dry_run:
        title += " (dry run: replayed into a scratch copy of its tables; nothing changed)"
    header = (
        "table",
        "rows before",
        "rows after",
        "keys+",
        "versions+",
        "closed",
        "rewritten",
        "removed",
        "unchanged",
    )
    rows = [header]
    for d in diffs:
        if d.kind == "log":
            rows.append(
                (
                    f"{d.role}/{d.table}",
                    str(d.rows_before),
                    str(d.rows_after),
                    "",
                    f"+{d.added} rows",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        rows.append(
            (
                f"{d.role}/{d.table}",
                str(d.rows_before),
                str(d.rows_after),
                str(d.keys_added) if d.kind == "scd2" else "",
                str(d.added),
                str(d.closed) if d.kind == "scd2" else "",
                str(d.rewritten) if d.kind == "scd2" else "",
                str(d.removed),
                str(d.unchanged),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    examples = [(d, e) for d in diffs for e in d.examples]
    if examples:
        lines.append("examples:")
        lines += [f"  {d.role}/{d.table}: {e}" for d, e in examples]
    elif not any(d.changed for d in diffs):
        lines.append("no table changed")
    return "\n".join(lines)


@contextmanager
def scratch_lake(settings: Settings, name: str) -> Iterator[tuple[Settings, dict[str, int | None]]]:
    """A copy of the pipeline's tables in a local scratch lake, with its own checkpoints.

    Yields:
        The scratch settings (lake and checkpoints in a temporary folder, metrics off) and
        the versions of the real tables that were copied.
    """

    scratch = Path(tempfile.mkdtemp(prefix=f"cdc-replay-diff-{name}-"))
    try:
        versions = table_versions(settings, name)
        local = settings.with_lake_root(str(scratch / "lake"))
        local = local.model_copy(
            update={
                "lake": local.lake.model_copy(update={"storage_options": {}}),
                "checkpoints": settings.checkpoints.model_copy(
                    update={"root": str(scratch / "checkpoints")}
                ),
                "metrics": settings.metrics.model_copy(update={"enabled": False}),
            }
        )
        # The plan counts rows of the topic's current incarnation as the real checkpoint does.
        topic_file = Path(settings.checkpoint_path(name)) / TOPIC_FILE
        if topic_file.is_file():
            Path(local.checkpoint_path(name)).mkdir(parents=True)
            shutil.copy(topic_file, Path(local.checkpoint_path(name)) / TOPIC_FILE)
        options = settings.lake.resolved_storage_options()
        for role, uri in _tables(settings, name).items():
            if versions.get(role) is None:
                continue
            src_fs, src = filesystem(uri, options)
            dst = _tables(local, name)[role]
            Path(dst).mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                src, dst, source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem()
            )
        yield local, versions
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
