"""Registry of record, Confluent framing and BACKWARD compatibility."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.errors import CdcError, ConfigError, FramingError, SchemaNotFoundError
from cdc.ingest.registry import (
    FileRegistry,
    HttpRegistry,
    RegisteredSchema,
    SchemaRegistry,
    check_backward,
    check_path,
    check_registry,
    extra_fields,
    frame,
    unframe,
)

# --------------------------------------------------------------------------- helpers


def rec(name: str, fields: list[dict[str, Any]], namespace: str = "t") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def fld(name: str, typ: Any, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": typ, **kw}


def copy_registry(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def add_version(root: Path, subject: str, schema: dict[str, Any], schema_id: int) -> Path:
    index = json.loads((root / "index.json").read_text())
    versions = index["subjects"].setdefault(subject, [])
    version = len(versions) + 1
    versions.append({"version": version, "id": schema_id})
    (root / subject).mkdir(exist_ok=True)
    path = root / subject / f"v{version}.avsc"
    path.write_text(json.dumps(schema))
    (root / "index.json").write_text(json.dumps(index))
    return path


def contacts_schema(registry_path: Path, version: int) -> dict[str, Any]:
    text = (registry_path / "crm.contacts-value" / f"v{version}.avsc").read_text()
    return dict(json.loads(text))


def row_fields(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    return list(envelope["fields"][0]["type"][1]["fields"])


# --------------------------------------------------------------------------- registry


def test_registry_of_record_loads_with_stable_ids(registry_path: Path) -> None:
    registry = FileRegistry.load(registry_path)
    topics = ["crm.accounts", "crm.contacts", "crm.opportunities"]
    topics += ["events.behavior", "events.orders", "ref.fx_rates"]
    assert registry.subjects() == sorted(f"{t}-{s}" for t in topics for s in ("key", "value"))
    latest = registry.latest("crm.contacts-value")
    assert (latest.subject, latest.version, latest.schema_id) == ("crm.contacts-value", 3, 15)
    assert registry.get("crm.contacts-value", 1).schema_id == 4
    assert registry.by_id(4).label == "crm.contacts-value v1"
    assert latest.parsed["name"] == "com.acme.crm.contacts.Envelope"
    assert "__fastavro_parsed" in latest.parsed


def test_every_schema_in_the_index_is_self_contained_and_compatible(registry_path: Path) -> None:
    assert check_path(registry_path) == []
    assert check_registry(FileRegistry.load(registry_path)) == []


def test_lookups_fail_with_clear_messages(registry_path: Path) -> None:
    registry = FileRegistry.load(registry_path)
    with pytest.raises(SchemaNotFoundError, match=r"^schema id 999 is not in the registry "):
        registry.by_id(999)
    with pytest.raises(SchemaNotFoundError, match=r"^subject 'nope-value' is not in the registry"):
        registry.latest("nope-value")
    with pytest.raises(SchemaNotFoundError) as exc:
        registry.get("crm.contacts-value", 4)
    assert str(exc.value) == "crm.contacts-value has no version 4 (versions: 1..3)"


def test_registry_pickles_without_needing_its_folder(registry_path: Path, tmp_path: Path) -> None:
    root = copy_registry(registry_path, tmp_path / "avro")
    registry = FileRegistry.load(root)
    registry.by_id(4)  # warm a cache: it must not bloat or break the pickle
    blob = pickle.dumps(registry)
    shutil.rmtree(root)
    rebuilt = pickle.loads(blob)
    assert len(blob) < 32_000
    assert rebuilt.latest("crm.contacts-value").schema_id == 15
    assert rebuilt.by_id(4).parsed == registry.by_id(4).parsed


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda root: (root / "crm.contacts-value" / "v2.avsc").unlink(),
            "{root}/index.json lists crm.contacts-value v2 (id 13) but "
            "{root}/crm.contacts-value/v2.avsc does not exist",
        ),
        (
            lambda root: _edit_index(
                root, lambda ix: ix["subjects"]["crm.contacts-key"][0].update(id=4)
            ),
            "{root}/index.json: schema id 4 is assigned to both crm.contacts-key v1 and "
            "crm.contacts-value v1",
        ),
        (
            lambda root: _edit_index(
                root, lambda ix: ix["subjects"]["crm.contacts-value"][1].update(version=3)
            ),
            "{root}/index.json: crm.contacts-value entry 2: versions must run 1, 2, 3, ... in "
            "order; expected 2, found 3",
        ),
        (
            lambda root: _edit_index(root, lambda ix: ix.update(version=1)),
            "{root}/index.json: unknown key(s) version (valid keys: subjects)",
        ),
        (
            lambda root: (root / "crm.contacts-key" / "v2.avsc").write_text("{}"),
            "{root}/crm.contacts-key/v2.avsc is not listed in {root}/index.json",
        ),
        (
            lambda root: (root / "crm.contacts-key" / "v1.avsc").write_text("{not json"),
            "{root}/crm.contacts-key/v1.avsc: cannot read JSON: Expecting property name "
            "enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (
            lambda root: (root / "crm.contacts-key" / "v1.avsc").write_text(
                json.dumps(rec("Key", [fld("id", "strin")]))
            ),
            "{root}/crm.contacts-key/v1.avsc: invalid Avro schema: UnknownType: t.strin",
        ),
    ],
    ids=["missing-file", "duplicate-id", "gap", "unknown-key", "orphan", "bad-json", "bad-avro"],
)
def test_index_problems_name_the_file(
    registry_path: Path, tmp_path: Path, mutate: Any, expected: str
) -> None:
    root = copy_registry(registry_path, tmp_path / "avro")
    mutate(root)
    message = expected.format(root=root)
    assert check_path(root) == [message]
    with pytest.raises(ConfigError) as exc:
        FileRegistry.load(root)
    assert str(exc.value) == f"invalid schema registry {root}: {message}"


def _edit_index(root: Path, edit: Any) -> None:
    index = json.loads((root / "index.json").read_text())
    edit(index)
    (root / "index.json").write_text(json.dumps(index))


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registry folder .*/nowhere does not exist$"):
        FileRegistry.load(tmp_path / "nowhere")


# --------------------------------------------------------------------------- framing


def test_frame_layout() -> None:
    assert frame(13, b"\x02ab") == b"\x00\x00\x00\x00\x0d\x02ab"
    assert frame(2**31 - 1, b"") == b"\x00\x7f\xff\xff\xff"
    schema_id, body = unframe(b"\x00\x00\x00\x01\x00xyz")
    assert (schema_id, bytes(body)) == (256, b"xyz")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short for the Confluent wire format: 0 bytes, need at least 5"),
        (b"\x00", "too short for the Confluent wire format: 1 byte, need at least 5"),
        (b"\x00\x00\x00\x01", "too short for the Confluent wire format: 4 bytes, need at least 5"),
        (b'{"a": 1}', "bad magic byte 123 (expected 0)"),
        (b"\x01\x00\x00\x00\x01", "bad magic byte 1 (expected 0)"),
        # The id is signed, as Confluent's Java clients read it: the top bit makes it negative.
        (b"\x00\xff\xff\xff\xff", "negative schema id -1 (a registry assigns 0..2147483647)"),
        (
            b"\x00\x80\x00\x00\x0fxyz",
            "negative schema id -2147483633 (a registry assigns 0..2147483647)",
        ),
    ],
)
def test_unframe_rejects_non_confluent_bytes(data: bytes, message: str) -> None:
    with pytest.raises(FramingError) as exc:
        unframe(data)
    assert str(exc.value) == message


def test_frame_rejects_ids_outside_java_int() -> None:
    with pytest.raises(FramingError, match=r"^schema id -1 is outside 0\.\.2147483647$"):
        frame(-1, b"")
    with pytest.raises(FramingError, match=r"^schema id 2147483648 is outside"):
        frame(2**31, b"")


@given(schema_id=st.integers(min_value=0, max_value=2**31 - 1), body=st.binary(max_size=512))
def test_framing_round_trip(schema_id: int, body: bytes) -> None:
    framed = frame(schema_id, body)
    assert len(framed) == len(body) + 5
    got_id, got_body = unframe(framed)
    assert got_id == schema_id
    assert bytes(got_body) == body


# --------------------------------------------------------------------------- compatibility

BASE = rec(
    "Row",
    [
        fld("id", "string"),
        fld("n", "int"),
        fld("opt", ["null", "string"], default=None),
        fld("kind", {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}),
        fld("tags", {"type": "array", "items": "string"}),
        fld("attrs", {"type": "map", "values": "int"}),
        fld("ts", {"type": "long", "logicalType": "timestamp-millis"}),
        fld("amount", {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}),
    ],
)


def evolve(add: tuple[dict[str, Any], ...] = (), **types: Any) -> dict[str, Any]:
    """BASE with field types replaced (name=type), removed (name=None) and fields added."""
    schema = copy.deepcopy(BASE)
    fields = []
    for f in schema["fields"]:
        if f["name"] in types:
            if types[f["name"]] is None:
                continue
            f = fld(f["name"], types[f["name"]])
        fields.append(f)
    schema["fields"] = fields + list(add)
    return schema


COMPATIBLE = {
    "identical": evolve(),
    "field removed": evolve(opt=None),
    "field added with default": evolve(add=(fld("extra", "boolean", default=False),)),
    "nullable field added": evolve(add=(fld("extra", ["null", "string"], default=None),)),
    "int promoted to long": evolve(n="long"),
    "int promoted to double": evolve(n="double"),
    "string read as bytes": evolve(id="bytes"),
    "made nullable": evolve(id=["null", "string"]),
    "union widened": evolve(opt=["null", "string", "int"]),
    "enum symbol added": evolve(kind={"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}),
    "enum symbol dropped with default": evolve(
        kind={"type": "enum", "name": "Kind", "symbols": ["A", "Z"], "default": "Z"}
    ),
    "array items promoted": evolve(tags={"type": "array", "items": "bytes"}),
    "map values promoted": evolve(attrs={"type": "map", "values": "long"}),
    "field renamed with alias": evolve(id=None, add=(fld("key", "string", aliases=["id"]),)),
}


@pytest.mark.parametrize("new", list(COMPATIBLE.values()), ids=list(COMPATIBLE))
def test_compatible_changes(new: dict[str, Any]) -> None:
    assert check_backward(new, BASE) == []


BREAKING = {
    "type change": (evolve(id="int"), "field 'value.id' changed type string -> int"),
    "long to int": (evolve(ts="int"), "field 'value.ts' changed type timestamp-millis -> int"),
    "added without default": (
        evolve(add=(fld("extra", "string"),)),
        "field 'value.extra' was added without a default",
    ),
    "union narrowed": (
        evolve(opt="string"),
        "field 'value.opt': old union branch null is not readable by string",
    ),
    "enum symbol dropped": (
        evolve(kind={"type": "enum", "name": "Kind", "symbols": ["A"]}),
        "field 'value.kind': enum t.Kind dropped symbols without a default: B",
    ),
    "enum renamed": (
        evolve(kind={"type": "enum", "name": "Sort", "symbols": ["A", "B"]}),
        "field 'value.kind' changed type enum t.Kind -> enum t.Sort",
    ),
    "array items changed": (
        evolve(tags={"type": "array", "items": "int"}),
        "field 'value.tags[]' changed type string -> int",
    ),
    "map values narrowed": (
        evolve(attrs={"type": "map", "values": "boolean"}),
        "field 'value.attrs{}' changed type int -> boolean",
    ),
    "logical type dropped": (
        evolve(ts="long"),
        "field 'value.ts' changed type timestamp-millis -> long",
    ),
    "decimal scale changed": (
        evolve(amount={"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4}),
        "field 'value.amount' changed type decimal(18,2) -> decimal(18,4)",
    ),
}


@pytest.mark.parametrize(("new", "message"), list(BREAKING.values()), ids=list(BREAKING))
def test_breaking_changes(new: dict[str, Any], message: str) -> None:
    assert check_backward(new, BASE) == [message]


def test_promotions_only_widen() -> None:
    assert check_backward(BASE, evolve(n="float")) == ["field 'value.n' changed type float -> int"]
    assert check_backward(BASE, evolve(n="long"), root="key") == [
        "field 'key.n' changed type long -> int"
    ]


def test_every_break_is_reported() -> None:
    new = evolve(id="int", add=(fld("extra", "string"),))
    assert check_backward(new, BASE) == [
        "field 'value.id' changed type string -> int",
        "field 'value.extra' was added without a default",
    ]


def test_record_rename_breaks_unless_aliased() -> None:
    renamed = {**BASE, "name": "Line"}
    assert check_backward(renamed, BASE) == [
        "field 'value' changed type record t.Row -> record t.Line"
    ]
    assert check_backward({**renamed, "aliases": ["Row"]}, BASE) == []


def test_nested_records_and_recursive_types() -> None:
    node = rec("Node", [fld("v", "int"), fld("next", ["null", "Node"], default=None)])
    assert check_backward(node, node) == []
    changed = rec("Node", [fld("v", "string"), fld("next", ["null", "Node"], default=None)])
    assert check_backward(changed, node) == ["field 'value.v' changed type int -> string"]


def test_envelope_break_names_the_path_and_the_version(registry_path: Path, tmp_path: Path) -> None:
    root = copy_registry(registry_path, tmp_path / "avro")
    v4 = contacts_schema(registry_path, 3)
    for f in row_fields(v4):
        if f["name"] == "email":
            f["type"] = "int"
    add_version(root, "crm.contacts-value", v4, 99)
    assert check_path(root) == [
        "crm.contacts-value v4: field 'value.before.email' changed type string -> int",
        "crm.contacts-value v4: field 'value.after.email' changed type string -> int",
    ]


def test_contacts_v2_is_backward_compatible_and_v1_reader_sees_extras(registry_path: Path) -> None:
    v1, v2 = contacts_schema(registry_path, 1), contacts_schema(registry_path, 2)
    assert check_backward(v2, v1) == []
    assert extra_fields(v1, v2) == [
        "value.before.marketing_opt_in",
        "value.before.job_title",
        "value.after.marketing_opt_in",
        "value.after.job_title",
    ]
    assert extra_fields(v2, v1) == []


class DictRegistry:
    """A minimal in-memory SchemaRegistry, as an HTTP registry would behave."""

    def __init__(self, schemas: list[RegisteredSchema]) -> None:
        self._schemas = schemas

    def by_id(self, schema_id: int) -> RegisteredSchema:
        return next(s for s in self._schemas if s.schema_id == schema_id)

    def latest(self, subject: str) -> RegisteredSchema:
        return max((s for s in self._schemas if s.subject == subject), key=lambda s: s.version)

    def get(self, subject: str, version: int) -> RegisteredSchema:
        found = [s for s in self._schemas if (s.subject, s.version) == (subject, version)]
        if not found:
            raise SchemaNotFoundError(f"{subject} has no version {version}")
        return found[0]

    def subjects(self) -> list[str]:
        return sorted({s.subject for s in self._schemas})


def test_check_registry_on_any_registry() -> None:
    registry = DictRegistry(
        [
            RegisteredSchema("a-value", 1, 1, BASE),
            RegisteredSchema("a-value", 2, 2, evolve(id="int")),
            RegisteredSchema("b-key", 1, 2, BASE),
            RegisteredSchema("c-value", 2, 5, BASE),
        ]
    )
    assert isinstance(registry, SchemaRegistry)
    assert check_registry(registry) == [
        "a-value v2: field 'value.id' changed type string -> int",
        "b-key v1: schema id 2 is also used by a-value v2",
        "c-value v1: c-value has no version 1",
    ]


# --------------------------------------------------------------------------- HTTP registry


class FakeHttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.http_status_code = status


class FakeSchemaRegistryClient:
    """The subset of confluent_kafka's SchemaRegistryClient that HttpRegistry calls."""

    def __init__(self, versions: dict[str, list[tuple[int, dict[str, Any]]]]) -> None:
        self.versions = versions
        self.calls = 0

    def _found(self, subject: str, version: int) -> Any:
        schema_id, schema = self.versions[subject][version - 1]
        return SimpleNamespace(
            subject=subject,
            version=version,
            schema_id=schema_id,
            schema=SimpleNamespace(schema_str=json.dumps(schema)),
        )

    def get_schema(self, schema_id: int) -> Any:
        self.calls += 1
        for subject, versions in self.versions.items():
            for version, (sid, _) in enumerate(versions, start=1):
                if sid == schema_id:
                    return self._found(subject, version).schema
        raise FakeHttpError(404)

    def get_schema_versions(self, schema_id: int) -> list[Any]:
        return [
            SimpleNamespace(subject=subject, version=version)
            for subject, versions in self.versions.items()
            for version, (sid, _) in enumerate(versions, start=1)
            if sid == schema_id
        ]

    def get_latest_version(self, subject: str) -> Any:
        if subject not in self.versions:
            raise FakeHttpError(404)
        return self._found(subject, len(self.versions[subject]))

    def get_version(self, subject: str, version: int) -> Any:
        if subject not in self.versions or not 1 <= version <= len(self.versions[subject]):
            raise FakeHttpError(404)
        return self._found(subject, version)

    def get_subjects(self) -> list[str]:
        raise FakeHttpError(503)


