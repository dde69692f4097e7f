"""A realistic, deterministic CRM + events data set for the demo, tests and docs. Pure.

:func:`generate` simulates a small CRM database behind a Debezium connector plus two event
streams and a daily FX feed, and returns, per topic, the JSON lines ``cdc produce`` reads
(``{"key": {...}, "value": {...} | null}``, or ``"value_b64"`` for exact raw bytes), in the
order the source would emit them. The same seed always yields the same lines: randomness
comes from one :class:`random.Random`, time from a fixed base instant that only moves
forward, never from the wall clock.

What the CRM topics contain, per key, in commit order:

* ``r`` snapshot rows first (``source.snapshot`` true), then ``c`` inserts, ``u`` updates —
  both *tracked* changes (email, last name, account move, stage, tier, ...) that open a new
  SCD2 version and *untracked-only* ones (``updated_at`` plus ``phone`` / ``owner_email`` /
  ``probability``) that update the current version in place — and ``d`` deletes, each followed
  by a tombstone (null value); a few deleted keys are inserted again later.
* ``source.ts_ms`` (the commit time) strictly increases per key; the envelope's ``ts_ms`` (the
  connector's time) is a little later, and always earlier than the next commit.
* A few exact re-deliveries of earlier lines (same content, later position).

The fact topics carry UUID ``event_id`` s (from the seeded generator) with a few duplicate
deliveries; ``ref.fx_rates`` carries business-day rates for currency pairs as small random
walks. :attr:`Dataset.invalid` holds, apart from the valid lines, lines that must be
quarantined at consume time: contract-rule violations and raw payloads that are not valid
Confluent-framed Avro. :attr:`Dataset.expected` summarises both so that tests and the demo
can assert exact outcomes.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdc.ingest.contracts import QuarantineReason
from cdc.ingest.produce import encode_datum
from cdc.ingest.registry.file import FileRegistry

if TYPE_CHECKING:
    from cdc.ingest.registry.base import SchemaRegistry

__all__ = [
    "BASE_TIME",
    "FACT_TOPICS",
    "KEYS",
    "SCD2_TOPICS",
    "TOPICS",
    "UNTRACKED",
    "Dataset",
    "InvalidLine",
    "Line",
    "TopicSummary",
    "generate",
    "merged_lines",
    "write_jsonl",
]

Line = dict[str, Any]
"""One JSON line as ``cdc produce`` reads it."""

BASE_TIME = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
"""The instant the CRM snapshot starts; every generated time is at or after it."""

SCD2_TOPICS = ("crm.accounts", "crm.contacts", "crm.opportunities", "ref.fx_rates")
FACT_TOPICS = ("events.orders", "events.behavior")
TOPICS = ("crm.accounts", "crm.contacts", "crm.opportunities", *FACT_TOPICS, "ref.fx_rates")

KEYS: dict[str, tuple[str, ...]] = {
    "crm.accounts": ("account_id",),
    "crm.contacts": ("contact_id",),
    "crm.opportunities": ("opportunity_id",),
    "events.orders": ("order_id",),
    "events.behavior": ("contact_id",),
    "ref.fx_rates": ("base_currency", "quote_currency"),
}
"""The Kafka key fields of each topic (the registry's ``<topic>-key`` schemas)."""

UNTRACKED: dict[str, tuple[str, ...]] = {
    "crm.accounts": ("updated_at", "owner_email"),
    "crm.contacts": ("updated_at", "phone"),
    "crm.opportunities": ("updated_at", "probability"),
    "ref.fx_rates": ("base_currency", "quote_currency", "effective_at", "provider"),
}
"""Business columns whose change does *not* open a version (as in ``config/local.yaml``).

For ``ref.fx_rates`` only ``rate`` is tracked; its keys are listed here because a flat
record repeats them in the value.
"""

_STAGES = ("prospecting", "qualification", "proposal", "negotiation")
_PROBABILITY = {
    "prospecting": 10,
    "qualification": 25,
    "proposal": 50,
    "negotiation": 75,
    "closed_won": 100,
    "closed_lost": 0,
}
_FIRST_NAMES = (
    "Anna",
    "Lukas",
    "Sofia",
    "Mateo",
    "Emma",
    "Noah",
    "Mia",
    "Liam",
    "Chloé",
    "Hugo",
    "Léa",
    "Jonas",
    "Elif",
    "Matteo",
    "Giulia",
    "Lars",
    "Ingrid",
    "Oliver",
    "Amelia",
    "Jack",
    "Isla",
    "Yuki",
    "Haruto",
    "Sakura",
    "Ren",
    "Olivia",
    "Ethan",
    "Ava",
    "Lucas",
    "Zoë",
    "José",
    "Lucía",
    "Pablo",
    "Carmen",
    "Søren",
    "Freja",
    "Niamh",
    "Conor",
    "Aoife",
    "Priya",
    "Arjun",
    "Fatima",
    "Omar",
    "Marta",
    "Tomás",
    "Élodie",
    "Björn",
    "Katarzyna",
    "Ana",
    "Max",
)
_LAST_NAMES = (
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "García",
    "Fernández",
    "López",
    "Martínez",
    "Rossi",
    "Russo",
    "Ferrari",
    "Bianchi",
    "Dubois",
    "Moreau",
    "Laurent",
    "Lefèvre",
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Miller",
    "Davis",
    "Tanaka",
    "Suzuki",
    "Watanabe",
    "Sato",
    "Jansen",
    "de Vries",
    "van Dijk",
    "Bakker",
    "Nielsen",
    "Hansen",
    "Larsson",
    "Andersson",
    "O'Brien",
    "Murphy",
    "Kelly",
    "Kowalski",
    "Nowak",
    "Novák",
    "Gruber",
    "Huber",
    "Keller",
    "Meier",
    "Patel",
    "Khan",
)
_COMPANY_STEMS = (
    "Northwind",
    "Bluefin",
    "Kestrel",
    "Alpine",
    "Helix",
    "Quantum",
    "Brightwater",
    "Ironbark",
    "Lumen",
    "Meridian",
    "Nimbus",
    "Orchid",
    "Polaris",
    "Redwood",
    "Sable",
    "Tidewater",
    "Vantage",
    "Willow",
    "Zenith",
    "Aurora",
    "Beacon",
    "Cobalt",
    "Driftwood",
    "Ember",
    "Falcon",
    "Granite",
    "Harbor",
    "Juniper",
    "Lighthouse",
    "Maple",
    "Nova",
    "Onyx",
    "Pinnacle",
    "Silverline",
    "Summit",
    "Trident",
    "Vertex",
    "Atlas",
    "Cedar",
    "Horizon",
)
_COMPANY_KINDS = (
    "Logistics",
    "Analytics",
    "Foods",
    "Robotics",
    "Health",
    "Energy",
    "Systems",
    "Labs",
    "Capital",
    "Media",
    "Textiles",
    "Pharma",
    "Motors",
    "Software",
    "Retail",
    "Networks",
)
_INDUSTRIES = (
    "Software",
    "Manufacturing",
    "Retail",
    "Healthcare",
    "Financial Services",
    "Logistics",
    "Energy",
    "Telecommunications",
    "Education",
    "Media",
)
_TIERS = ("enterprise", "mid_market", "smb")
_JOB_TITLES = (
    "Head of Data",
    "CTO",
    "VP Engineering",
    "Data Engineer",
    "Procurement Manager",
    "CFO",
    "IT Director",
    "Analytics Lead",
    "Operations Manager",
    "Product Manager",
)
_PRODUCTS = (
    "Analytics Suite",
    "Platform License",
    "Support Renewal",
    "Data Pipeline Add-on",
    "Professional Services",
    "Premium SLA",
)
_SALES_REPS = (
    "anna.keller",
    "tom.baker",
    "ines.moreau",
    "kenji.ito",
    "sara.lindqvist",
    "marco.bruno",
)
_SALES_DOMAIN = "acme-crm.example"
# Country → (currency, email TLD, phone prefix, phone digits after the area code).
_COUNTRIES: dict[str, tuple[str, str, str, int]] = {
    "DE": ("EUR", "de", "+49 30", 7),
    "FR": ("EUR", "fr", "+33 1", 8),
    "NL": ("EUR", "nl", "+31 20", 7),
    "ES": ("EUR", "es", "+34 91", 7),
    "IT": ("EUR", "it", "+39 02", 8),
    "IE": ("EUR", "ie", "+353 1", 7),
    "GB": ("GBP", "co.uk", "+44 20", 8),
    "US": ("USD", "com", "+1 415", 7),
    "CH": ("CHF", "ch", "+41 44", 7),
    "JP": ("JPY", "co.jp", "+81 3", 8),
}
_COUNTRY_WEIGHTS = (14, 8, 6, 6, 5, 3, 12, 20, 5, 5)
_FX_START: dict[tuple[str, str], str] = {
    ("EUR", "USD"): "1.08450000",
    ("EUR", "GBP"): "0.85720000",
    ("EUR", "JPY"): "161.42000000",
    ("EUR", "CHF"): "0.94310000",
    ("GBP", "USD"): "1.26510000",
    ("USD", "JPY"): "148.83000000",
    ("USD", "CHF"): "0.86960000",
    ("GBP", "CHF"): "1.10020000",
}
_ORDER_FLOW = {"created": ("paid", "cancelled"), "paid": ("shipped",), "shipped": ("delivered",)}
_EVENT_TYPES = ("page_view", "click", "signup", "download", "email_open")
_EVENT_WEIGHTS = (60, 25, 3, 5, 7)
_PAGES = (
    "/",
    "/pricing",
    "/docs/getting-started",
    "/blog/cdc-patterns",
    "/product/analytics",
    "/customers",
    "/contact-sales",
    "/careers",
)
_DEBEZIUM_VERSION = "2.7.3.Final"


@dataclass(frozen=True)
class InvalidLine:
    """A line that must end in quarantine, and why.

    Attributes:
        line: the JSON line (producible: ``cdc produce`` accepts it).
        reason: the expected quarantine reason, a :class:`cdc.ingest.contracts.QuarantineReason`
            value.
        note: what is wrong with it, for people.
    """

    line: Line
    reason: str
    note: str


@dataclass(frozen=True)
class TopicSummary:
    """Exact outcomes of producing one topic's lines and draining them through its pipeline.

    Attributes:
        topic: the topic.
        lines: valid lines (including tombstones and re-deliveries) — the bronze row count.
        invalid: invalid lines — the quarantine row count when they are produced too.
        tombstones: lines with a null value.
        duplicates: exact re-deliveries of an earlier line.
        distinct_keys: distinct Kafka keys among the valid lines.
        deletes: ``d`` envelopes (CRM topics).
        reinserts: keys inserted again after a delete (CRM topics).
        versions: rows of the silver dimension (SCD2 topics).
        current_rows: rows with ``is_current`` (SCD2 topics): keys not deleted at the end.
        distinct_event_ids: rows of the silver fact table (fact topics).
        quarantine_reasons: expected quarantine ``error_code`` → count for the invalid lines.
    """

    topic: str
    lines: int
    invalid: int
    tombstones: int = 0
    duplicates: int = 0
    distinct_keys: int = 0
    deletes: int = 0
    reinserts: int = 0
    versions: int | None = None
    current_rows: int | None = None
    distinct_event_ids: int | None = None
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset(Mapping[str, list[Line]]):
    """Topic → valid JSON lines in emission order, plus invalid lines and expected outcomes.

    Attributes:
        lines: topic → valid lines (the mapping itself).
        invalid: topic → lines that must be quarantined, kept apart from the valid ones.
        invalid_details: topic → the same invalid lines, each with its expected quarantine
            reason and a note (same order as ``invalid``).
        expected: topic → exact outcomes computed from the generated events.
        seed: the seed that produced it.
        parameters: the counts it was generated with.
    """

    lines: dict[str, list[Line]]
    invalid: dict[str, list[Line]]
    invalid_details: dict[str, list[InvalidLine]]
    expected: dict[str, TopicSummary]
    seed: int
    parameters: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, topic: str) -> list[Line]:
        return self.lines[topic]

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)


