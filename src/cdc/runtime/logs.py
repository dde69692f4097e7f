"""Logging of the ``cdc`` command: plain or JSON lines, and secrets never in any output.

* :class:`JsonFormatter` writes one JSON object per record (``time``, ``level``, ``logger``,
  ``message``, and the structured fields a record carries: ``pipeline``, ``batch_id``,
  ``counts``, ``seconds``, ``phases``), for log pipelines that parse them.
* :class:`SecretRedactor` replaces every configured secret value (each setting the settings
  model marks :class:`~cdc.config.settings.Secret`, references resolved: Kafka client passwords and
  JAAS configs, registry and warehouse credentials, storage keys, the Slack webhook URL) with
  ``***`` in every record, its traceback included, whichever library logged it (librdkafka's
  messages come through logging too). :func:`redact` applies it to text the command prints
  itself: the one-line ``cdc: error:``, a bug's traceback, an SLA notification.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from cdc.config.settings import Secret, Settings, is_secret_ref, resolve_secret, secret_settings
from cdc.errors import CdcError

# psycopg is imported where a PostgreSQL DSN's password is looked for: logging never needs it
# otherwise.

__all__ = [
    "STRUCTURED_FIELDS",
    "JsonFormatter",
    "SecretRedactor",
    "configure_logging",
    "redact",
    "redact_secrets_of",
    "secret_values",
]

STRUCTURED_FIELDS = ("pipeline", "batch_id", "writer", "counts", "seconds", "phases")
"""Fields a record may carry (``extra=``) that the JSON format writes as their own keys."""

_SECRET_KEY = re.compile(
    r"password|secret|token|jaas|credential|private|api.?key|access.?key|keystore\.key|user\.info",
    re.I,
)
_MIN_SECRET = 4
_MIN_FRAGMENT = 8
"""Pieces of a secret (a word of it, a URL's path) shorter than this are not redacted alone:
too likely to be ordinary words of other lines."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str)


class SecretRedactor(logging.Filter):
    """Replaces known secret values in a record: its message, its traceback and stack, and
    its structured fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if len(s) >= _MIN_SECRET}

    def redact(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # Formatted here so that the formatters use the clean text (they keep exc_text).
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                setattr(record, name, self._clean(getattr(record, name)))
        return True

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self._clean(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._clean(v) for v in value)
        return value


_USER_INFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^/@]*)@")
"""A URL's ``user:password@``, read even when the rest of the URL cannot be parsed."""


def _url_password(value: str) -> Iterator[str]:
    """A URL's password as written (percent-encoded) and decoded."""
    try:
        password = urlsplit(value).password
    except ValueError:
        found = _USER_INFO.match(value)
        password = found.group(1) if found else None
    if password:
        yield password
        yield unquote(password)


def _path_and_query(value: str) -> Iterator[str]:
    """A URL's path and query: a webhook's credential, which a library may quote alone."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return
    if parts.scheme and parts.netloc:
        rest = value.split(parts.netloc, 1)[-1]
        if len(rest) >= _MIN_FRAGMENT:
            yield rest


_JAAS_SECRET = re.compile(r'(?:password|secret|token)\s*=\s*"((?:[^"\\]|\\.)*)"', re.I)
"""A JAAS option holding a secret (``password="..."``): a log line may quote it alone."""


def _words(value: str) -> Iterator[str]:
    """The words of a value holding white space: a library that stops at a space quotes one."""
    words = value.split()
    if len(words) > 1:
        yield from (w for w in words if len(w) >= _MIN_FRAGMENT)


def _connection_password(value: str) -> tuple[bool, str | None]:
    """``(parsed, password)`` of a URL or a libpq connection string."""
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            return False, None
        return bool(parts.scheme and parts.hostname), parts.password
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(value).get("password")
    except Exception:  # psycopg.ProgrammingError: not a connection string
        return False, None
    return True, None if password is None else str(password)


def _secrets_of(marker: Secret, key: str, raw: str) -> Iterator[str]:
    """The strings to redact for one configured value (``raw``, as written; ``key``: its
    entry's name in a map of client settings)."""
    if marker.carries == "entries" and not (_SECRET_KEY.search(key) or is_secret_ref(raw)):
        return  # a client setting such as security.protocol: SASL_SSL
    try:
        value = resolve_secret(raw)
    except CdcError:  # an unresolvable reference fails later, in its own words
        return
    if marker.carries == "credentials":
        parsed, password = _connection_password(value)
        if parsed and not password:
            return  # a URL or DSN without a password holds no secret
        if password:
            yield password
        yield from _url_password(value)
    elif marker.carries == "value":  # the value is the credential: so are its pieces
        yield from _path_and_query(value)
        yield from _words(value)
    else:  # a client setting: a JAAS config's password
        yield from (m.group(1) for m in _JAAS_SECRET.finditer(value))
    yield value


def secret_values(settings: Settings) -> set[str]:
    """Every secret the settings hold (references resolved): the values of each setting marked
    :class:`~cdc.config.settings.Secret`, and what the Java client's settings derive from them."""
    found: set[str] = set()
    for path, marker, value in secret_settings(settings):
        if isinstance(value, dict):
            for key, item in value.items():
                found.update(_secrets_of(marker, str(key), str(item)))
        else:
            found.update(_secrets_of(marker, path, str(value)))
    try:  # the JAAS config and the PEM key the Java client gets (they embed secrets)
        derived = settings.kafka.java_config()
    except CdcError:
        derived = {}
    found.update(v for k, v in derived.items() if _SECRET_KEY.search(k) and v)
    return {s for s in found if len(s) >= _MIN_SECRET}


_redactor = SecretRedactor()


def redact(text: str) -> str:
    """``text`` cleaned of every secret :func:`redact_secrets_of` registered."""
    return _redactor.redact(text)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        return None


def configure_logging(verbose: bool, json_lines: bool) -> None:
    """Set up the root logger: level, format and the secret filter.

    Like :func:`logging.basicConfig`, it adds its stderr handler only when nobody else
    handles the process's records (an application embedding ``cdc``, or pytest, keeps its
    own handlers); their handlers get the secret filter all the same.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cdc", False)]:
        root.removeHandler(old)
    others = list(root.handlers)
    for handler in others:
        if _redactor not in handler.filters:
            handler.addFilter(_redactor)
    if others:
        return
    handler = _StderrHandler()
    handler.addFilter(_redactor)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._cdc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def redact_secrets_of(settings: Settings) -> None:
    """Add the settings' secret values to what every output is cleaned of."""
    _redactor.secrets |= secret_values(settings)
