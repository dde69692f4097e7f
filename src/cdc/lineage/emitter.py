"""Sending events: ``openlineage-python``'s client with the configured transport, on a thread.

:meth:`Emitter.emit` puts the event on a bounded queue and returns at once; a daemon thread
sends the events in order. An event the transport refuses (a dead endpoint, a full disk) or
that finds the queue full is counted in ``cdc_lineage_events_total{outcome=...}`` and logged
at most once per ``lineage.failure_log_interval_s`` (with how many failed since the last
line): lineage never blocks or fails a run. :meth:`Emitter.close` waits, at most
``lineage.close_timeout_s``, for what is still queued.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from cdc.config.settings import LineageSettings, Settings
from cdc.errors import ConfigError, first_line

# openlineage's client and transports are imported when lineage is on: most runs have it off.

__all__ = ["OUTCOMES", "Emitter", "LineageMetrics", "events_file", "transport_config"]

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "failed", "dropped")
"""``sent``; ``failed``: the transport refused it; ``dropped``: the queue was full."""


class LineageMetrics:
    """The emitter's counter, in the service's registry (``cdc run``) or one of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "cdc_lineage_events",
            "OpenLineage events by outcome: sent, failed (the transport refused it: a dead"
            " endpoint) or dropped (the queue was full).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.events.labels(outcome)

    def count(self, outcome: str) -> float:
        """How many events had ``outcome`` so far."""
        return float(self.events.labels(outcome)._value.get())


def events_file(settings: Settings) -> str:
    """The file of the ``file`` transport: ``lineage.file.path`` or the default."""
    default = f"{settings.checkpoints.root.rstrip('/')}/_lineage/events.jsonl"
    return settings.lineage.file.path or default


def transport_config(settings: Settings) -> dict[str, Any]:
    """The ``openlineage-python`` transport configuration of ``lineage:``, secrets resolved.

    Raises:
        ConfigError: a setting the transport needs is missing or malformed, or a secret
            reference does not resolve (the message names the setting, never its value).
    """
    lineage: LineageSettings = settings.lineage
    if lineage.transport == "console":
        return {"type": "console"}
    if lineage.transport == "file":
        path = events_file(settings)
        if "://" in path:
            raise ConfigError("lineage.file.path: the file transport writes a local file")
        return {"type": "file", "log_file_path": path, "append": True}
    if lineage.transport == "kafka":
        kafka = lineage.kafka
        producer = lineage.kafka_client_config(settings.kafka)
        producer["bootstrap.servers"] = kafka.bootstrap_servers or settings.kafka.bootstrap_servers
        # A broker that is away must not hold an event for librdkafka's default five minutes.
        producer.setdefault("message.timeout.ms", "10000")
        return {"type": "kafka", "topic": kafka.topic, "config": producer, "flush": True}
    url = lineage.http.resolved_url() or ""
    if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise ConfigError("lineage.http.url: not an http(s) URL")
    config: dict[str, Any] = {
        "type": "http",
        "url": url,
        "endpoint": lineage.http.endpoint,
        "timeout": lineage.http.timeout_s,
        # One try: a dead endpoint is counted and the next event tries again.
        "retry": {"total": 0, "connect": 0, "read": 0},
    }
    key = lineage.http.resolved_api_key()
    if key is not None:
        config["auth"] = {"type": "api_key", "apiKey": key}
    return config


def _client(config: dict[str, Any]) -> Any:
    """The ``openlineage-python`` client of one transport (its environment variables and
    config files are not read: ``lineage:`` is the one source)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport import get_default_factory

    if config["type"] == "kafka":
        transport = _CheckedKafkaTransport.build(config)
    else:
        transport = get_default_factory().create(config)
    return OpenLineageClient(transport=transport, config={"transport": {"type": config["type"]}})


class _CheckedKafkaTransport:
    """The client's Kafka transport, but a message the broker did not take raises (the
    client's only logs it), so it is counted as failed."""

    @staticmethod
    def build(config: dict[str, Any]) -> Any:
        from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport

        class Checked(KafkaTransport):  # type: ignore[misc]
            def emit(self, event: Any) -> None:
                from openlineage.client.serde import Serde

                if self.producer is None:
                    self._setup_producer(self.kafka_config.config)
                producer = self.producer
                assert producer is not None
                errors: list[str] = []
                producer.produce(
                    topic=self.topic,
                    key=self.message_key or self._get_message_key(event),
                    value=Serde.to_json(event).encode("utf-8"),
                    on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
                )
                left = producer.flush(timeout=15)
                if errors or left:
                    raise RuntimeError(f"kafka: {errors[0] if errors else 'not delivered in 15 s'}")

        return Checked(KafkaConfig.from_dict(dict(config)))


