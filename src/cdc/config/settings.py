"""Typed settings: ``config/<env>.yaml`` + ``CDC_<SECTION>_<KEY>`` env vars + ``--set`` overrides.

Precedence, lowest first: the files an environment's file names under ``include`` (in that
order; ``config/pipelines.yaml`` holds the pipelines every environment shares), the
environment's file, environment variables, ``--set dotted.key=value``. A later file's
mapping merges into an earlier one's key by key; any other value replaces.
Every model is frozen and rejects unknown keys; the error lists the valid ones.
Secret values are written as references (``env:NAME``, ``file:/path``,
``aws-sm:secret-id#key``) and resolved only when a client is built; neither the
reference's value nor a resolved secret ever appears in ``repr``, logs or errors. A setting
that carries a secret says so in its type (:class:`Secret`): :func:`secret_fields` lists them
all, ``repr`` hides them and the log redactor (:mod:`cdc.runtime.logs`) cleans their values out of
every output.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cdc.config.expectations import ExpectationSettings, unique_names
from cdc.config.kafka_clients import java_client_config
from cdc.errors import ConfigError, UnknownPipelineError

# boto3 is imported where an aws-sm: secret reference is resolved: most runs name none.

__all__ = [
    "ENVS",
    "WAREHOUSE_TARGETS",
    "CheckpointSettings",
    "GoldSettings",
    "GovernanceSettings",
    "KafkaSettings",
    "LakeSettings",
    "LineageSettings",
    "MetricsSettings",
    "PipelineSettings",
    "RegistrySettings",
    "Secret",
    "Settings",
    "SourceTimeWindow",
    "SparkSettings",
    "WarehouseSettings",
    "apply_overrides",
    "is_secret_ref",
    "load_settings",
    "merge_mappings",
    "read_config",
    "resolve_secret",
    "secret_fields",
    "secret_settings",
]

ENVS = ("local", "dev", "prod")
_SECRET_PREFIXES = ("env:", "file:", "aws-sm:")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|seconds?|m|minutes?)\s*$")


@dataclass(frozen=True)
class Secret:
    """Marks a setting that carries a secret: ``Annotated[str | None, Secret("value")]``.

    Its values may be secret references (resolved only when a client is built), ``repr``
    shows ``***`` in their place, and :mod:`cdc.runtime.logs` removes their resolved values from
    every output; the configuration reference (:mod:`cdc.config.reference`) says so for each
    such key. A new secret setting needs nothing else (the sweep of
    ``tests/integration/test_secret_sweep.py`` then asks for a case that exercises it).
    """

    carries: Literal["value", "credentials", "entries"]
    """``value``: the whole value is the secret (a password; a webhook URL, whose path is the
    credential). ``credentials``: a URL or connection string whose password is the secret (the
    whole value is, when it holds one or cannot be parsed). ``entries``: a map of client
    settings, of which an entry is a secret when its name says so (password, secret, token,
    key, JAAS, credential) or its value is given as a secret reference."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        secret = _secret_markers(type(self))
        for name, value in super().__repr_args__():
            marker = secret.get(name or "")
            if marker is None or not value:
                yield name, value
            elif isinstance(value, Mapping):
                yield name, {k: "***" for k in value}
            else:
                yield name, "***"


def _secret_markers(model: type[BaseModel]) -> dict[str, Secret]:
    """The fields of ``model`` (not of its sub-models) marked :class:`Secret`."""
    return {
        name: marker
        for name, field in model.model_fields.items()
        for marker in field.metadata
        if isinstance(marker, Secret)
    }


