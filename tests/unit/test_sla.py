"""SLA judgement and notification state of ``cdc sla check`` (pure; fake facts and notifier)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdc.config import Settings, SlaSettings, load_settings
from cdc.sla import Breach, Facts, SlaError, check_slas, evaluate, transitions
from tests.conftest import REPO_ROOT

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


def test_transitions_open_once_and_close_only_for_judged_pipelines() -> None:
    a, b = Breach("a", "freshness", "x"), Breach("b", "no_records", "y")
    opened, closed = transitions({}, [a, b], ["a", "b"])
    assert (opened, closed) == ([a, b], [])
    state = {"a/freshness": {}, "b/no_records": {}, "c/freshness": {}}
    opened, closed = transitions(state, [b], ["a", "b"])
    assert (opened, closed) == ([], ["a/freshness"])  # c was not judged: stays open


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
            settings, ["crm_contacts"], now=NOW, facts=lambda s, n: state["facts"], send=targets
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
            settings, ["crm_contacts"], now=NOW, facts=lambda s, n: facts, send=[("s", down)]
        )
    assert not (tmp_path / "cp" / "_sla" / "open-breaches.json").exists()
    sent: list[str] = []
    check_slas(
        settings,
        ["crm_contacts"],
        now=NOW,
        facts=lambda s, n: facts,
        send=[("s", lambda subject, text: sent.append(subject))],
    )
    assert sent == ["SLA breach: crm_contacts freshness"]
