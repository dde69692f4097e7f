"""``cdc sla check``: judge each pipeline's freshness and no-records SLAs, notify once.

A batch companion, run on a schedule (a Kubernetes CronJob) beside the always-on streams. It
reads what any operator could: the topic's end offsets, the checkpoint's committed batch and
the newest row of bronze and quarantine. Per pipeline (``defaults.sla`` /
``pipelines.<name>.sla``):

* **freshness**: the pipeline is caught up (no lag), or its last committed batch finished
  less than ``freshness_seconds`` ago;
* **no records**: the newest bronze or quarantine row landed less than
  ``no_records_seconds`` ago.

A check that cannot judge is a breach too, for the people on call: an unreachable broker
(``broker_unreachable``: the lag, so freshness, is unknown) or lake (``lake_unreachable``:
the newest rows, so no-records, are unknown) opens one breach of its own for the whole
service; an SLA that was not judged keeps whatever state it had.

A breach is sent (Slack incoming webhook and/or SNS) when it opens, and once more when it
closes; the open breaches are kept in a small state file, so a breach that stays open is not
sent again by every run. A notification that fails is retried by the next run (the state
changes only after every notifier accepted it).

:func:`evaluate` and :func:`transitions` are pure; the rest reads and sends.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cdc.config.lake import table_paths
from cdc.config.settings import Settings, SlaSettings, resolve_secret
from cdc.errors import (
    BrokerUnavailableError,
    CdcError,
    ConfigError,
    TableReadError,
    first_line,
)
from cdc.ops.status import pipeline_status
from cdc.runtime.kafka_admin import require_broker
from cdc.runtime.logs import redact
from cdc.store import store_for

# boto3 is imported where SNS is called: a Slack-only or no-notification check never loads it.

__all__ = [
    "PIPELINE_KINDS",
    "SERVICE_KINDS",
    "Breach",
    "Facts",
    "Notifier",
    "SlaCheck",
    "SlaError",
    "broker_problem",
    "check_slas",
    "evaluate",
    "judged",
    "transitions",
]

PIPELINE_KINDS = ("freshness", "no_records")
"""A pipeline's SLAs."""
SERVICE_KINDS = ("broker_unreachable", "lake_unreachable")
"""What stops the check from judging: one breach each, for the whole service."""


class SlaError(CdcError):
    """A notification could not be sent (the breach stays unsent, for the next run)."""


@dataclass(frozen=True)
class Facts:
    """What the check knows about one pipeline at ``now``."""

    pipeline: str
    lag: int | None
    """Records behind the topic's end (None: unknown)."""
    last_batch_at: datetime | None
    """When the last committed batch finished (None: none committed)."""
    last_record_at: datetime | None
    """When the newest bronze or quarantine row landed (None: none ever)."""
    lake_error: str | None = None
    """Why the tables could not be read (None: they could); no-records is then not judged."""


@dataclass(frozen=True)
class Breach:
    """One SLA of one pipeline not met, or (``pipeline`` None) a check that cannot judge."""

    pipeline: str | None
    kind: str
    """One of :data:`PIPELINE_KINDS`, or of :data:`SERVICE_KINDS` when ``pipeline`` is None."""
    detail: str

    @property
    def key(self) -> str:
        """``<pipeline>/<kind>``, or the kind alone for the service's own breaches."""
        return self.kind if self.pipeline is None else f"{self.pipeline}/{self.kind}"


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "never"
    seconds = int((now - then).total_seconds())
    return f"{seconds}s ago"


def _older(now: datetime, then: datetime | None, seconds: float) -> bool:
    """Whether ``then`` lies more than ``seconds`` before ``now`` (never: it does)."""
    return then is None or (now - then).total_seconds() > seconds


def judged(facts: Facts) -> list[str]:
    """The keys of the pipeline's SLAs that ``facts`` can judge: freshness needs the lag (the
    broker), no-records the newest rows (the lake)."""
    out = []
    if facts.lag is not None:
        out.append(f"{facts.pipeline}/freshness")
    if facts.lake_error is None:
        out.append(f"{facts.pipeline}/no_records")
    return out