def _sub_models(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """The models inside a field's type: ``("", M)`` for ``M`` or ``M | None``, ``("*", M)``
    for a map or a list of them (any key, any index)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
        return
    origin = getattr(annotation, "__origin__", None)
    for i, arg in enumerate(get_args(annotation)):
        if origin is dict and i == 0:
            continue
        for step, model in _sub_models(arg):
            yield ("*" if origin in (dict, list, tuple) else step), model


def secret_fields(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, Secret]:
    """Every setting marked :class:`Secret`, by dotted path (``*`` for any map key).

    Args:
        model: where to start (default :class:`Settings`).
        prefix: the dotted path of ``model``.
    """
    model = Settings if model is None else model
    found = {f"{prefix}{name}": marker for name, marker in _secret_markers(model).items()}
    for name, field in model.model_fields.items():
        for step, sub in _sub_models(field.annotation):
            path = f"{prefix}{name}." + (f"{step}." if step else "")
            found.update(secret_fields(sub, path))
    return found


def secret_settings(settings: BaseModel) -> Iterator[tuple[str, Secret, Any]]:
    """The secret settings that hold a value: ``(dotted path, marker, value as written)``.

    Values are as configured: references are not resolved here.
    """
    for path, marker in secret_fields(type(settings)).items():
        yield from _values_at(settings, path.split("."), marker, [])


def _values_at(
    node: Any, parts: list[str], marker: Secret, seen: list[str]
) -> Iterator[tuple[str, Secret, Any]]:
    if node is None:
        return
    if not parts:
        if node:
            yield ".".join(seen), marker, node
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, child in items:
            yield from _values_at(child, rest, marker, [*seen, str(key)])
        return
    yield from _values_at(getattr(node, head, None), rest, marker, [*seen, head])


def is_secret_ref(value: str) -> bool:
    """Return True when ``value`` is a secret reference rather than a literal."""
    return value.startswith(_SECRET_PREFIXES)


def resolve_secret(value: str) -> str:
    """Resolve a secret reference; literals pass through unchanged.

    Args:
        value: ``env:NAME``, ``file:/path``, ``aws-sm:secret-id#key`` or a literal.

    Returns:
        The secret's value.

    Raises:
        ConfigError: the reference cannot be resolved (the message names the reference only).
    """
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"secret reference {value!r}: environment variable is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret reference {value!r}: cannot read file") from exc
    if value.startswith("aws-sm:"):
        secret_id, _, key = value[7:].partition("#")
        try:
            import boto3

            raw = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)[
                "SecretString"
            ]
        except Exception as exc:
            raise ConfigError(
                f"secret reference {value!r}: AWS Secrets Manager lookup failed"
            ) from exc
        if not key:
            return str(raw)
        try:
            document = json.loads(raw)
        except ValueError:  # its text quotes the secret: not chained
            raise ConfigError(
                f"secret reference {value!r}: the secret is not JSON (a #key needs an object)"
            ) from None
        if not isinstance(document, dict) or key not in document:
            raise ConfigError(f"secret reference {value!r}: key not found in secret")
        return str(document[key])
    return value


class KafkaSettings(_Model):
    """Where the Kafka cluster is and how to talk to it."""

    bootstrap_servers: str
    """Kafka's bootstrap servers, ``host:port[,host:port...]``."""
    embedded: bool = False
    """True when ``cdc broker`` (the embedded Kafka broker) is expected to serve
    ``bootstrap_servers``."""
    client: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """Extra librdkafka settings (e.g. ``security.protocol``); values may be secret references.
    Spark's Kafka source gets their Java equivalents
    (:func:`cdc.config.kafka_clients.java_client_config`)."""
    java_client: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """Java client settings for Spark's Kafka source only (passed as ``kafka.<name>``); they win
    over the ones translated from ``client``. Values may be secret references."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds a command waits for the cluster's metadata before it stops with "broker
    unavailable"."""

    def client_config(self) -> dict[str, str]:
        """librdkafka settings with secret references resolved."""
        return {k: resolve_secret(v) for k, v in self.client.items()}

    def java_config(self) -> dict[str, str]:
        """Java client settings for Spark's Kafka source, secrets resolved."""
        translated = java_client_config(self.client_config())
        return {**translated, **{k: resolve_secret(v) for k, v in self.java_client.items()}}


class RegistrySettings(_Model):
    """The Avro registry of record and the topic contracts."""

    path: Path = Path("schemas/avro")
    """The file registry: one folder per subject of versioned ``.avsc`` files and
    ``index.json`` (the stable schema ids). Relative paths, here and below, are taken from the
    config folder's parent."""
    contracts: Path = Path("schemas/contracts.yaml")
    """The topic contracts: each topic's reader schema and rules."""
    url: Annotated[str | None, Secret("credentials")] = None
    """A Confluent-compatible HTTP registry to resolve writer schema ids (optional); it may
    carry a user and password (``https://user:pass@host``), so it may be a secret reference."""
    client: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """Extra ``SchemaRegistryClient`` settings of the HTTP registry (e.g.
    ``basic.auth.user.info``, ``ssl.ca.location``); values may be secret references."""

    def resolved_url(self) -> str | None:
        """``url`` with its secret reference resolved."""
        return None if self.url is None else resolve_secret(self.url)

    def client_config(self) -> dict[str, str]:
        """The HTTP registry's client settings with secret references resolved."""
        return {k: resolve_secret(v) for k, v in self.client.items()}


class LakeSettings(_Model):
    """Where Delta tables live: a local path or ``s3://bucket/prefix``."""

    root: str = Field(min_length=1, pattern=r"\S")
    """The lake: a local folder or ``s3://bucket/prefix`` holding ``bronze/``,
    ``quarantine/``, ``silver/`` and ``gold/``."""
    storage_options: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """Object-store settings (``AWS_REGION``, ``AWS_ENDPOINT_URL``, keys): delta-rs takes them
    as they are, Spark as the matching ``fs.s3a.*`` options."""
    writer: Literal["delta-rs", "delta-spark"] = "delta-rs"
    """Who writes the tables: ``delta-spark`` (distributed: appends and MERGEs on the
    executors, deletion vectors; the production writer) or ``delta-rs`` (one process: the
    batch is collected to the driver; fastest on small batches)."""

    @property
    def on_object_store(self) -> bool:
        """Whether the lake is on S3 (Spark then needs the S3A JARs)."""
        return self.root.startswith(("s3://", "s3a://"))

    def path(self, *parts: str) -> str:
        """Join ``parts`` under the lake root (works for local paths and URIs)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def resolved_storage_options(self) -> dict[str, str]:
        """Storage options with secret references resolved."""
        return {k: resolve_secret(v) for k, v in self.storage_options.items()}


class DrSettings(_Model):
    """Disaster recovery: where ``cdc dr snapshot`` copies the lake (another region, bucket)."""

    location: str | None = None
    """A local path or ``s3://bucket/prefix``; None: DR is not configured."""
    storage_options: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """Object-store settings of the DR location (``AWS_REGION``, keys, ``AWS_ENDPOINT_URL``)."""
    manifest_key: Annotated[str | None, Secret("value")] = None
    """Secret reference (``env:NAME``, ``file:/path``, ``aws-sm:id#key``) to the key (at least
    32 bytes) whose HMAC-SHA256 signs each snapshot's manifest and ``latest.json``; verify and
    restore refuse a snapshot it did not sign. None: snapshots are written unsigned, and
    verify and restore refuse them unless ``--allow-unsigned``."""

    @field_validator("manifest_key")
    @classmethod
    def _check_manifest_key(cls, value: str | None) -> str | None:
        # The value itself is never echoed: it may be the key pasted by mistake.
        if value is not None and not is_secret_ref(value):
            raise ValueError(
                "give the key as a secret reference (env:NAME, file:/path or"
                " aws-sm:secret-id#key), never the key itself"
            )
        return value

    def resolved_storage_options(self) -> dict[str, str]:
        """Storage options with secret references resolved."""
        return {k: resolve_secret(v) for k, v in self.storage_options.items()}

    def resolved_manifest_key(self) -> bytes | None:
        """The manifest key, its reference resolved (None: not configured).

        Raises:
            ConfigError: the reference cannot be resolved, or the key is shorter than 32 bytes.
        """
        if self.manifest_key is None:
            return None
        key = resolve_secret(self.manifest_key).encode()
        if len(key) < 32:
            raise ConfigError(
                f"secret reference {self.manifest_key!r} (dr.manifest_key): the key is shorter"
                " than 32 bytes (generate one with: openssl rand -hex 32)"
            )
        return key


WAREHOUSE_TARGETS = ("duckdb", "postgres", "snowflake")
_SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

# A field named ``schema`` shadows pydantic's deprecated ``BaseModel.schema()``; the setting's
# name is the warehouse's own word, so the warning pydantic gives about it is silenced here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class WarehouseSettings(_Model):
        """Where ``cdc publish`` copies the gold tables (:mod:`cdc.warehouse.publish`).

        ``duckdb`` (a file; the embedded default), ``postgres`` (PostgreSQL, and Redshift,
        which speaks its dialect) or ``snowflake``. ``password``, and a ``dsn`` carrying one,
        are secrets: give them as references (``env:WAREHOUSE_PASSWORD``).
        """

        target: Literal["duckdb", "postgres", "snowflake"] = "duckdb"
        """The warehouse ``cdc publish`` writes to."""
        path: str | None = None
        """The DuckDB file (default: ``warehouse.duckdb`` beside the lake root's folder)."""
        schema: str = Field(default="gold", pattern=_SQL_NAME)  # type: ignore[assignment]
        """The warehouse schema holding the tables and the control table."""
        dsn: Annotated[str | None, Secret("credentials")] = None
        """PostgreSQL connection string (``postgresql://...`` or ``key=value`` pairs); the
        fields below win over its parts."""
        host: str | None = None
        """PostgreSQL host."""
        port: int | None = Field(default=None, ge=1, le=65535)
        """PostgreSQL port (default: the driver's, 5432)."""
        database: str | None = None
        """The database (PostgreSQL, Snowflake)."""
        user: str | None = None
        """The user (PostgreSQL, Snowflake)."""
        password: Annotated[str | None, Secret("value")] = None
        """The user's password (PostgreSQL, Snowflake)."""
        account: str | None = None
        """Snowflake account identifier (``orgname-account``)."""
        warehouse: str | None = None
        """Snowflake virtual warehouse that runs the statements."""
        role: str | None = None
        """Snowflake role."""
        connect_timeout_s: float = Field(default=10.0, gt=0)
        """Seconds a connection (PostgreSQL) or a login (Snowflake) may take."""

        def duckdb_path(self, lake: LakeSettings) -> str:
            """The DuckDB file: ``path``, or ``warehouse.duckdb`` beside the lake root.

            Raises:
                ConfigError: no ``path`` and the lake is on an object store.
            """
            if self.path:
                return self.path
            if lake.on_object_store or "://" in lake.root:
                raise ConfigError(
                    "warehouse.path: the lake is on an object store; name the DuckDB file"
                )
            return str(Path(lake.root).parent / "warehouse.duckdb")

        def resolved_password(self) -> str | None:
            """``password`` with its secret reference resolved."""
            return None if self.password is None else resolve_secret(self.password)

        def resolved_dsn(self) -> str | None:
            """``dsn`` with its secret reference resolved."""
            return None if self.dsn is None else resolve_secret(self.dsn)


class CheckpointSettings(_Model):
    """Spark checkpoints (the offsets store): a local or PVC path."""

    root: str = Field(min_length=1, pattern=r"\S")
    """Folder of the checkpoints, one per pipeline (``<root>/<pipeline>``), with the
    pipelines' locks and the SLA check's state."""

    def path(self, pipeline: str) -> str:
        return f"{self.root.rstrip('/')}/{pipeline}"


class SparkSettings(_Model):
    """How the driver runs Spark."""

    master: str | None = None
    """Spark master URL, e.g. ``local[*]`` (the embedded default in ``local.yaml``). Leave it
    unset where ``spark-submit`` runs the driver: spark-submit chooses the master, and a value
    here would override it (a Kubernetes driver with ``local[*]`` leaves every executor idle)."""
    trigger_interval: str = "1 second"
    """How often a continuous query starts a micro-batch: a duration such as ``1 second``,
    ``500 ms`` or ``2 minutes``."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Spark properties set on the session the driver builds."""
    batch_conf: dict[str, str] = Field(default_factory=dict)
    """Spark SQL properties of each streaming query's own session, in which the delta-spark
    writer runs its micro-batches; they override the writer's defaults
    (``cdc.pipeline.batch_spark.BATCH_CONF``, chosen by measurement: docs/performance.md)."""

    @field_validator("trigger_interval")
    @classmethod
    def _check_interval(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(
                f"trigger_interval {value!r} is not a duration like '1 second' or '500 ms'"
            )
        return value


class MaintenanceSettings(_Model):
    """``cdc maintain``: compaction targets, the vacuum floor and the health thresholds."""

    target_file_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    """File size OPTIMIZE compacts towards."""
    small_file_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """A data file below this counts as small (health)."""
    max_small_file_ratio: float = Field(default=0.5, ge=0, le=1)
    """Health fails when more of a table's files than this are small (and there are more
    than ``min_files_judged`` files)."""
    min_files_judged: int = Field(default=20, ge=0)
    """Health judges the small-file ratio of a table with more files than this."""
    max_files: int = Field(default=10_000, gt=0)
    """Health fails when a table has more data files than this."""
    max_versions_since_optimize: int = Field(default=2_000, gt=0)
    """Health fails when a table has more versions than this since its last OPTIMIZE."""
    min_retention_hours: float = Field(default=168.0, ge=0)
    """VACUUM refuses a shorter retention unless forced: files younger than this may still be
    read by a running query, a replay's reader or a DR snapshot in progress."""


class ZOrderSettings(_Model):
    """Columns OPTIMIZE clusters a pipeline's tables on (None: the defaults)."""

    bronze: tuple[str, ...] | None = None
    """Default: ``key.<k>`` for each of the pipeline's keys (the late-key history read)."""
    silver: tuple[str, ...] | None = None
    """Default: the keys (SCD2), or the event id (facts)."""


class NotifySettings(_Model):
    """Where ``cdc sla check`` sends SLA breaches and their resolution (none: it only prints).

    The webhook URL is a secret (whoever has it can post): give it as a reference, e.g.
    ``env:SLACK_WEBHOOK_URL``.
    """

    slack_webhook_url: Annotated[str | None, Secret("value")] = None
    """A Slack incoming webhook that receives each breach and its resolution."""
    sns_topic_arn: str | None = None
    """An SNS topic that receives each breach and its resolution."""
    sns_region: str | None = None
    """The SNS topic's region (default: the AWS SDK's)."""
    sns_endpoint_url: str | None = None
    """An SNS-compatible endpoint instead of AWS's (tests, LocalStack)."""
    state_path: str | None = None
    """Where open breaches are remembered between runs (default:
    ``<checkpoints.root>/_sla/open-breaches.json``), so an open breach is sent once."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Seconds a notification may take."""


class GoldSettings(_Model):
    """``cdc gold build``: the reporting currency and the country → region map (:mod:`cdc.gold`)."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """Reporting currency (ISO-4217): amounts are converted into it through ``dim_fx_rate``."""
    regions: dict[str, str] = Field(default_factory=dict)
    """Country (ISO-3166 alpha-2) → region, over the built-in map (see
    ``docs/guides/consumption-layer.md``), e.g. ``{BR: AMER}``."""

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, regions: dict[str, str]) -> dict[str, str]:
        for country, region in regions.items():
            if not re.fullmatch(r"[A-Z]{2}", country):
                raise ValueError(f"{country!r} is not an ISO-3166 alpha-2 country code")
            if not region.strip():
                raise ValueError(f"country {country}: the region is empty")
        return regions


class GovernanceSettings(_Model):
    """``cdc governance``: the access policy and where its targets are (:mod:`cdc.governance`).

    The PostgreSQL and Snowflake targets connect with ``warehouse.*``; Lake Formation with
    the usual AWS credential chain (no keys here).
    """

    policy: str | None = None
    """The policy file (default: ``governance/<env>.yaml`` in the config folder)."""
    aws_region: str | None = None
    """Lake Formation's region (default: ``lake.storage_options.AWS_REGION``, else the AWS
    configuration's)."""
    aws_endpoint_url: str | None = None
    """A Lake Formation (and Glue) compatible endpoint instead of AWS's (tests: moto)."""
    catalog_id: str | None = Field(default=None, pattern=r"^[0-9]{12}$")
    """The Data Catalog's AWS account (default: the caller's)."""
    audiences_dir: str | None = None
    """The folder of the DuckDB audience files (default: ``audiences`` beside the lake
    root's folder)."""

    def audiences_path(self, lake: LakeSettings) -> Path:
        """The folder of the DuckDB audience files.

        Raises:
            ConfigError: no ``audiences_dir`` and the lake is on an object store.
        """
        if self.audiences_dir:
            return Path(self.audiences_dir)
        if lake.on_object_store or "://" in lake.root:
            raise ConfigError(
                "governance.audiences_dir: the lake is on an object store; name a local folder"
                " for the DuckDB audience files"
            )
        return Path(lake.root).parent / "audiences"


class MetricsSettings(_Model):
    """Prometheus endpoint on the driver."""

    enabled: bool = True
    """Whether ``cdc run`` serves ``/metrics``, ``/healthz`` and ``/readyz``."""
    host: str = "127.0.0.1"
    """The address the endpoint listens on (``0.0.0.0`` in a pod, for the scrape)."""
    port: int = 9108
    """The endpoint's port (the chart's ``metrics.port``, which Prometheus scrapes)."""


NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
"""Pipeline names and silver targets: they name folders (tables, checkpoints, locks), so no
path separator, no dot, bounded length."""
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
"""Kafka's legal topic names (its own rule; ``.`` and ``..`` are refused too), which cannot
leave a folder."""


class LineageHttpSettings(_Model):
    """The ``http`` transport: a Marquez-compatible lineage endpoint."""

    url: Annotated[str | None, Secret("credentials")] = None
    """The endpoint's base URL (``https://marquez.example:5000``); it may carry a user and
    password, so it may be a secret reference."""
    endpoint: str = "api/v1/lineage"
    """The path events are posted to, under ``url``."""
    api_key: Annotated[str | None, Secret("value")] = None
    """Sent as ``Authorization: Bearer <key>`` (None: no authentication)."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Seconds one post may take."""

    def resolved_url(self) -> str | None:
        """``url`` with its secret reference resolved."""
        return None if self.url is None else resolve_secret(self.url)

    def resolved_api_key(self) -> str | None:
        """``api_key`` with its secret reference resolved."""
        return None if self.api_key is None else resolve_secret(self.api_key)


class LineageFileSettings(_Model):
    """The ``file`` transport: one JSON event per line, appended."""

    path: str | None = None
    """The file (default: ``<checkpoints.root>/_lineage/events.jsonl``). The Spark agent
    appends to the same file."""


class LineageKafkaSettings(_Model):
    """The ``kafka`` transport: events as JSON messages on a topic."""

    topic: str = Field(default="openlineage.events", pattern=TOPIC_PATTERN)
    """The topic the events are produced to (keyed by run, so a run's events stay in order)."""
    bootstrap_servers: str | None = None
    """Its cluster (default: ``kafka.bootstrap_servers``, with ``kafka.client``)."""
    client: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
    """librdkafka settings of the lineage producer (default: ``kafka.client``); values may be
    secret references."""


class LineageSettings(_Model):
    """OpenLineage run events of every run (streaming queries and their micro-batches, the
    companions) and of the Spark jobs under them (:mod:`cdc.lineage`). Lineage never blocks
    or fails a run: an event that cannot be sent is counted and logged."""

    enabled: bool = False
    """Whether runs emit OpenLineage events."""
    transport: Literal["http", "file", "kafka", "console"] = "console"
    """Where events go: ``http`` (a Marquez-compatible endpoint), ``file`` (JSON lines),
    ``kafka`` (a topic) or ``console`` (the log, at INFO)."""
    namespace: str | None = Field(default=None, min_length=1)
    """The jobs' namespace (default: ``cdc-<env>``)."""
    http: LineageHttpSettings = LineageHttpSettings()
    """The ``http`` transport's settings."""
    file: LineageFileSettings = LineageFileSettings()
    """The ``file`` transport's settings."""
    kafka: LineageKafkaSettings = LineageKafkaSettings()
    """The ``kafka`` transport's settings."""
    spark_agent: bool = True
    """Attach the OpenLineage Spark agent (the ``lineage`` JAR profile) to the runs that use
    Spark, so their Spark jobs are reported too (datasets and schemas), as children of the
    run. Without the JARs installed the runs still emit their own events."""
    queue_size: int = Field(default=1000, gt=0)
    """Events waiting to be sent; when full, a new event is dropped (and counted) instead of
    waiting."""
    close_timeout_s: float = Field(default=10.0, ge=0)
    """Seconds a command waits at its end for the events still queued."""
    failure_log_interval_s: float = Field(default=60.0, gt=0)
    """Failures to send are logged at most once per this many seconds (each is counted)."""

    @model_validator(mode="after")
    def _check_transport(self) -> LineageSettings:
        if self.enabled and self.transport == "http" and not self.http.url:
            raise ValueError("the http transport needs 'http.url'")
        return self

    def job_namespace(self, env: str) -> str:
        """The namespace of the service's jobs."""
        return self.namespace or f"cdc-{env}"

    def kafka_client_config(self, kafka: KafkaSettings) -> dict[str, str]:
        """The ``kafka`` transport's librdkafka settings, secret references resolved:
        ``kafka.client`` of this section, else the service's ``kafka.client``."""
        if self.kafka.client:
            return {k: resolve_secret(v) for k, v in self.kafka.client.items()}
        return kafka.client_config()


class SequenceField(_Model):
    """One field of a composite ``sequence_by``: a path in the value and how it compares."""

    path: str = Field(min_length=1)
    """A dotted path in the record's value, e.g. ``source.lsn``."""
    kind: Literal["auto", "number", "time", "binlog_file", "sqlserver_lsn"] = "auto"
    """How it compares: ``number`` (integers), ``time`` (timestamps and dates),
    ``binlog_file`` (a MySQL binlog file name, by its index), ``sqlserver_lsn`` (hex LSN);
    ``auto`` takes ``number`` or ``time`` from the field's type."""


class SourceTimeWindow(_Model):
    """The source times an SCD2 pipeline accepts: a record whose sequence time (or a time in
    its position) lies outside is quarantined as ``source_time_out_of_range``
    (:class:`cdc.core.sequence.SequenceCheck`)."""

    not_before: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    """The earliest (ISO-8601, UTC unless it says otherwise); never before 1970-01-01, the
    floor of the sequence encoding."""
    max_ahead_seconds: float | None = Field(default=86_400.0, ge=0)
    """How far past the decoder's clock a time may lie (null: up to 9999-12-31, the last
    day a Delta timestamp holds). Widen it for a business time that may be in the future
    (a flat pipeline sequenced by an ``effective_at``)."""

    @field_validator("not_before")
    @classmethod
    def _check_not_before(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value < datetime(1970, 1, 1, tzinfo=UTC):
            raise ValueError(
                f"{value.isoformat()} is before 1970-01-01T00:00:00Z, which no sequence holds"
            )
        return value


class SchemaChangeSettings(_Model):
    """What a pipeline does when a new schema version changes its table's columns
    (:mod:`cdc.ingest.schema_changes`). Added columns and widened types always evolve the
    tables."""

    breaking: Literal["fail", "ignore"] = "fail"
    """A dropped, renamed, narrowed or retyped column, or a changed key: ``fail`` stops the
    batch before it writes, in one line naming the change and the schema version; ``ignore``
    keeps the table's columns (a dropped column is null in new rows, a renamed one arrives as
    a new column, a narrowed value is written into the wider column)."""


class DebeziumSource(_Model):
    """The Debezium connector that writes a pipeline's topic, for ``cdc snapshot``."""

    connector: str | None = None
    """The connector's logical name, ``topic.prefix`` (None: the topic name's first part)."""
    data_collection: str | None = None
    """The table as the connector names it, ``schema.table`` for PostgreSQL (None: the
    topic name after the prefix)."""
    signal_topic: str | None = Field(default=None, pattern=TOPIC_PATTERN)
    """The connector's ``signal.kafka.topic`` (None: ``<connector>-signal``, Debezium's
    default)."""


class PipelineSettings(_Model):
    """One streaming query: a topic and the silver table it maintains."""

    topic: str = Field(pattern=TOPIC_PATTERN)
    """The Kafka topic the pipeline reads."""
    kind: Literal["scd2", "facts"]
    """``scd2``: changes of keyed rows kept as an SCD Type 2 dimension (docs/scd2.md);
    ``facts``: events appended once each, deduplicated by ``event_id``."""
    target: str = Field(pattern=NAME_PATTERN)
    """Silver table name, e.g. ``dim_contact`` or ``fact_orders``."""
    source_format: Literal["envelope", "flat"] = "envelope"
    """``envelope``: Debezium-style ``before``/``after``/``op``/``source``; ``flat``: the
    value's fields are the row."""
    keys: tuple[str, ...] = ()
    """The business key columns of an scd2 dimension (required for ``scd2``)."""
    sequence_by: str | list[str | SequenceField] | None = None
    """What orders a key's changes (see :mod:`cdc.core.sequence`). Default (envelope): the
    connector's source position (PostgreSQL ``lsn``/``txId``, MySQL ``file``/``pos``/``row``,
    SQL Server ``commit_lsn``/``change_lsn``/``event_serial_no``), then ``source.ts_ms``. One
    path: that value alone orders and times changes (``source.ts_ms`` keeps tables written
    before positions existed). A list: a composite position, compared field by field as
    numbers. Required when flat."""
    track_history: tuple[str, ...] | None = None
    """Columns whose change opens a new version; default all non-key business columns."""
    track_history_except: tuple[str, ...] = ()
    """Columns whose change updates the current version in place instead (set this or
    ``track_history``, not both)."""
    event_id: str | None = None
    """Dedup column of a fact table."""
    starting_offsets: str | None = None
    """Where a new checkpoint starts: ``earliest``, ``latest`` or Spark's JSON of offsets
    (None: ``defaults.starting_offsets``)."""
    max_records_per_trigger: int | None = Field(default=None, gt=0)
    """Most records a micro-batch reads (Spark's ``maxOffsetsPerTrigger``; None:
    ``defaults.max_records_per_trigger``)."""
    fail_on_data_loss: bool | None = None
    """Stop when offsets the query expected are gone (Spark's ``failOnDataLoss``; None:
    ``defaults.fail_on_data_loss``)."""
    source_options: dict[str, str] = Field(default_factory=dict)
    """Options of Spark's Kafka source for this pipeline (e.g. ``startingOffsetsByTimestamp``,
    ``minPartitions``); they win over ``defaults.source_options`` and the keys above."""
    sla: SlaSettings | None = None
    """This pipeline's service levels (keys it does not set come from ``defaults.sla``)."""
    check_invariants: bool | None = None
    """After-batch SCD2 invariant checks for this pipeline (None: ``defaults.check_invariants``)."""
    source_time_window: SourceTimeWindow | None = None
    """The source times this pipeline accepts (keys it does not set come from
    ``defaults.source_time_window``)."""
    schema_changes: SchemaChangeSettings | None = None
    """What this pipeline does about a breaking schema change (None:
    ``defaults.schema_changes``)."""
    database: str | None = None
    """The ``databases`` stanza that generated this pipeline (set by the service; a pipeline
    of the configuration has none)."""
    debezium: DebeziumSource | None = None
    """The connector writing the topic (``cdc snapshot``; derived from the topic name when
    unset)."""
    unavailable_values: tuple[str, ...] | None = None
    """Values that stand for an unchanged column the source did not send (None:
    ``defaults.unavailable_values``; ``[]``: none)."""
    zorder: ZOrderSettings = ZOrderSettings()
    """The columns ``cdc maintain optimize`` Z-ORDERs the pipeline's tables on."""
    expectations: Annotated[tuple[ExpectationSettings, ...], AfterValidator(unique_names)] = ()
    """Data-quality rules on the records, each with its action
    (:mod:`cdc.config.expectations`)."""
    enabled: bool = True
    """Whether ``cdc run`` without ``--pipeline`` runs it (and the chart deploys it)."""

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, topic: str) -> str:
        if topic in (".", ".."):
            raise ValueError(f"{topic!r} is not a Kafka topic name")
        return topic

    @model_validator(mode="after")
    def _check_kind(self) -> PipelineSettings:
        if self.kind == "scd2" and not self.keys:
            raise ValueError("an scd2 pipeline needs 'keys'")
        if self.kind == "scd2" and self.source_format == "flat" and not self.sequence_by:
            raise ValueError("a flat scd2 pipeline needs 'sequence_by'")
        if isinstance(self.sequence_by, list) and not self.sequence_by:
            raise ValueError("'sequence_by' is an empty list")
        if self.kind == "facts" and not self.event_id:
            raise ValueError("a facts pipeline needs 'event_id'")
        if self.track_history is not None and self.track_history_except:
            raise ValueError("set either 'track_history' or 'track_history_except', not both")
        return self


class SlaSettings(_Model):
    """The service levels a pipeline is held to: exported as ``cdc_sla_*`` gauges, which the
    Helm chart's alert rules (``deploy/helm/cdc-service``) and ``cdc sla check`` compare
    against."""

    freshness_seconds: float = Field(default=900.0, gt=0)
    """Longest time the pipeline may go without being caught up with its topic."""
    no_records_seconds: float = Field(default=3600.0, gt=0)
    """Longest time the pipeline may go without reading a record."""
    quarantine_ratio: float = Field(default=0.05, gt=0, le=1)
    """Largest share of records quarantined over five minutes before it is a spike."""


class PipelineDefaults(_Model):
    """Source options applied to every pipeline unless it sets its own."""

    starting_offsets: str = "earliest"
    """Where a new checkpoint starts: ``earliest``, ``latest`` or Spark's JSON of offsets."""
    max_records_per_trigger: int | None = Field(default=50_000, gt=0)
    """Most records a micro-batch reads (Spark's ``maxOffsetsPerTrigger``; None: no cap)."""
    max_records_per_partition: int = Field(default=200_000, gt=0)
    """Most records one task reads (Spark's ``maxRecordsPerPartition``): a larger offset range
    is split across tasks."""
    fail_on_data_loss: bool = True
    """Stop when offsets the query expected are gone (Spark's ``failOnDataLoss``)."""
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    """A larger record (key + value) is quarantined as ``oversize``."""
    source_options: dict[str, str] = Field(default_factory=dict)
    """Options of Spark's Kafka source for every pipeline (see ``PipelineSettings``)."""
    sla: SlaSettings = SlaSettings()
    """The service levels of every pipeline that does not set its own."""
    check_invariants: bool = True
    """Check the SCD2 invariants of the keys each batch touched, after its MERGE
    (docs/guides/verify.md); ``cdc verify`` checks whole tables on demand either way."""
    source_time_window: SourceTimeWindow = SourceTimeWindow()
    """The source times SCD2 pipelines accept (docs/scd2.md, "What a sequence holds")."""
    schema_changes: SchemaChangeSettings = SchemaChangeSettings()
    """What pipelines do about a breaking schema change (docs/guides/schema-changes.md)."""
    unavailable_values: tuple[str, ...] = ("__debezium_unavailable_value",)
    """Values that stand for an unchanged column the source did not send: Debezium's
    ``unavailable.value.placeholder`` for a TOASTed PostgreSQL column. An SCD2 change holding
    one keeps the column's previous value (docs/scd2.md, "Unchanged values")."""


class DatabaseSettings(_Model):
    """A whole database captured by one connector: one pipeline per table topic, generated
    from the topics that match (docs/guides/connect-your-topics.md, *A whole database*)."""

    include: str
    """Topics to capture: a regular expression matching the whole name, e.g.
    ``inventory\\.public\\..*``."""
    exclude: tuple[str, ...] = ()
    """Topics to leave out among those ``include`` matches (regular expressions, whole name)."""
    kind: Literal["scd2", "facts"] = "scd2"
    """Every table's kind unless ``tables`` says otherwise."""
    target: str = "{table}"
    """Each table's silver name: ``{table}`` is the topic's last dotted part, ``{schema}`` the
    one before it, ``{database}`` this stanza's name."""
    pipeline: dict[str, Any] = Field(default_factory=dict)
    """Settings of every generated pipeline (``track_history_except``, ``schema_changes``,
    ``sequence_by``, ...: any pipeline key but ``topic``, ``target`` and ``keys``)."""
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per table (its topic, or its name alone), settings that win over ``pipeline`` (e.g.
    ``{kind: facts, event_id: id}``, ``enabled: false``, ``target: ...``)."""
    discover_every_seconds: float = Field(default=30.0, gt=0)
    """How often a running ``cdc run`` looks for new matching topics (each starts its own
    query, created on its first record)."""

    @field_validator("include")
    @classmethod
    def _check_include(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"include {pattern!r} is not a regular expression: {exc}") from None
        return pattern

    @field_validator("exclude")
    @classmethod
    def _check_exclude(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"exclude {pattern!r} is not a regular expression: {exc}"
                ) from None
        return patterns


class Settings(_Model):
    """The whole service configuration for one environment."""

    env: Literal["local", "dev", "prod"]
    kafka: KafkaSettings
    registry: RegistrySettings = RegistrySettings()
    lake: LakeSettings
    checkpoints: CheckpointSettings
    spark: SparkSettings = SparkSettings()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    dr: DrSettings = DrSettings()
    gold: GoldSettings = GoldSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    governance: GovernanceSettings = GovernanceSettings()
    lineage: LineageSettings = LineageSettings()
    defaults: PipelineDefaults = PipelineDefaults()
    databases: dict[str, DatabaseSettings] = Field(default_factory=dict)
    """Whole databases: a pipeline per matching topic (:mod:`cdc.pipeline.databases`)."""
    pipelines: dict[str, PipelineSettings]

    @field_validator("pipelines", mode="before")
    @classmethod
    def _check_names(cls, pipelines: Any) -> Any:
        for name in pipelines if isinstance(pipelines, dict) else ():
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(
                    f"pipeline name {name[:80]!r} is not a name: letters, digits and _,"
                    " starting with a letter, at most 64 characters"
                )
        return pipelines

    def with_lake_root(self, root: str) -> Settings:
        """The same settings with the lake at ``root`` (a DR restore's target)."""
        return self.model_copy(update={"lake": self.lake.model_copy(update={"root": root})})

    def check_invariants(self, name: str) -> bool:
        """Whether pipeline ``name`` checks the SCD2 invariants after each batch."""
        own = self.pipeline(name).check_invariants
        return self.defaults.check_invariants if own is None else own

    def schema_changes(self, name: str) -> SchemaChangeSettings:
        """Pipeline ``name``'s policy for breaking schema changes."""
        own = self.pipeline(name).schema_changes
        return self.defaults.schema_changes if own is None else own

    def unavailable_values(self, name: str) -> tuple[str, ...]:
        """The placeholders for unchanged values of pipeline ``name`` (docs/scd2.md)."""
        own = self.pipeline(name).unavailable_values
        return self.defaults.unavailable_values if own is None else own

    def sla(self, name: str) -> SlaSettings:
        """The service levels of one pipeline: ``defaults.sla`` with the pipeline's own keys."""
        own = self.pipeline(name).sla
        if own is None:
            return self.defaults.sla
        return self.defaults.sla.model_copy(update=own.model_dump(exclude_unset=True))

    def pipeline(self, name: str) -> PipelineSettings:
        """Return one pipeline's settings.

        Raises:
            UnknownPipelineError: ``name`` is not configured (the message lists the valid names).
        """
        try:
            return self.pipelines[name]
        except KeyError:
            valid = ", ".join(sorted(self.pipelines)) or "(none)"
            raise UnknownPipelineError(f"unknown pipeline {name!r}; valid: {valid}") from None

    def selected(self, name: str | None) -> dict[str, PipelineSettings]:
        """The pipelines to run: one by name, or every enabled one."""
        if name is not None:
            return {name: self.pipeline(name)}
        return {n: p for n, p in self.pipelines.items() if p.enabled}

    def checkpoint_path(self, pipeline: str) -> str:
        return self.checkpoints.path(pipeline)


_SECTIONS: dict[str, type[_Model]] = {
    "kafka": KafkaSettings,
    "registry": RegistrySettings,
    "lake": LakeSettings,
    "checkpoints": CheckpointSettings,
    "spark": SparkSettings,
    "metrics": MetricsSettings,
    "notify": NotifySettings,
    "maintenance": MaintenanceSettings,
    "dr": DrSettings,
    "gold": GoldSettings,
    "warehouse": WarehouseSettings,
    "governance": GovernanceSettings,
    "lineage": LineageSettings,
    "defaults": PipelineDefaults,
}


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


_FLAT_MAPS = (
    ("kafka", "client"),
    ("kafka", "java_client"),
    ("registry", "client"),
    ("lake", "storage_options"),
    ("dr", "storage_options"),
    ("lineage", "kafka", "client"),
    ("spark", "conf"),
    ("defaults", "source_options"),
    ("pipelines", "*", "source_options"),
)
"""Settings that are maps of dotted names (librdkafka, Spark, Hadoop keys): in a ``--set``
key, everything after the map's own path is one key (``kafka.client.sasl.password``)."""


def _key_path(key: str) -> tuple[list[str], bool]:
    """The path of a ``--set`` key, and whether it names one entry of a map of dotted names."""
    parts = key.split(".")
    for pattern in _FLAT_MAPS:
        n = len(pattern)
        if len(parts) > n and all(p in ("*", q) for p, q in zip(pattern, parts, strict=False)):
            return [*parts[:n], ".".join(parts[n:])], True
    return parts, False


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw config mapping (values parsed as YAML).

    Raises:
        ConfigError: an override is not of the form ``key=value``.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        node = data
        parts, flat = _key_path(key.strip())
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                # The key only: the value may be a secret.
                raise ConfigError(f"--set {key.strip()!r}: {part!r} is not a section")
            node = child
        # An entry of a map of dotted names takes its value as written (they are strings).
        node[parts[-1]] = raw if flat else _parse_scalar(raw)
    return data


def _env_overrides(environ: Mapping[str, str]) -> list[str]:
    """``CDC_<SECTION>_<KEY>=v`` → ``section.key=v`` for known sections."""
    result = []
    for name, value in sorted(environ.items()):
        if not name.startswith("CDC_"):
            continue
        rest = name[4:].lower()
        for section, model in _SECTIONS.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if key not in model.model_fields:
                    valid = ", ".join(
                        f"CDC_{section.upper()}_{f.upper()}" for f in model.model_fields
                    )
                    raise ConfigError(f"unknown setting {name}; valid for {section}: {valid}")
                result.append(f"{section}.{key}={value}")
                break
    return result


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel] = Settings) -> type[BaseModel]:
    """The model (under ``root``) that owns the mapping at ``loc``."""
    model: type[BaseModel] = root
    index = 0
    while index < len(loc):
        part = str(loc[index])
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if get_origin(annotation) is dict:  # name -> model (pipelines): skip the name
            value = get_args(annotation)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                model, index = value, index + 2
                continue
        # A model, or one inside ``X | None`` or a list of them (whose item index follows).
        for candidate in (annotation, *get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        index += 1
        if index < len(loc) and isinstance(loc[index], int):
            index += 1
    return model


def _format_validation_error(
    exc: ValidationError, source: str, root: type[BaseModel] = Settings
) -> str:
    """One line for a validation error; an unknown key's lists the valid keys there."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        valid = ", ".join(_model_at(tuple(first["loc"][:-1]), root).model_fields)
        msg = f"unknown key {loc!r}; valid keys: {valid}"
    else:
        msg = f"{loc}: {first['msg']}"
    more = len(exc.errors()) - 1
    return f"invalid configuration ({source}): {msg}" + (f" (+{more} more)" if more else "")


def _resolve_relative(settings_data: dict[str, Any], base: Path) -> None:
    """Make relative local paths absolute against the project directory."""

    def fix(*keys: str) -> None:
        node = settings_data
        for key in keys[:-1]:
            node = node.get(key)  # type: ignore[assignment]
            if not isinstance(node, dict):
                return
        key = keys[-1]
        if isinstance(node.get(key), str | Path):
            value = str(node[key])
            # An empty or blank path stays as it is: validation refuses it (it is not ".").
            if value.strip() and "://" not in value and not os.path.isabs(value):
                node[key] = str((base / value).resolve())

    fix("registry", "path")
    fix("registry", "contracts")
    fix("lake", "root")
    fix("checkpoints", "root")
    fix("warehouse", "path")
    fix("governance", "policy")
    fix("governance", "audiences_dir")
    fix("lineage", "file", "path")


INCLUDE = "include"
"""The top-level key of an environment's file that names the files it extends."""


@dataclass(frozen=True)
class _Layer:
    """One file of an environment's configuration and its raw mapping."""

    path: Path
    data: dict[str, Any]


def _read_mapping(path: Path, included_by: Path | None = None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        hint = f"included by {included_by}" if included_by else "set --config-dir or CDC_CONFIG_DIR"
        raise ConfigError(f"config file {path} not found ({hint})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _layers(path: Path) -> list[_Layer]:
    """The files of ``path``'s configuration, lowest precedence first: its includes, then it."""
    data = _read_mapping(path)
    names = data.pop(INCLUDE, None)
    if isinstance(names, str):
        names = [names]
    if names is None:
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"config file {path}: {INCLUDE}: expected a file name or a list of them")
    layers = []
    for name in names:
        included = path.parent / name
        layer = _read_mapping(included, included_by=path)
        if INCLUDE in layer:  # one level: what an environment shares is read in one place
            raise ConfigError(
                f"config file {included}: {INCLUDE} is read only in an environment's file"
                f" (it is included by {path})"
            )
        layers.append(_Layer(included, layer))
    return [*layers, _Layer(path, data)]


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base`` (neither is changed): mappings merge key by key, recursively; any
    other value of ``over`` (a scalar, a list, null) replaces ``base``'s.

    How an environment's file extends what it includes; the same rule as Helm's values files.
    """
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_mappings(out[key], value) if both else value
    return out


def read_config(path: Path) -> dict[str, Any]:
    """One environment's raw settings: ``path`` merged over the files it includes.

    No overrides are applied and nothing is validated (see :func:`load_settings`).

    Args:
        path: an environment's file, e.g. ``config/prod.yaml``.

    Returns:
        The merged mapping, without the ``include`` key.

    Raises:
        ConfigError: a file is missing, not YAML or not a mapping, or ``include`` is invalid.
    """
    return _combined(_layers(path))


def _combined(layers: list[_Layer]) -> dict[str, Any]:
    """The layers merged, lowest first, into new mappings (overrides applied to the result
    later leave each file's own mapping as it was read)."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge_mappings(data, copy.deepcopy(layer.data))
    return data


def _origin(loc: tuple[int | str, ...], layers: list[_Layer]) -> Path:
    """The file that holds the most of ``loc`` (a later file on a tie): where to look."""
    found, depth = layers[-1].path, 0
    for layer in layers:
        node: Any = layer.data
        reached = 0
        for part in loc:
            in_map = isinstance(node, dict) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if not (in_map or in_list):
                break
            node = node[part]
            reached += 1
        if reached and reached >= depth:
            found, depth = layer.path, reached
    return found


def load_settings(
    env: str,
    overrides: Iterable[str] = (),
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load ``<config_dir>/<env>.yaml`` (and what it includes), then apply env-var and
    ``--set`` overrides.

    Args:
        env: one of ``local``, ``dev``, ``prod``.
        overrides: ``dotted.key=value`` strings (highest precedence).
        config_dir: folder holding the YAML files; default ``$CDC_CONFIG_DIR`` or ``./config``.
        environ: environment mapping (default ``os.environ``).

    Returns:
        Validated, frozen settings. Relative paths are resolved against the config folder's parent.

    Raises:
        ConfigError: unknown env, missing/invalid file, unknown key or invalid value (the
            message names the file that holds the key).
    """
    environ = os.environ if environ is None else environ
    if env not in ENVS:
        raise ConfigError(f"unknown env {env!r}; valid: {', '.join(ENVS)}")
    folder = config_dir or Path(environ.get("CDC_CONFIG_DIR", "config"))
    layers = _layers(folder / f"{env}.yaml")
    data = _combined(layers)
    data.setdefault("env", env)
    apply_overrides(data, _env_overrides(environ))
    apply_overrides(data, overrides)
    _resolve_relative(data, folder.resolve().parent)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = _origin(tuple(exc.errors()[0]["loc"]), layers)
        raise ConfigError(_format_validation_error(exc, str(where))) from None


def parse_duration_seconds(text: str) -> float:
    """Parse ``'1 second'``, ``'500 ms'``, ``'2 minutes'`` into seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{text!r} is not a duration like '1 second' or '500 ms'")
    number, unit = float(match.group(1)), match.group(2)
    if unit in ("ms", "millisecond", "milliseconds"):
        return number / 1000
    if unit in ("m", "minute", "minutes"):
        return number * 60
    return number