def test_http_registry_adapts_the_confluent_client() -> None:
    fake = FakeSchemaRegistryClient({"a-value": [(21, BASE), (34, evolve(opt=None))]})
    registry = HttpRegistry("http://registry:8081", {"basic.auth.user.info": "u:p"}, client=fake)
    assert isinstance(registry, SchemaRegistry)
    assert registry.by_id(21).label == "a-value v1"
    assert registry.by_id(21) is registry.by_id(21)
    assert fake.calls == 1  # cached per id
    assert (registry.latest("a-value").version, registry.latest("a-value").schema_id) == (2, 34)
    assert registry.get("a-value", 1).schema == BASE
    with pytest.raises(SchemaNotFoundError) as exc:
        registry.by_id(99)
    assert str(exc.value) == "schema id 99 is not in the registry http://registry:8081"
    with pytest.raises(SchemaNotFoundError, match=r"^subject 'b-value' is not in the registry"):
        registry.latest("b-value")
    # An outage is not "not found": the decoder must fail, not quarantine.
    with pytest.raises(CdcError) as outage:
        registry.subjects()
    assert not isinstance(outage.value, SchemaNotFoundError)
    assert str(outage.value) == (
        "schema registry http://registry:8081 failed to return the subject list: HTTP 503"
    )
    assert "u:p" not in repr(registry)