def evaluate(facts: Facts, sla: SlaSettings, now: datetime) -> list[Breach]:
    """The pipeline's breached SLAs at ``now`` (only those :func:`judged` can judge)."""
    out: list[Breach] = []
    behind = facts.lag is not None and facts.lag > 0
    if behind and _older(now, facts.last_batch_at, sla.freshness_seconds):
        out.append(
            Breach(
                facts.pipeline,
                "freshness",
                f"{facts.lag} records behind its topic; last batch committed"
                f" {_age(now, facts.last_batch_at)} (SLA {sla.freshness_seconds:g}s)",
            )
        )
    if facts.lake_error is None and _older(now, facts.last_record_at, sla.no_records_seconds):
        out.append(
            Breach(
                facts.pipeline,
                "no_records",
                f"last record landed {_age(now, facts.last_record_at)}"
                f" (window {sla.no_records_seconds:g}s)",
            )
        )
    return out


def transitions(
    open_before: Mapping[str, Any], breaches: Iterable[Breach], checked: Iterable[str]
) -> tuple[list[Breach], list[str]]:
    """Which breaches opened and which closed since the last run.

    Args:
        open_before: the state file's open breaches, by :attr:`Breach.key`.
        breaches: the breaches now.
        checked: the keys this run judged (other open breaches stay as they are: another
            pipeline's, or an SLA the run could not judge).

    Returns:
        ``(opened, closed)``: new breaches, and the keys of breaches no longer open.
    """
    now = {b.key: b for b in breaches}
    judged_now = set(checked)
    opened = [b for key, b in now.items() if key not in open_before]
    closed = [key for key in open_before if key in judged_now and key not in now]
    return opened, sorted(closed)


Notifier = Callable[[str, str], None]
"""Sends ``(subject, text)``; raises :class:`SlaError` when it cannot."""


def slack_notifier(url: str, timeout_s: float) -> Notifier:
    """Posts to a Slack incoming webhook (the URL is never printed: it is the credential).

    Raises:
        ConfigError: ``url`` is not an http(s) URL (the message does not show it).
    """
    if not _http_url(url):
        raise ConfigError(
            "notify.slack_webhook_url: not an http(s) URL with a host and no spaces (the"
            " value is a secret and is not shown)"
        )

    def send(subject: str, text: str) -> None:
        body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise SlaError(f"Slack webhook refused the notification: HTTP {exc.code}") from None
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise SlaError(f"Slack webhook unreachable: {redact(str(reason))}") from None
        except ValueError:  # urllib's own text quotes the URL, the credential itself
            raise SlaError("Slack webhook URL refused by urllib (not shown: a secret)") from None

    return send


def _http_url(url: str) -> bool:
    """Whether ``url`` is an http(s) URL with a host and nothing urllib would refuse."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def sns_notifier(
    topic_arn: str, region: str | None, endpoint_url: str | None, timeout_s: float
) -> Notifier:
    """Publishes to an SNS topic (boto3; credentials from the usual AWS chain)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "sns",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2}
        ),
    )

    def send(subject: str, text: str) -> None:
        try:
            client.publish(TopicArn=topic_arn, Subject=subject[:100], Message=text)
        except Exception as exc:  # botocore's errors: no credentials, endpoint, refused
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlaError(f"SNS publish to {topic_arn} failed: {first}") from None

    return send


def notifiers(settings: Settings) -> list[tuple[str, Notifier]]:
    """The configured notifiers, by name."""
    n = settings.notify
    out: list[tuple[str, Notifier]] = []
    if n.slack_webhook_url:
        out.append(("slack", slack_notifier(resolve_secret(n.slack_webhook_url), n.timeout_s)))
    if n.sns_topic_arn:
        sns = sns_notifier(n.sns_topic_arn, n.sns_region, n.sns_endpoint_url, n.timeout_s)
        out.append(("sns", sns))
    return out


def state_path(settings: Settings) -> Path:
    """Where the open breaches are kept."""
    if settings.notify.state_path:
        return Path(settings.notify.state_path)
    return Path(settings.checkpoints.root) / "_sla" / "open-breaches.json"


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlaError(f"cannot read the SLA state {path}: {exc}") from None
    return dict(value.get("open", {})) if isinstance(value, dict) else {}


def _write_state(path: Path, open_now: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"open": dict(open_now)}, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def broker_problem(settings: Settings) -> str | None:
    """Why the Kafka cluster cannot be asked for the topics' end offsets (None: it can)."""
    try:
        require_broker(settings.kafka)
    except BrokerUnavailableError as exc:
        return str(exc)
    return None


