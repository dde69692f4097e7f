"""Dataset names: one scheme for every writer and every run, OpenLineage's naming spec.

* A lake table (Delta): the namespace comes from the lake URI, the name from the table path,
  exactly as the OpenLineage Spark agent names a Delta table it sees Spark read or write by
  path (``io.openlineage.client.utils.filesystem.FilesystemDatasetUtils``): a local path is
  ``file`` + the absolute path; ``s3://``, ``s3a://`` and ``s3n://`` are ``s3://<bucket>`` +
  the key (no leading slash); another object store is ``<scheme>://<authority>`` + the path.
  So the service's own events and the agent's name the same table the same way.
* A Kafka topic: ``kafka://<host>:<port>`` of the first bootstrap server + the topic.
* A warehouse table: ``postgres://<host>:<port>`` + ``<database>.<schema>.<table>``;
  ``snowflake://<account>`` + ``<DATABASE>.<SCHEMA>.<TABLE>`` (Snowflake's upper-cased
  identifiers); DuckDB, which the spec does not name, ``duckdb://<absolute file path>`` +
  ``<catalog>.<schema>.<table>`` (DuckDB's catalog of a file is its stem).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DatasetId",
    "duckdb_dataset",
    "kafka_dataset",
    "postgres_dataset",
    "snowflake_dataset",
    "table_dataset",
]

_S3_SCHEMES = ("s3", "s3a", "s3n")


@dataclass(frozen=True, order=True)
class DatasetId:
    """An OpenLineage dataset identity: the datasource (namespace) and the dataset (name)."""

    namespace: str
    name: str


def _clean(path: str) -> str:
    """A path without ``.``/``..`` steps or a trailing slash (``/`` stays ``/``)."""
    cleaned = posixpath.normpath(path) if path else ""
    return cleaned if cleaned not in ("", ".") else "/"


def table_dataset(uri: str) -> DatasetId:
    """The dataset of a lake table (a Delta table's folder).

    Args:
        uri: the table's location: a local path, ``file:`` URI or an object-store URI.

    Returns:
        Its identity, as the OpenLineage Spark agent gives it.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or len(scheme) == 1:  # a path (a one-letter scheme is a Windows drive)
        return DatasetId("file", _clean(str(Path(uri).absolute())))
    if scheme == "file":
        host = parts.netloc
        namespace = "file" if host in ("", "localhost") else f"file://{host}"
        return DatasetId(namespace, _clean(parts.path))
    if scheme in _S3_SCHEMES:
        scheme = "s3"
    key = _clean(parts.path).lstrip("/") or "/"
    return DatasetId(f"{scheme}://{parts.netloc}", key)


def kafka_dataset(bootstrap_servers: str, topic: str) -> DatasetId:
    """The dataset of a Kafka topic: ``kafka://<host>:<port>`` of the first bootstrap server
    (the agent's ``KafkaBootstrapServerResolver`` takes the first one too)."""
    first = bootstrap_servers.split(",")[0].strip()
    if "://" in first:  # SASL_SSL://host:port (no URL scheme: urlsplit refuses the "_")
        first = first.split("://", 1)[1].split("/", 1)[0]
    return DatasetId(f"kafka://{first}", topic)


def postgres_dataset(parts: Mapping[str, Any], schema: str, table: str) -> DatasetId:
    """The dataset of a PostgreSQL (or Redshift, through the same target) table.

    Args:
        parts: the connection's parts (libpq's names: ``host``, ``port``, ``dbname``,
            ``user``), the settings' fields over the DSN's; libpq's defaults fill the rest.
        schema: the warehouse schema.
        table: the table.
    """
    host = parts.get("host") or "localhost"
    port = parts.get("port") or 5432
    database = parts.get("dbname") or parts.get("user") or "postgres"
    return DatasetId(f"postgres://{host}:{port}", f"{database}.{schema}.{table}")


def snowflake_dataset(account: str, database: str, schema: str, table: str) -> DatasetId:
    """The dataset of a Snowflake table (unquoted identifiers, which Snowflake upper-cases)."""
    name = ".".join(part.upper() for part in (database, schema, table))
    return DatasetId(f"snowflake://{account.lower()}", name)


def duckdb_dataset(path: str, schema: str, table: str) -> DatasetId:
    """The dataset of a table in a DuckDB file."""
    file = Path(path).absolute()
    return DatasetId(f"duckdb://{file}", f"{file.stem}.{schema}.{table}")
