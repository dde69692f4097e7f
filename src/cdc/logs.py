"""Logging of the ``cdc`` command: plain or JSON lines, and secrets never in either.

* :class:`JsonFormatter` writes one JSON object per record (``time``, ``level``, ``logger``,
  ``message``, and the structured fields a record carries: ``pipeline``, ``batch_id``,
  ``counts``, ``seconds``, ``phases``), for log pipelines that parse them.
* :class:`SecretRedactor` replaces every configured secret value (Kafka client passwords and
  JAAS configs, storage keys, whatever a secret reference resolved to) with ``***`` in every
  record, whichever library logged it (librdkafka's messages come through logging too).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from cdc.config import Settings

__all__ = [
    "STRUCTURED_FIELDS",
    "JsonFormatter",
    "SecretRedactor",
    "configure_logging",
    "redact_secrets_of",
    "secret_values",
]

STRUCTURED_FIELDS = ("pipeline", "batch_id", "writer", "counts", "seconds", "phases")
"""Fields a record may carry (``extra=``) that the JSON format writes as their own keys."""

_SECRET_KEY = re.compile(
    r"password|secret|token|jaas|credential|private|api.?key|access.?key", re.I
)
_MIN_SECRET = 4


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
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class SecretRedactor(logging.Filter):
    """Replaces known secret values in a record's message and structured fields."""

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
        if self.secrets:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
        return True


def secret_values(settings: Settings) -> set[str]:
    """The values of settings whose names say they are secret (references resolved)."""
    candidates: dict[str, str] = {}
    getters: list[Callable[[], dict[str, str]]] = [
        settings.kafka.client_config,
        settings.kafka.java_config,
        settings.lake.resolved_storage_options,
        settings.warehouse.resolved_secrets,
    ]
    for getter in getters:
        try:
            candidates.update(getter())
        except Exception:  # an unresolvable reference fails later, in its own words
            continue
    return {str(value) for key, value in candidates.items() if _SECRET_KEY.search(key) and value}


_redactor = SecretRedactor()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        import sys

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
    """Add the settings' secret values to what every log line is cleaned of."""
    _redactor.secrets |= {s for s in secret_values(settings) if len(s) >= _MIN_SECRET}