def gather_facts(settings: Settings, name: str, broker: bool = True) -> Facts:
    """Lag (broker and checkpoint), last batch (checkpoint) and newest row (tables).

    Args:
        broker: whether the cluster answers (False: the lag is unknown).
    """
    status = pipeline_status(settings, name, broker=broker, tables=False)
    lag = None if status.lag is None else sum(status.lag.values())
    last_batch = (
        None if status.last_batch is None else datetime.fromisoformat(status.last_batch.finished_at)
    )
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    paths = table_paths(settings, settings.pipeline(name))
    newest: datetime | None = None
    try:
        for role, column in (("bronze", "_ingested_at"), ("quarantine", "_quarantined_at")):
            if not store.exists(paths[role]):
                continue
            value = store.query(paths[role], f"SELECT max({column}) AS t FROM t").column("t")[0]
            stamp = value.as_py()
            if stamp is not None:
                stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
                newest = stamp if newest is None else max(newest, stamp)
    except (TableReadError, OSError) as exc:  # storage down, refused, corrupt
        return Facts(name, lag, last_batch, None, lake_error=redact(first_line(exc)))
    return Facts(name, lag, last_batch, newest)


@dataclass(frozen=True)
class SlaCheck:
    """What a check found and sent."""

    breaches: list[Breach]
    opened: list[Breach]
    closed: list[str]
    sent: int
    judged: frozenset[str] = frozenset()
    """The keys the check judged (a pipeline SLA not among them was not judged)."""

    def lines(self, names: Iterable[str]) -> list[str]:
        """One line per breach of the service, then per pipeline and SLA."""
        by_key = {b.key: b for b in self.breaches}
        out = [self._line(b.key, b) for b in self.breaches if b.pipeline is None]
        for name in names:
            for kind in PIPELINE_KINDS:
                key = f"{name}/{kind}"
                if key not in self.judged and key not in by_key:
                    out.append(f"{name} {kind}: not judged")
                else:
                    out.append(self._line(f"{name} {kind}", by_key.get(key)))
        out.extend(f"{key}: resolved" for key in self.closed)
        return out

    def _line(self, what: str, breach: Breach | None) -> str:
        if breach is None:
            return f"{what}: ok"
        new = " (new: notified)" if breach in self.opened and self.sent else ""
        return f"{what}: BREACH {breach.detail}{new}"


def check_slas(
    settings: Settings,
    names: list[str],
    *,
    now: datetime | None = None,
    facts: Callable[[Settings, str, bool], Facts] = gather_facts,
    broker: Callable[[Settings], str | None] = broker_problem,
    send: list[tuple[str, Notifier]] | None = None,
) -> SlaCheck:
    """Judge the pipelines' SLAs; notify breaches that opened or closed since the last run.

    Args:
        facts: what is known of a pipeline (``settings``, name, whether the broker answers).
        broker: why the broker cannot be reached (None: it can).

    Raises:
        SlaError: a notifier failed (nothing of this run is marked as sent), or the state
            file cannot be read.
    """
    moment = now or datetime.now(UTC)
    targets = notifiers(settings) if send is None else send  # a bad target: before any work
    unreachable = broker(settings)
    found = [facts(settings, name, unreachable is None) for name in names]
    breaches = [b for f in found for b in evaluate(f, settings.sla(f.pipeline), moment)]
    checked = {key for f in found for key in judged(f)} | set(SERVICE_KINDS)
    if unreachable is not None:
        detail = f"{unreachable}; freshness not judged"
        breaches.insert(0, Breach(None, "broker_unreachable", detail))
    lake = [f for f in found if f.lake_error is not None]
    if lake:
        unjudged = ", ".join(f.pipeline for f in lake)
        detail = f"{lake[0].lake_error}; no-records not judged for {unjudged}"
        breaches.insert(0 if unreachable is None else 1, Breach(None, "lake_unreachable", detail))
    path = state_path(settings)
    before = _read_state(path)
    opened, closed = transitions(before, breaches, checked)
    messages = [(f"SLA breach: {b.key.replace('/', ' ')}", b.detail) for b in opened] + [
        (f"SLA resolved: {key.replace('/', ' ')}", _resolved_text(key)) for key in closed
    ]
    for subject, text in messages:
        for _name, notify in targets:
            notify(subject, redact(text))
    after = {k: v for k, v in before.items() if k not in closed}
    stamp = moment.isoformat(timespec="seconds")
    for b in opened:
        after[b.key] = {"since": stamp, "detail": redact(b.detail)}
    if after != before:
        _write_state(path, after)
    sent = len(messages) * len(targets)
    return SlaCheck(breaches, opened, closed, sent, frozenset(checked))


_RESOLVED = {
    "broker_unreachable": "Kafka answers again: freshness is judged again",
    "lake_unreachable": "the lake's tables can be read again: no-records is judged again",
}


def _resolved_text(key: str) -> str:
    return _RESOLVED.get(key, f"{key} meets its SLA again")