def test_http_registry_never_shows_a_credential() -> None:
    from cdc.errors import ConfigError

    fake = FakeSchemaRegistryClient({})
    registry = HttpRegistry("https://cdc:S3NT1NEL@registry:8081/sr", client=fake)
    with pytest.raises(SchemaNotFoundError) as missing:
        registry.by_id(99)
    assert str(missing.value) == "schema id 99 is not in the registry https://registry:8081/sr"
    assert "S3NT1NEL" not in repr(registry)
    assert repr(HttpRegistry("http://cdc:S3NT1NEL@[::1:8081")) == "HttpRegistry('<invalid URL>')"
    # The client refuses a malformed setting in words that quote it: not repeated.
    refused = HttpRegistry("http://registry:8081", {"basic.auth.user.info": "S3NT1NEL"})
    with pytest.raises(ConfigError) as bad:
        refused.subjects()
    assert str(bad.value) == (
        "registry: the HTTP client refuses registry.url http://registry:8081 or a"
        " registry.client setting (ValueError; values not shown)"
    )


def test_the_decoder_spec_carries_the_registry_credentials_resolved_and_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cdc.config.settings import load_settings
    from cdc.pipeline.kafka_source import DecoderSpec
    from tests.support.paths import REPO_ROOT

    monkeypatch.setenv("TEST_REGISTRY_URL", "https://cdc:url-S3NT1NEL@registry:8081")
    monkeypatch.setenv("TEST_REGISTRY_AUTH", "cdc:auth-S3NT1NEL")
    settings = load_settings(
        "local",
        [
            "registry.url=env:TEST_REGISTRY_URL",
            "registry.client.basic.auth.user.info=env:TEST_REGISTRY_AUTH",
        ],
        config_dir=REPO_ROOT / "config",
    )
    spec = DecoderSpec.from_settings(settings)
    assert spec.registry_url == "https://cdc:url-S3NT1NEL@registry:8081"
    assert spec.registry_client == (("basic.auth.user.info", "cdc:auth-S3NT1NEL"),)
    assert spec.registry_path is None
    assert "S3NT1NEL" not in repr(spec) and "S3NT1NEL" not in repr(settings)