class Emitter:
    """Sends events on a background thread; :meth:`emit` never blocks nor raises."""

    def __init__(
        self,
        send: Callable[[Any], None],
        *,
        queue_size: int = 1000,
        metrics: LineageMetrics | None = None,
        log_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], Any] | None = None,
    ) -> None:
        """Start the sending thread.

        Args:
            send: sends one event (the client's ``emit``); may raise.
            queue_size: events that may wait; beyond it a new event is dropped.
            metrics: where the outcomes are counted (default: a registry of its own).
            log_interval_s: failures are logged at most once per this many seconds.
            clock: seconds, for the log interval (tests pass their own).
            close: releases the transport when the emitter closes.
        """
        self._send = send
        self._close_transport = close
        self.metrics = metrics or LineageMetrics()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._interval = log_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_log: float | None = None
        self._unlogged = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cdc-lineage", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: CollectorRegistry | None = None
    ) -> Emitter:
        """The emitter of ``lineage:`` (its transport checked now).

        Raises:
            ConfigError: see :func:`transport_config`; also when the transport cannot be built.
        """
        config = transport_config(settings)
        if config["type"] == "file":
            Path(config["log_file_path"]).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = _client(config)
        except Exception as exc:  # the client refuses its configuration
            raise ConfigError(
                f"lineage.transport {config['type']}: cannot be set up: {_safe(exc, config)}"
            ) from None
        lineage = settings.lineage
        return cls(
            client.emit,
            queue_size=lineage.queue_size,
            metrics=LineageMetrics(registry),
            log_interval_s=lineage.failure_log_interval_s,
            close=client.close,
        )

    def emit(self, event: Any) -> None:
        """Queue one event (dropped, counted and logged when the queue is full)."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._failed("dropped", "the queue is full (the transport is slower than the runs)")

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):  # the thread stops at the deadline anyway
            self._queue.put(None, timeout=max(0.0, timeout_s))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self._queue.qsize()
        if self._thread.is_alive() or left:
            log.warning("lineage: %d event(s) not sent when the run ended", max(left, 1))
        if self._close_transport is not None and not self._thread.is_alive():
            try:
                self._close_transport()
            except Exception as exc:
                log.debug("lineage: closing the transport failed: %s", exc)
        self._flush_log()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._send(event)
            except Exception as exc:
                self._failed("failed", first_line(exc))
            else:
                self.metrics.events.labels("sent").inc()

    def _failed(self, outcome: str, reason: str) -> None:
        self.metrics.events.labels(outcome).inc()
        with self._lock:
            now = self._clock()
            if self._last_log is not None and now - self._last_log < self._interval:
                self._unlogged += 1
                return
            more, self._unlogged, self._last_log = self._unlogged, 0, now
        suffix = f" (and {more} more since the last report)" if more else ""
        log.warning(
            "lineage: an OpenLineage event was not sent: %s%s; the run goes on", reason, suffix
        )

    def _flush_log(self) -> None:
        with self._lock:
            more, self._unlogged = self._unlogged, 0
        if more:
            log.warning("lineage: %d more OpenLineage event(s) were not sent", more)


def _safe(exc: Exception, config: dict[str, Any]) -> str:
    """The error's first line without the transport's secret values."""
    text = first_line(exc)
    secrets = [config.get("url"), (config.get("auth") or {}).get("apiKey")]
    secrets += list((config.get("config") or {}).values()) if config["type"] == "kafka" else []
    for value in secrets:
        if isinstance(value, str) and len(value) > 3:
            text = text.replace(value, "***")
    return text