# --------------------------------------------------------------------------- formatting


def _iso(ms: int) -> str:
    """Epoch milliseconds → ``2026-01-05T08:00:00.000Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _money(value: Decimal | float) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01")))


def _ascii(text: str) -> str:
    """Lower-case ASCII for emails and domains: accents stripped, other symbols dropped."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Clock:
    """Source commit time: starts at the base instant and only moves forward."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms

    def tick(self, rng: random.Random, low_ms: int, high_ms: int) -> int:
        self.now += rng.randint(low_ms, high_ms)
        return self.now


# --------------------------------------------------------------------------- CRM simulation

# The connector publishes within this many ms of the commit; every tick of the change stream
# is longer, so a delete's tombstone (stamped with the delete's ts_ms) sorts before the key's
# next commit.
_MAX_CONNECTOR_LAG_MS = 900
_MIN_STREAM_TICK_MS = 1_000


@dataclass
class _Company:
    account_id: str
    name: str
    country: str
    domain: str


class _Crm:
    """A tiny CRM database whose commits are captured as Debezium envelopes."""

    def __init__(self, rng: random.Random, start_ms: int) -> None:
        self.rng = rng
        self.clock = _Clock(start_ms)
        self.lines: dict[str, list[Line]] = {t: [] for t in TOPICS[:3]}
        self.live: dict[str, dict[str, Line]] = {t: {} for t in TOPICS[:3]}
        self.deleted: dict[str, dict[str, Line]] = {t: {} for t in TOPICS[:3]}
        self.reinserted: dict[str, set[str]] = {t: set() for t in TOPICS[:3]}
        self.companies: dict[str, _Company] = {}
        self.used_emails: set[str] = set()
        self.used_company_names: set[str] = set()
        self.lsn = 24_023_128
        self.tx_id = 7_431
        self.next_id = {t: 1 for t in TOPICS[:3]}

    # -- envelope emission

    def emit(
        self,
        topic: str,
        op: str,
        key: str,
        before: Line | None,
        after: Line | None,
        commit_ms: int,
        snapshot: bool = False,
    ) -> None:
        table = topic.split(".", 1)[1]
        self.lsn += self.rng.randint(120, 4_000)
        if not snapshot:
            self.tx_id += 1
        ts_ms = commit_ms + self.rng.randint(5, _MAX_CONNECTOR_LAG_MS)
        key_field = KEYS[topic][0]
        envelope = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": ts_ms,
            "source": {
                "version": _DEBEZIUM_VERSION,
                "connector": "postgresql",
                "name": "crm",
                "db": "crm",
                "table": table,
                "ts_ms": commit_ms,
                "lsn": self.lsn,
                "txId": self.tx_id,
                "snapshot": snapshot,
            },
        }
        self.lines[topic].append({"key": {key_field: key}, "value": envelope})
        if op == "d":
            # Debezium's tombstone lets compaction drop the key; same key, null value.
            self.lines[topic].append({"key": {key_field: key}, "value": None})

    def _new_id(self, topic: str) -> str:
        number = self.next_id[topic]
        self.next_id[topic] += 1
        prefix = {"crm.accounts": "ACC", "crm.contacts": "CON", "crm.opportunities": "OPP"}[topic]
        return f"{prefix}-{number:05d}"

    # -- row builders

    def _company_name(self) -> str:
        for _ in range(1_000):
            name = f"{self.rng.choice(_COMPANY_STEMS)} {self.rng.choice(_COMPANY_KINDS)}"
            if name not in self.used_company_names:
                self.used_company_names.add(name)
                return name
        name = f"{self.rng.choice(_COMPANY_STEMS)} {len(self.used_company_names)}"
        self.used_company_names.add(name)
        return name

    def _phone(self, country: str) -> str | None:
        if self.rng.random() < 0.2:
            return None
        _, _, prefix, digits = _COUNTRIES[country]
        number = "".join(str(self.rng.randint(0, 9)) for _ in range(digits))
        return f"{prefix} {number[:3]} {number[3:]}"

    def _email(self, first: str, last: str, domain: str) -> str:
        local = f"{_ascii(first)}.{_ascii(last)}"
        candidate = f"{local}@{domain}"
        suffix = 2
        while candidate in self.used_emails:
            candidate = f"{local}{suffix}@{domain}"
            suffix += 1
        self.used_emails.add(candidate)
        return candidate

    def account_row(self, account_id: str, commit_ms: int) -> Line:
        name = self._company_name()
        country = self.rng.choices(list(_COUNTRIES), weights=_COUNTRY_WEIGHTS)[0]
        tld = _COUNTRIES[country][1]
        domain = f"{_ascii(name)}.{tld}"
        self.companies[account_id] = _Company(account_id, name, country, domain)
        tier = self.rng.choices(_TIERS, weights=(2, 4, 6))[0]
        revenue_scale = {"enterprise": 5e8, "mid_market": 5e7, "smb": 5e6}[tier]
        revenue = (
            None
            if self.rng.random() < 0.15
            else _money(round(self.rng.uniform(0.1, 1.0) * revenue_scale, 2))
        )
        return {
            "account_id": account_id,
            "name": name,
            "industry": None if self.rng.random() < 0.1 else self.rng.choice(_INDUSTRIES),
            "country": country,
            "annual_revenue": revenue,
            "tier": tier,
            "owner_email": (
                None
                if self.rng.random() < 0.1
                else f"{self.rng.choice(_SALES_REPS)}@{_SALES_DOMAIN}"
            ),
            "created_at": _iso(commit_ms),
            "updated_at": _iso(commit_ms),
        }

    def contact_row(self, contact_id: str, account_id: str, commit_ms: int) -> Line:
        company = self.companies[account_id]
        first, last = self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)
        return {
            "contact_id": contact_id,
            "account_id": account_id,
            "email": self._email(first, last, company.domain),
            "first_name": first,
            "last_name": last,
            "phone": self._phone(company.country),
            "updated_at": _iso(commit_ms),
            "marketing_opt_in": self.rng.random() < 0.4,
            "job_title": None if self.rng.random() < 0.25 else self.rng.choice(_JOB_TITLES),
        }

    def opportunity_row(
        self, opportunity_id: str, account_id: str, stage: str, commit_ms: int
    ) -> Line:
        company = self.companies[account_id]
        contacts = [
            c["contact_id"]
            for c in self.live["crm.contacts"].values()
            if c["account_id"] == account_id
        ]
        amount = Decimal(self.rng.randint(50, 5_000)) * 100 + Decimal(self.rng.randint(0, 99))
        close = datetime.fromtimestamp(commit_ms / 1000, UTC).date() + timedelta(
            days=self.rng.randint(20, 120)
        )
        return {
            "opportunity_id": opportunity_id,
            "account_id": account_id,
            "contact_id": self.rng.choice(contacts)
            if contacts and self.rng.random() < 0.85
            else None,
            "name": f"{company.name} — {self.rng.choice(_PRODUCTS)}",
            "stage": stage,
            "amount": _money(amount),
            "currency": _COUNTRIES[company.country][0],
            "close_date": None if stage == "prospecting" else close.isoformat(),
            "probability": _PROBABILITY[stage],
            "updated_at": _iso(commit_ms),
        }

    # -- operations

    def insert(self, topic: str, row: Line, commit_ms: int, snapshot: bool = False) -> None:
        key = row[KEYS[topic][0]]
        self.live[topic][key] = row
        self.emit(topic, "r" if snapshot else "c", key, None, row, commit_ms, snapshot)

    def update(self, topic: str, key: str, new: Line, commit_ms: int) -> None:
        old = self.live[topic][key]
        new["updated_at"] = _iso(commit_ms)
        self.live[topic][key] = new
        self.emit(topic, "u", key, old, new, commit_ms)

    def delete(self, topic: str, key: str, commit_ms: int) -> None:
        old = self.live[topic].pop(key)
        self.deleted[topic][key] = old
        self.emit(topic, "d", key, old, None, commit_ms)

    def tick(self) -> int:
        return self.clock.tick(self.rng, _MIN_STREAM_TICK_MS, 90_000)

    def create_account(self, snapshot: bool = False) -> bool:
        commit = self.clock.tick(self.rng, 1, 20) if snapshot else self.tick()
        self.insert(
            "crm.accounts", self.account_row(self._new_id("crm.accounts"), commit), commit, snapshot
        )
        return True

    def create_contact(self, snapshot: bool = False) -> bool:
        accounts = sorted(self.live["crm.accounts"])
        if not accounts:
            return False
        commit = self.clock.tick(self.rng, 1, 20) if snapshot else self.tick()
        row = self.contact_row(self._new_id("crm.contacts"), self.rng.choice(accounts), commit)
        self.insert("crm.contacts", row, commit, snapshot)
        return True

    def create_opportunity(self, snapshot: bool = False) -> bool:
        accounts = sorted(self.live["crm.accounts"])
        if not accounts:
            return False
        commit = self.clock.tick(self.rng, 1, 20) if snapshot else self.tick()
        stage = (
            self.rng.choices([*_STAGES, "closed_won", "closed_lost"], weights=(5, 4, 3, 2, 2, 2))[0]
            if snapshot
            else "prospecting"
        )
        row = self.opportunity_row(
            self._new_id("crm.opportunities"), self.rng.choice(accounts), stage, commit
        )
        self.insert("crm.opportunities", row, commit, snapshot)
        return True

    def _pick(self, topic: str, predicate: Callable[[Line], bool] | None = None) -> str | None:
        rows = self.live[topic]
        keys = sorted(k for k, row in rows.items() if predicate is None or predicate(row))
        return self.rng.choice(keys) if keys else None

    def account_tracked(self) -> bool:
        key = self._pick("crm.accounts")
        if key is None:
            return False
        new = dict(self.live["crm.accounts"][key])
        kind = self.rng.choice(("tier", "rename", "industry", "revenue"))
        if kind == "tier":
            new["tier"] = self.rng.choice([t for t in _TIERS if t != new["tier"]])
        elif kind == "rename":
            company = self.companies[key]
            suffix = self.rng.choice((" Group", " International", " Holdings"))
            if not new["name"].endswith(suffix):
                new["name"] = company.name = new["name"] + suffix
            else:
                new["tier"] = self.rng.choice([t for t in _TIERS if t != new["tier"]])
        elif kind == "industry":
            new["industry"] = self.rng.choice([i for i in _INDUSTRIES if i != new["industry"]])
        else:
            base = Decimal(new["annual_revenue"] or "1000000.00")
            growth = Decimal(str(round(self.rng.uniform(1.02, 1.3), 3)))
            new["annual_revenue"] = _money(base * growth)
        self.update("crm.accounts", key, new, self.tick())
        return True

    def account_untracked(self) -> bool:
        key = self._pick("crm.accounts")
        if key is None:
            return False
        new = dict(self.live["crm.accounts"][key])
        if self.rng.random() < 0.6:
            others = [r for r in _SALES_REPS if f"{r}@{_SALES_DOMAIN}" != new["owner_email"]]
            new["owner_email"] = f"{self.rng.choice(others)}@{_SALES_DOMAIN}"
        self.update("crm.accounts", key, new, self.tick())
        return True

    def contact_tracked(self) -> bool:
        key = self._pick("crm.contacts")
        if key is None:
            return False
        new = dict(self.live["crm.contacts"][key])
        company = self.companies[new["account_id"]]
        kind = self.rng.choices(
            ("last_name", "email", "move", "title", "opt_in"), weights=(2, 2, 3, 2, 2)
        )[0]
        if kind == "move":
            target = self._pick("crm.accounts", lambda a: a["account_id"] != new["account_id"])
            if target is None:
                kind = "title"
            else:
                new["account_id"] = target
                company = self.companies[target]
                new["email"] = self._email(new["first_name"], new["last_name"], company.domain)
        if kind == "last_name":
            new["last_name"] = self.rng.choice([n for n in _LAST_NAMES if n != new["last_name"]])
            new["email"] = self._email(new["first_name"], new["last_name"], company.domain)
        elif kind == "email":
            local = f"{_ascii(new['first_name'])[:1]}{_ascii(new['last_name'])}"
            candidate = f"{local}@{company.domain}"
            if candidate == new["email"] or candidate in self.used_emails:
                candidate = f"{local}.{self.rng.randint(10, 99)}@{company.domain}"
            self.used_emails.add(candidate)
            new["email"] = candidate
        elif kind == "title":
            new["job_title"] = self.rng.choice([t for t in _JOB_TITLES if t != new["job_title"]])
        elif kind == "opt_in":
            new["marketing_opt_in"] = not new["marketing_opt_in"]
        self.update("crm.contacts", key, new, self.tick())
        return True

    def contact_untracked(self) -> bool:
        key = self._pick("crm.contacts")
        if key is None:
            return False
        new = dict(self.live["crm.contacts"][key])
        if self.rng.random() < 0.7:
            phone = self._phone(self.companies[new["account_id"]].country)
            new["phone"] = phone if phone != new["phone"] else None
        self.update("crm.contacts", key, new, self.tick())
        return True

    def opportunity_advance(self) -> bool:
        key = self._pick("crm.opportunities", lambda r: r["stage"] in _STAGES)
        if key is None:
            return False
        new = dict(self.live["crm.opportunities"][key])
        commit = self.tick()
        stage = new["stage"]
        if self.rng.random() < 0.12:
            new["stage"] = "closed_lost"
        elif stage == "negotiation":
            new["stage"] = "closed_won" if self.rng.random() < 0.6 else "closed_lost"
        else:
            new["stage"] = _STAGES[_STAGES.index(stage) + 1]
        new["probability"] = _PROBABILITY[new["stage"]]
        if new["stage"] == "proposal" and self.rng.random() < 0.5:
            factor = Decimal(str(round(self.rng.uniform(0.85, 1.15), 3)))
            new["amount"] = _money(Decimal(new["amount"]) * factor)
        today = datetime.fromtimestamp(commit / 1000, UTC).date()
        if new["stage"] in ("closed_won", "closed_lost"):
            new["close_date"] = today.isoformat()
        elif new["close_date"] is None:
            new["close_date"] = (today + timedelta(days=self.rng.randint(20, 90))).isoformat()
        self.update("crm.opportunities", key, new, commit)
        return True

    def opportunity_untracked(self) -> bool:
        key = self._pick("crm.opportunities")
        if key is None:
            return False
        new = dict(self.live["crm.opportunities"][key])
        if new["stage"] in _STAGES and self.rng.random() < 0.7:
            low, high = max(1, new["probability"] - 10), min(99, new["probability"] + 10)
            choices = [p for p in range(low, high + 1, 5) if p != new["probability"]]
            new["probability"] = self.rng.choice(choices)
        self.update("crm.opportunities", key, new, self.tick())
        return True

    def delete_simple(self, topic: str) -> bool:
        key = self._pick(topic)
        if key is None:
            return False
        self.delete(topic, key, self.tick())
        return True

    def merge_account(self) -> bool:
        """Account merge: move its contacts and opportunities to another account, delete it."""
        if len(self.live["crm.accounts"]) < 2:
            return False
        loser = self._pick("crm.accounts")
        assert loser is not None
        survivor = self._pick("crm.accounts", lambda a: a["account_id"] != loser)
        assert survivor is not None
        domain = self.companies[survivor].domain
        for contact_id in sorted(self.live["crm.contacts"]):
            row = self.live["crm.contacts"][contact_id]
            if row["account_id"] == loser:
                new = dict(row, account_id=survivor)
                new["email"] = self._email(new["first_name"], new["last_name"], domain)
                self.update("crm.contacts", contact_id, new, self.tick())
        for opportunity_id in sorted(self.live["crm.opportunities"]):
            row = self.live["crm.opportunities"][opportunity_id]
            if row["account_id"] == loser:
                self.update(
                    "crm.opportunities", opportunity_id, dict(row, account_id=survivor), self.tick()
                )
        self.delete("crm.accounts", loser, self.tick())
        return True

    def reinsert(self, topic: str) -> bool:
        """Insert a deleted key again (a restored record), with a fresh row state."""
        candidates = sorted(k for k in self.deleted[topic] if k not in self.live[topic])
        if not candidates:
            return False
        key = self.rng.choice(candidates)
        old = self.deleted[topic].pop(key)
        commit = self.tick()
        if topic == "crm.contacts":
            account = (
                old["account_id"]
                if old["account_id"] in self.live["crm.accounts"]
                else (self._pick("crm.accounts"))
            )
            if account is None:
                self.deleted[topic][key] = old
                return False
            row = dict(old, account_id=account, updated_at=_iso(commit))
            if account != old["account_id"]:
                row["email"] = self._email(
                    row["first_name"], row["last_name"], self.companies[account].domain
                )
        elif topic == "crm.opportunities":
            if old["account_id"] not in self.live["crm.accounts"]:
                self.deleted[topic][key] = old
                return False
            row = dict(old, updated_at=_iso(commit))
        else:
            row = dict(old, created_at=_iso(commit), updated_at=_iso(commit))
        self.reinserted[topic].add(key)
        self.insert(topic, row, commit)
        return True


def _crm_lines(
    rng: random.Random, accounts: int, contacts: int, opportunities: int
) -> dict[str, list[Line]]:
    crm = _Crm(rng, _ms(BASE_TIME))
    snap_accounts = accounts - accounts // 5
    snap_contacts = contacts - (contacts * 3) // 10
    snap_opportunities = opportunities - (opportunities * 4) // 10
    for _ in range(snap_accounts):
        crm.create_account(snapshot=True)
    for _ in range(snap_contacts):
        crm.create_contact(snapshot=True)
    for _ in range(snap_opportunities):
        crm.create_opportunity(snapshot=True)
    # The change stream starts a while after the snapshot finished.
    crm.clock.tick(rng, 60_000, 600_000)

    plan: list[str] = []
    plan += ["account.create"] * (accounts - snap_accounts)
    plan += ["contact.create"] * (contacts - snap_contacts)
    plan += ["opportunity.create"] * (opportunities - snap_opportunities)
    plan += ["account.tracked"] * ((accounts * 3) // 5)
    plan += ["account.untracked"] * accounts
    plan += ["contact.tracked"] * ((contacts * 3) // 5)
    plan += ["contact.untracked"] * ((contacts * 4) // 5)
    plan += ["opportunity.advance"] * (opportunities * 2)
    plan += ["opportunity.untracked"] * ((opportunities * 4) // 5)
    contact_deletes = max(1, contacts // 25) if contacts else 0
    opportunity_deletes = max(1, opportunities // 40) if opportunities else 0
    plan += ["contact.delete"] * contact_deletes
    plan += ["opportunity.delete"] * opportunity_deletes
    plan += ["account.merge"] * (accounts // 25)
    rng.shuffle(plan)
    # Restores come late, after the deletes they undo had a chance to happen.
    plan += ["contact.reinsert"] * max(1 if contacts else 0, contact_deletes // 3)
    plan += ["opportunity.reinsert"] * (1 if opportunities else 0)

    actions: dict[str, Callable[[], bool]] = {
        "account.create": crm.create_account,
        "contact.create": crm.create_contact,
        "opportunity.create": crm.create_opportunity,
        "account.tracked": crm.account_tracked,
        "account.untracked": crm.account_untracked,
        "contact.tracked": crm.contact_tracked,
        "contact.untracked": crm.contact_untracked,
        "opportunity.advance": crm.opportunity_advance,
        "opportunity.untracked": crm.opportunity_untracked,
        "contact.delete": partial(crm.delete_simple, "crm.contacts"),
        "opportunity.delete": partial(crm.delete_simple, "crm.opportunities"),
        "account.merge": crm.merge_account,
        "contact.reinsert": partial(crm.reinsert, "crm.contacts"),
        "opportunity.reinsert": partial(crm.reinsert, "crm.opportunities"),
    }
    deferred: list[str] = []
    for action in plan:
        if not actions[action]():
            deferred.append(action)
    for action in deferred:  # e.g. a contact planned before any account existed
        actions[action]()
    return crm.lines


def _redeliver(rng: random.Random, lines: list[Line], count: int) -> int:
    """Re-deliver ``count`` earlier lines (exact copies, never tombstones) at later positions."""
    done = 0
    for _ in range(count):
        candidates = [i for i, line in enumerate(lines) if line.get("value") is not None]
        if not candidates:
            break
        index = rng.choice(candidates)
        position = rng.randint(index + 1, len(lines))
        lines.insert(position, copy.deepcopy(lines[index]))
        done += 1
    return done


# --------------------------------------------------------------------------- facts and FX


def _order_lines(
    rng: random.Random, count: int, accounts: list[Line], contacts: list[Line]
) -> list[Line]:
    clock = _Clock(_ms(BASE_TIME) + 3_600_000)
    open_orders: dict[str, Line] = {}
    lines: list[Line] = []
    number = 0
    by_account: dict[str, list[str]] = {}
    for contact in contacts:
        by_account.setdefault(contact["account_id"], []).append(contact["contact_id"])
    while len(lines) < count:
        event_ms = clock.tick(rng, 5_000, 600_000)
        if open_orders and rng.random() < 0.55:
            order_id = rng.choice(sorted(open_orders))
            order = dict(open_orders[order_id])
            order["status"] = rng.choice(_ORDER_FLOW[order["status"]])
            if order["status"] not in _ORDER_FLOW:
                del open_orders[order_id]
            else:
                open_orders[order_id] = order
        else:
            number += 1
            account = rng.choice(accounts)
            country = account["country"]
            people = by_account.get(account["account_id"], [])
            order = {
                "order_id": f"ORD-{number:06d}",
                "account_id": account["account_id"],
                "contact_id": rng.choice(people) if people and rng.random() < 0.9 else None,
                "status": "created",
                "amount": _money(Decimal(rng.randint(1_999, 2_500_000)) / 100),
                "currency": _COUNTRIES[country][0],
                "ordered_at": _iso(event_ms),
            }
            open_orders[order["order_id"]] = order
        value = {"event_id": _uuid(rng), **order, "event_ts": _iso(event_ms)}
        lines.append({"key": {"order_id": order["order_id"]}, "value": value})
    return lines


def _behavior_lines(rng: random.Random, count: int, contacts: list[Line]) -> list[Line]:
    clock = _Clock(_ms(BASE_TIME) + 1_800_000)
    lines: list[Line] = []
    sessions: dict[str, tuple[str, int]] = {}
    devices = ("desktop", "mobile", "tablet")
    sources = ("google", "newsletter", "linkedin", "direct", "partner")
    while len(lines) < count:
        event_ms = clock.tick(rng, 1_000, 120_000)
        contact_id = rng.choice(contacts)["contact_id"]
        session_id, session_end = sessions.get(contact_id, ("", 0))
        if event_ms > session_end:
            session_id = _uuid(rng)
        sessions[contact_id] = (session_id, event_ms + 30 * 60_000)
        event_type = rng.choices(_EVENT_TYPES, weights=_EVENT_WEIGHTS)[0]
        url = (
            None if event_type == "email_open" else f"https://www.acme.example{rng.choice(_PAGES)}"
        )
        properties = {"device": rng.choice(devices), "utm_source": rng.choice(sources)}
        if event_type == "click":
            properties["element"] = rng.choice(("cta-demo", "nav-pricing", "footer-docs"))
        if event_type == "email_open":
            properties["campaign"] = rng.choice(("jan-newsletter", "webinar-invite", "renewal"))
        value = {
            "event_id": _uuid(rng),
            "contact_id": contact_id,
            "session_id": session_id,
            "event_type": event_type,
            "url": url,
            "properties": properties,
            "occurred_at": _iso(event_ms),
        }
        lines.append({"key": {"contact_id": contact_id}, "value": value})
    return lines


def _fx_lines(rng: random.Random, days: int) -> list[Line]:
    lines: list[Line] = []
    rates = {pair: Decimal(start) for pair, start in _FX_START.items()}
    day: date = BASE_TIME.date()
    published = 0
    while published < days:
        if day.weekday() < 5:  # reference rates are published on business days
            effective_ms = _ms(datetime(day.year, day.month, day.day, 16, 0, tzinfo=UTC))
            for (base, quote), rate in sorted(rates.items()):
                step = Decimal(str(round(rng.gauss(0, 0.003), 6)))
                rate = (rate * (1 + step)).quantize(Decimal("0.00000001"))
                rates[(base, quote)] = rate
                value = {
                    "base_currency": base,
                    "quote_currency": quote,
                    "rate": str(rate),
                    "effective_at": _iso(effective_ms),
                    "provider": "ecb",
                }
                lines.append(
                    {"key": {"base_currency": base, "quote_currency": quote}, "value": value}
                )
            published += 1
        day += timedelta(days=1)
    return lines


# --------------------------------------------------------------------------- invalid lines


def _invalid_lines(
    rng: random.Random, lines: Mapping[str, list[Line]], registry: SchemaRegistry
) -> dict[str, list[InvalidLine]]:
    """Lines that ``cdc produce`` accepts but the consumer must quarantine.

    Per topic: one or two violations of ``schemas/contracts.yaml`` rules (valid Avro, so only
    the consumer can tell), then three payloads that are not readable Confluent Avro.
    """
    rule = QuarantineReason.RULE_VIOLATION.value
    out: dict[str, list[InvalidLine]] = {topic: [] for topic in TOPICS}

    def first_value(topic: str) -> Line:
        return next(line for line in lines[topic] if line.get("value") is not None)

    def envelope_with(topic: str, **changes: Any) -> Line:
        line = copy.deepcopy(first_value(topic))
        after = dict(line["value"]["after"], **changes)
        line["value"] = dict(line["value"], op="c", before=None, after=after)
        return line

    def flat_with(topic: str, **changes: Any) -> Line:
        line = copy.deepcopy(first_value(topic))
        line["value"] = dict(line["value"], **changes)
        return line

    violations: list[tuple[str, Line, str]] = [
        (
            "crm.accounts",
            envelope_with("crm.accounts", country="Germany"),
            "country is not an ISO-3166 alpha-2 code",
        ),
        (
            "crm.contacts",
            envelope_with("crm.contacts", email="maria.garcia(at)example"),
            "email does not match the contract's pattern",
        ),
        ("crm.contacts", envelope_with("crm.contacts", email=""), "email is empty"),
        (
            "crm.opportunities",
            envelope_with("crm.opportunities", stage="won_maybe"),
            "unknown stage",
        ),
        (
            "crm.opportunities",
            envelope_with("crm.opportunities", probability=150),
            "probability above 100",
        ),
        (
            "events.orders",
            flat_with("events.orders", event_id=_uuid(rng), currency="EURO"),
            "currency is not an ISO-4217 code",
        ),
        (
            "events.behavior",
            flat_with("events.behavior", event_id=_uuid(rng), event_type="hover"),
            "unknown event_type",
        ),
        (
            "ref.fx_rates",
            flat_with("ref.fx_rates", quote_currency="usd"),
            "quote currency is not an upper-case ISO-4217 code",
        ),
        ("ref.fx_rates", flat_with("ref.fx_rates", rate="0.00000000"), "rate is zero"),
    ]
    for topic, line, note in violations:
        out[topic].append(InvalidLine(line, rule, note))

    for topic in TOPICS:
        sample = first_value(topic)
        body = encode_datum(registry.latest(f"{topic}-value"), sample["value"])
        garbage = json.dumps(sample["value"], ensure_ascii=False).encode()[:64]
        unknown = b"\x00" + (9999).to_bytes(4, "big") + rng.randbytes(24)
        truncated = body[: 5 + (len(body) - 5) // 2]
        out[topic] += [
            InvalidLine(
                _raw(sample["key"], garbage),
                QuarantineReason.NOT_FRAMED.value,
                "JSON text where Confluent-framed Avro was expected",
            ),
            InvalidLine(
                _raw(sample["key"], unknown),
                QuarantineReason.UNKNOWN_SCHEMA_ID.value,
                "Confluent framing with schema id 9999, which the registry lacks",
            ),
            InvalidLine(
                _raw(sample["key"], truncated),
                QuarantineReason.DECODE_ERROR.value,
                "valid framing, then the first half of a real Avro body",
            ),
        ]
    return out


def _raw(key: Line, payload: bytes) -> Line:
    return {"key": key, "value_b64": base64.b64encode(payload).decode("ascii")}


# --------------------------------------------------------------------------- expectations


def _scd2_summary(
    topic: str, lines: list[Line], invalid: int, duplicates: int, reinserts: int
) -> TopicSummary:
    keys = KEYS[topic]
    untracked = set(UNTRACKED[topic])
    state: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}
    versions = deletes = tombstones = 0
    seen: set[str] = set()
    for line in lines:
        fingerprint = json.dumps(line, sort_keys=True)
        if fingerprint in seen:
            continue  # an exact re-delivery changes nothing
        seen.add(fingerprint)
        key = tuple(line["key"][k] for k in keys)
        value = line.get("value")
        if value is None:
            tombstones += 1
            continue
        row = value.get("after") if "op" in value else value
        if "op" in value and value["op"] == "d":
            deletes += 1
            state[key] = None
            continue
        assert row is not None
        tracked = tuple(v for c, v in row.items() if c not in untracked and c not in keys)
        if state.get(key) != tracked:
            versions += 1
        state[key] = tracked
    return TopicSummary(
        topic=topic,
        lines=len(lines),
        invalid=invalid,
        tombstones=tombstones,
        duplicates=duplicates,
        distinct_keys=len(state),
        deletes=deletes,
        reinserts=reinserts,
        versions=versions,
        current_rows=sum(1 for s in state.values() if s is not None),
    )


def _fact_summary(topic: str, lines: list[Line], invalid: int, duplicates: int) -> TopicSummary:
    keys = KEYS[topic]
    return TopicSummary(
        topic=topic,
        lines=len(lines),
        invalid=invalid,
        duplicates=duplicates,
        distinct_keys=len({tuple(line["key"][k] for k in keys) for line in lines}),
        distinct_event_ids=len({line["value"]["event_id"] for line in lines}),
    )


# --------------------------------------------------------------------------- public API


def generate(
    seed: int = 7,
    accounts: int = 50,
    contacts: int = 300,
    opportunities: int = 120,
    orders: int = 600,
    behavior: int = 1500,
    fx_days: int = 30,
    *,
    registry: SchemaRegistry | None = None,
) -> Dataset:
    """Generate the demo data set; the same arguments always give the same lines.

    Args:
        seed: seed of the one random generator everything draws from.
        accounts: accounts ever created (snapshot + inserts).
        contacts: contacts ever created.
        opportunities: opportunities ever created.
        orders: distinct order events (re-deliveries come on top).
        behavior: distinct behaviour events (re-deliveries come on top).
        fx_days: business days of FX rates.
        registry: a :class:`cdc.ingest.registry.base.SchemaRegistry` to encode the truncated-body
            invalid lines with; default: the repository's ``schemas/avro`` (read-only).

    Returns:
        The data set.

    Raises:
        ValueError: a count is negative, or entities need accounts/contacts that are absent.
    """
    counts = {
        "accounts": accounts,
        "contacts": contacts,
        "opportunities": opportunities,
        "orders": orders,
        "behavior": behavior,
        "fx_days": fx_days,
    }
    negative = sorted(name for name, value in counts.items() if value < 0)
    if negative:
        raise ValueError(f"counts must be >= 0: {', '.join(negative)}")
    if accounts < 1:
        raise ValueError("accounts must be >= 1 (contacts, opportunities and orders need one)")
    if contacts < 1:
        raise ValueError("contacts must be >= 1 (behaviour events and invalid lines need one)")
    if opportunities < 1 or orders < 1 or behavior < 1 or fx_days < 1:
        raise ValueError("opportunities, orders, behavior and fx_days must be >= 1")
    rng = random.Random(seed)
    lines = _crm_lines(rng, accounts, contacts, opportunities)
    account_rows = _last_rows(lines["crm.accounts"], "account_id")
    contact_rows = _last_rows(lines["crm.contacts"], "contact_id")
    lines["events.orders"] = _order_lines(rng, orders, account_rows, contact_rows)
    lines["events.behavior"] = _behavior_lines(rng, behavior, contact_rows)
    lines["ref.fx_rates"] = _fx_lines(rng, fx_days)
    duplicates = {
        "crm.accounts": _redeliver(rng, lines["crm.accounts"], max(1, accounts // 25)),
        "crm.contacts": _redeliver(rng, lines["crm.contacts"], max(2, contacts // 50)),
        "crm.opportunities": _redeliver(
            rng, lines["crm.opportunities"], max(1, opportunities // 40)
        ),
        "events.orders": _redeliver(rng, lines["events.orders"], max(2, orders // 50)),
        "events.behavior": _redeliver(rng, lines["events.behavior"], max(2, behavior // 50)),
        "ref.fx_rates": _redeliver(rng, lines["ref.fx_rates"], 1),
    }
    details = _invalid_lines(rng, lines, registry or _default_registry())
    ordered = {topic: lines[topic] for topic in TOPICS}
    reinserts = _reinserts(ordered)
    expected: dict[str, TopicSummary] = {}
    for topic in TOPICS:
        summary = (
            _scd2_summary(
                topic,
                ordered[topic],
                len(details[topic]),
                duplicates[topic],
                reinserts.get(topic, 0),
            )
            if topic in SCD2_TOPICS
            else _fact_summary(topic, ordered[topic], len(details[topic]), duplicates[topic])
        )
        reasons: dict[str, int] = {}
        for item in details[topic]:
            reasons[item.reason] = reasons.get(item.reason, 0) + 1
        expected[topic] = replace(summary, quarantine_reasons=reasons)
    return Dataset(
        lines=ordered,
        invalid={topic: [item.line for item in details[topic]] for topic in TOPICS},
        invalid_details=details,
        expected=expected,
        seed=seed,
        parameters=counts,
    )


def _last_rows(lines: list[Line], key_field: str) -> list[Line]:
    rows: dict[str, Line] = {}
    for line in lines:
        value = line.get("value")
        if value is not None and value.get("after") is not None:
            rows[line["key"][key_field]] = value["after"]
    return [rows[k] for k in sorted(rows)]


def _reinserts(lines: Mapping[str, list[Line]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for topic in TOPICS[:3]:
        deleted: set[str] = set()
        count = 0
        seen: set[str] = set()
        for line in lines[topic]:
            fingerprint = json.dumps(line, sort_keys=True)
            if fingerprint in seen or line.get("value") is None:
                continue
            seen.add(fingerprint)
            key = line["key"][KEYS[topic][0]]
            op = line["value"]["op"]
            if op == "d":
                deleted.add(key)
            elif op == "c" and key in deleted:
                deleted.discard(key)
                count += 1
        out[topic] = count
    return out


def _default_registry() -> SchemaRegistry:
    # The repository's registry of record (src/cdc_demo/data.py -> schemas/avro).
    return FileRegistry.load(Path(__file__).resolve().parents[2] / "schemas" / "avro")


def merged_lines(dataset: Dataset, topic: str) -> list[Line]:
    """``topic``'s valid lines with its invalid lines spread evenly among them.

    Poison messages arrive mid-stream in real life; spreading them (deterministically, no
    randomness) exercises a consumer that must keep going past them.

    Args:
        dataset: what :func:`generate` returned.
        topic: one of :data:`TOPICS`.

    Returns:
        All lines of the topic, in the order to produce them.
    """
    valid, invalid = dataset[topic], dataset.invalid.get(topic, [])
    merged: list[Line] = []
    step = len(valid) / (len(invalid) + 1)
    cuts = [round(step * (i + 1)) for i in range(len(invalid))]
    start = 0
    for cut, line in zip(cuts, invalid, strict=True):
        merged += valid[start:cut]
        merged.append(line)
        start = cut
    merged += valid[start:]
    return merged


def write_jsonl(
    dataset: Dataset, folder: str | Path, include_invalid: bool = True
) -> dict[str, Path]:
    """Write each topic's lines to ``<folder>/<topic>.jsonl`` (the folder is created).

    Args:
        dataset: what :func:`generate` returned.
        folder: destination folder.
        include_invalid: spread the invalid lines among the valid ones (see
            :func:`merged_lines`); otherwise write the valid lines only.

    Returns:
        Topic → the file written, ready for ``cdc produce --topic <topic> --file <file>``.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for topic in dataset:
        lines = merged_lines(dataset, topic) if include_invalid else dataset[topic]
        path = root / f"{topic}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        written[topic] = path
    return written
