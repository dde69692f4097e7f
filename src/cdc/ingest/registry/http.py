"""A Confluent-compatible HTTP schema registry behind the :class:`SchemaRegistry` protocol.

Thin by design: the file registry is the registry of record; this adapter only lets the
decoder resolve writer ids that an external registry assigned.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from cdc.errors import CdcError, ConfigError, SchemaNotFoundError, first_line
from cdc.ingest.registry.base import RegisteredSchema

# confluent_kafka's registry client is imported when an HTTP registry is opened: the file registry
# never loads it.

__all__ = ["HttpRegistry"]


class HttpRegistry:
    """:class:`~cdc.ingest.registry.base.SchemaRegistry` over ``confluent_kafka.schema_registry``.

    A registry that cannot be reached raises :class:`CdcError` (not
    :class:`SchemaNotFoundError`), so an outage fails the task instead of quarantining data.
    """

    def __init__(
        self, url: str, client_config: dict[str, Any] | None = None, *, client: Any = None
    ) -> None:
        """Create the adapter; the HTTP client is built on first use.

        Args:
            url: Base URL of the registry.
            client_config: Extra ``SchemaRegistryClient`` settings (auth, TLS).
            client: A ready client with the same methods (tests); not pickled.
        """
        self._url = url
        self._shown = _without_credentials(url)
        self._config = dict(client_config or {})
        self._client: Any = client
        self._cache: dict[int, RegisteredSchema] = {}

    def _sr(self) -> Any:
        if self._client is None:
            try:
                from confluent_kafka.schema_registry import SchemaRegistryClient
            except ImportError as exc:
                raise ConfigError(
                    f"registry url {self._shown} needs the HTTP client's extras: "
                    f"pip install 'confluent-kafka[schemaregistry]' ({exc})"
                ) from exc
            try:
                self._client = SchemaRegistryClient({**self._config, "url": self._url})
            except Exception as exc:  # its text may quote a setting's value: a credential
                raise ConfigError(
                    f"registry: the HTTP client refuses registry.url {self._shown} or a"
                    f" registry.client setting ({type(exc).__name__}; values not shown)"
                ) from None
        return self._client

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # SchemaRegistryError, or transport errors (httpx)
            # Duck-typed: importing SchemaRegistryError needs the optional extras.
            if getattr(exc, "http_status_code", None) == 404:
                raise SchemaNotFoundError(f"{what} is not in the registry {self._shown}") from exc
            # Its first line only (a transport error may go on with the request); a URL's
            # credentials in it are redacted from any output (cdc.runtime.logs).
            raise CdcError(
                f"schema registry {self._shown} failed to return {what}: {first_line(exc)}"
            ) from exc

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id`` (its first subject-version, if any)."""
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        what = f"schema id {schema_id}"
        schema = self._call(what, self._sr().get_schema, schema_id)
        versions = self._call(what, self._sr().get_schema_versions, schema_id)
        subject, version = (versions[0].subject, versions[0].version) if versions else ("", 0)
        registered = RegisteredSchema(subject, version, schema_id, json.loads(schema.schema_str))
        self._cache[schema_id] = registered
        return registered

    def latest(self, subject: str) -> RegisteredSchema:
        """The highest version of ``subject``."""
        found = self._call(f"subject {subject!r}", self._sr().get_latest_version, subject)
        return self._registered(found)

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """One version of ``subject``."""
        found = self._call(f"{subject} v{version}", self._sr().get_version, subject, version)
        return self._registered(found)

    def subjects(self) -> list[str]:
        """Every subject, sorted."""
        return sorted(self._call("the subject list", self._sr().get_subjects))

    @staticmethod
    def _registered(found: Any) -> RegisteredSchema:
        return RegisteredSchema(
            found.subject, found.version, found.schema_id, json.loads(found.schema.schema_str)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (HttpRegistry, (self._url, self._config))

    def __repr__(self) -> str:
        # The URL's user info and the client config may hold credentials: never shown.
        return f"HttpRegistry({self._shown!r})"


def _without_credentials(url: str) -> str:
    """``url`` without its user info (``https://host:8081``); ``<invalid URL>`` when it cannot
    be parsed (it is not repeated: it may hold a password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme or not host:
        return "<invalid URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"
