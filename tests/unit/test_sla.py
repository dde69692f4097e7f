"""SLA judgement and notification state of ``cdc sla check`` (pure; fake facts and notifier)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdc.config.settings import Settings, SlaSettings, load_settings
from cdc.errors import ConfigError
from cdc.ops.sla import (
    Breach,
    Facts,
    SlaError,
    check_slas,
    evaluate,
    judged,
    slack_notifier,
    transitions,
)
from tests.support.paths import REPO_ROOT

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SLA = SlaSettings(freshness_seconds=600, no_records_seconds=3600)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_caught_up_is_fresh_however_old_the_last_batch() -> None:
    facts = Facts("p", lag=0, last_batch_at=ago(86_400), last_record_at=ago(60))
    assert evaluate(facts, SLA, NOW) == []


def test_behind_and_no_batch_for_longer_than_the_sla_is_stale() -> None:
    assert evaluate(Facts("p", 5, ago(300), ago(60)), SLA, NOW) == []
    (breach,) = evaluate(Facts("p", 5, ago(900), ago(60)), SLA, NOW)
    assert breach == Breach(
        "p", "freshness", "5 records behind its topic; last batch committed 900s ago (SLA 600s)"
    )
    (never,) = evaluate(Facts("p", 5, None, ago(60)), SLA, NOW)
    assert "last batch committed never" in never.detail
    assert evaluate(Facts("p", None, None, ago(60)), SLA, NOW) == []  # lag unknown: not judged


def test_no_records_window() -> None:
    (quiet,) = evaluate(Facts("p", 0, ago(10), ago(4000)), SLA, NOW)
    assert quiet == Breach("p", "no_records", "last record landed 4000s ago (window 3600s)")
    (empty,) = evaluate(Facts("p", 0, None, None), SLA, NOW)
    assert empty.detail == "last record landed never (window 3600s)"


def test_transitions_open_once_and_close_only_what_was_judged() -> None:
    a, b = Breach("a", "freshness", "x"), Breach("b", "no_records", "y")
    judged = ["a/freshness", "a/no_records", "b/freshness", "b/no_records"]
    opened, closed = transitions({}, [a, b], judged)
    assert (opened, closed) == ([a, b], [])
    state = {"a/freshness": {}, "b/no_records": {}, "c/freshness": {}, "broker_unreachable": {}}
    opened, closed = transitions(state, [b], judged)
    # c was not judged, nor was the broker: both stay open.
    assert (opened, closed) == ([], ["a/freshness"])
    opened, closed = transitions(state, [b], ["a/no_records", "broker_unreachable"])
    assert (opened, closed) == ([], ["broker_unreachable"])  # a/freshness unjudged: stays


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        "local",
        [f"checkpoints.root={tmp_path / 'cp'}", "defaults.sla.freshness_seconds=600"],
        config_dir=REPO_ROOT / "config",
        environ={},
    )


def test_an_open_breach_is_sent_once_and_its_end_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sent: list[tuple[str, str]] = []
    targets = [("fake", lambda subject, text: sent.append((subject, text)))]
    state = {"facts": Facts("crm_contacts", 9, ago(7200), ago(60))}

    def check() -> list[str]:
        result = check_slas(
            settings,
            ["crm_contacts"],
            now=NOW,
            facts=lambda s, n, b: state["facts"],
            broker=lambda s: None,
            send=targets,
        )
        return result.lines(["crm_contacts"])

    lines = check()
    assert lines[0].startswith("crm_contacts freshness: BREACH 9 records behind")
    assert lines[0].endswith("(new: notified)") and lines[1] == "crm_contacts no_records: ok"
    assert [s for s, _ in sent] == ["SLA breach: crm_contacts freshness"]
    stored = json.loads((tmp_path / "cp" / "_sla" / "open-breaches.json").read_text())
    assert list(stored["open"]) == ["crm_contacts/freshness"]
    assert not check()[0].endswith("(new: notified)")
    assert len(sent) == 1  # still open: not sent again
    state["facts"] = Facts("crm_contacts", 0, ago(7200), ago(60))
    assert check() == [
        "crm_contacts freshness: ok",
        "crm_contacts no_records: ok",
        "crm_contacts/freshness: resolved",
    ]
    assert [s for s, _ in sent] == [
        "SLA breach: crm_contacts freshness",
        "SLA resolved: crm_contacts freshness",
    ]
    assert check() == ["crm_contacts freshness: ok", "crm_contacts no_records: ok"]
    assert len(sent) == 2


def test_a_failed_notification_is_retried_by_the_next_run(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    def down(subject: str, text: str) -> None:
        raise SlaError("Slack webhook unreachable: connection refused")

    facts = Facts("crm_contacts", 9, ago(7200), ago(60))
    with pytest.raises(SlaError):
        check_slas(
            settings,
            ["crm_contacts"],
            now=NOW,
            facts=lambda s, n, b: facts,
            broker=lambda s: None,
            send=[("s", down)],
        )
    assert not (tmp_path / "cp" / "_sla" / "open-breaches.json").exists()
    sent: list[str] = []
    check_slas(
        settings,
        ["crm_contacts"],
        now=NOW,
        facts=lambda s, n, b: facts,
        broker=lambda s: None,
        send=[("s", lambda subject, text: sent.append(subject))],
    )
    assert sent == ["SLA breach: crm_contacts freshness"]


def test_what_unknown_facts_leave_unjudged() -> None:
    unknown = Facts("p", None, None, None, lake_error="cannot read the Delta table at s3://x")
    assert evaluate(unknown, SLA, NOW) == []  # neither "never" a batch nor "never" a record
    assert judged(unknown) == []
    assert judged(Facts("p", 0, ago(1), ago(1))) == ["p/freshness", "p/no_records"]


class _Outage:
    """What ``cdc sla check`` can reach: the broker and the lake, switched on and off."""

    def __init__(self) -> None:
        self.broker_down = False
        self.lake_down = False

    def broker(self, settings: Settings) -> str | None:
        return "cannot reach Kafka at k:9092 within 5s" if self.broker_down else None

    def facts(self, settings: Settings, name: str, broker: bool) -> Facts:
        lag = 9 if broker else None  # behind its topic while the broker answers
        if self.lake_down:
            return Facts(name, lag, ago(7200), None, lake_error="cannot read s3://lake: refused")
        return Facts(name, lag, ago(7200), ago(60))


def test_an_unreachable_broker_or_lake_is_a_breach_sent_once_and_resolved_once(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    sent: list[tuple[str, str]] = []
    world = _Outage()

    def check() -> list[str]:
        result = check_slas(
            settings,
            ["crm_contacts", "orders"],
            now=NOW,
            facts=world.facts,
            broker=world.broker,
            send=[("fake", lambda subject, text: sent.append((subject, text)))],
        )
        return result.lines(["crm_contacts", "orders"])

    check()  # behind its topic: the two freshness breaches open
    assert [s for s, _ in sent] == [
        "SLA breach: crm_contacts freshness",
        "SLA breach: orders freshness",
    ]
    sent.clear()

    world.broker_down = True
    lines = check()
    assert lines == [
        "broker_unreachable: BREACH cannot reach Kafka at k:9092 within 5s; freshness not"
        " judged (new: notified)",
        "crm_contacts freshness: not judged",
        "crm_contacts no_records: ok",
        "orders freshness: not judged",
        "orders no_records: ok",
    ]
    # Once, for the whole service; the freshness breaches, not judged, are neither resolved
    # nor sent again.
    assert sent == [
        (
            "SLA breach: broker_unreachable",
            "cannot reach Kafka at k:9092 within 5s; freshness not judged",
        )
    ]
    check()
    assert len(sent) == 1  # still unreachable: nobody is told again

    world.lake_down = True
    lines = check()
    assert lines[1] == (
        "lake_unreachable: BREACH cannot read s3://lake: refused; no-records not judged for"
        " crm_contacts, orders (new: notified)"
    )
    assert lines[2:] == [
        f"{p} {k}: not judged"
        for p in ("crm_contacts", "orders")
        for k in ("freshness", "no_records")
    ]
    assert [s for s, _ in sent[1:]] == ["SLA breach: lake_unreachable"]

    world.broker_down = world.lake_down = False
    lines = check()
    assert lines[-2:] == ["broker_unreachable: resolved", "lake_unreachable: resolved"]
    assert [s for s, _ in sent[2:]] == [
        "SLA resolved: broker_unreachable",
        "SLA resolved: lake_unreachable",
    ]
    assert sent[2][1] == "Kafka answers again: freshness is judged again"
    stored = json.loads((tmp_path / "cp" / "_sla" / "open-breaches.json").read_text())
    assert sorted(stored["open"]) == ["crm_contacts/freshness", "orders/freshness"]
    check()
    assert len(sent) == 4


@pytest.mark.parametrize(
    "url",
    [
        "hooks.slack.com/services/T0/B0/S3NT1NEL",  # no scheme: urllib's "unknown url type"
        "https://hooks.slack.com/services/T0/B0/S3NT1NEL x",  # a space: "InvalidURL"
        "https://hooks.slack.com/services/T0/B0/S3NT1NEL\n",
        "https://:S3NT1NEL@/services",  # no host
        "https://hooks.slack.com:S3NT1NEL/services",  # a port that is not a number
    ],
)
def test_a_malformed_webhook_url_is_refused_without_being_shown(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        slack_notifier(url, 1.0)
    assert str(refused.value) == (
        "notify.slack_webhook_url: not an http(s) URL with a host and no spaces (the value is a"
        " secret and is not shown)"
    )


def test_an_unreachable_webhook_is_one_line_without_the_url() -> None:
    send = slack_notifier("http://127.0.0.1:9/services/T0/B0/S3NT1NEL", 1.0)
    with pytest.raises(SlaError) as down:
        send("subject", "text")
    assert str(down.value).startswith("Slack webhook unreachable: ")
    assert "S3NT1NEL" not in str(down.value)
