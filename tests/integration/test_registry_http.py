"""HttpRegistry against a real Confluent-compatible registry (Apicurio Registry, in memory).

The repo's subjects (``schemas/avro``) are registered through the Confluent API; the server
assigns its own ids. Every lookup must then give what the file registry of record gives.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from cdc.errors import SchemaNotFoundError
from cdc.ingest.contracts import QuarantineReason, TopicContract, load_contracts
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.registry import FileRegistry, HttpRegistry, RegisteredSchema, frame
from cdc.runtime.jvm import jars_dir
from tests.support.decoding import decode_messages
from tests.support.envelopes import contact_envelope, contact_row
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNKNOWN_ID = 999_999


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Apicurio Registry; fails (never skips) when its archive is not installed."""
    server = RegistryServer(jars_dir() / "registry", tmp_path_factory.mktemp("registry"))
    with server:
        yield server.url


@pytest.fixture(scope="module")
def file_registry(registry_path: Path) -> FileRegistry:
    return FileRegistry.load(registry_path)


def _versions(registry: FileRegistry) -> list[RegisteredSchema]:
    """Every subject version of the file registry, by subject then version.

    Not in the order of the file ids: the server numbers what it receives 1, 2, 3, ..., and
    ids that differ from the file's prove that every lookup uses the server's own.
    """
    return [
        registry.get(subject, version)
        for subject in registry.subjects()
        for version in range(1, registry.latest(subject).version + 1)
    ]


@pytest.fixture(scope="module")
def server_ids(registry_url: str, file_registry: FileRegistry) -> dict[int, int]:
    """File registry id -> the id the server assigned when the same version was registered."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry_url})
    return {
        known.schema_id: client.register_schema(
            known.subject, Schema(json.dumps(known.schema), "AVRO")
        )
        for known in _versions(file_registry)
    }


@pytest.fixture(scope="module")
def http_registry(registry_url: str, server_ids: dict[int, int]) -> HttpRegistry:
    return HttpRegistry(registry_url)


def assert_same_version(found: RegisteredSchema, known: RegisteredSchema, server_id: int) -> None:
    assert (found.subject, found.version, found.schema_id) == (
        known.subject,
        known.version,
        server_id,
    )
    # The server re-serialises what it stores (Avro's Schema.toString drops redundant
    # namespaces and shortens references), so the JSON text differs; the schema may not.
    assert found.parsed == known.parsed
    assert found.avro_type.name == known.avro_type.name


def test_every_id_the_server_assigned_resolves_like_the_file_registry(
    http_registry: HttpRegistry, file_registry: FileRegistry, server_ids: dict[int, int]
) -> None:
    assert len(set(server_ids.values())) == len(server_ids) == 16
    assert server_ids[15] != 15  # crm.contacts-value v3 (see _versions)
    for file_id, server_id in server_ids.items():
        assert_same_version(http_registry.by_id(server_id), file_registry.by_id(file_id), server_id)


def test_latest_and_get_match_the_file_registry(
    http_registry: HttpRegistry, file_registry: FileRegistry, server_ids: dict[int, int]
) -> None:
    assert http_registry.subjects() == file_registry.subjects()
    for subject in file_registry.subjects():
        latest = file_registry.latest(subject)
        assert_same_version(http_registry.latest(subject), latest, server_ids[latest.schema_id])
        for version in range(1, latest.version + 1):
            known = file_registry.get(subject, version)
            found = http_registry.get(subject, version)
            assert_same_version(found, known, server_ids[known.schema_id])
    contacts = http_registry.latest("crm.contacts-value")
    assert (contacts.version, contacts.schema_id) == (3, server_ids[15])


def encode(schema: RegisteredSchema, schema_id: int, datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return frame(schema_id, out.getvalue())


def contact(version: int) -> dict[str, Any]:
    """A contact row in the shape of ``crm.contacts-value`` version ``version``."""
    if version >= 2:
        return contact_row(updated_at=1_767_600_000_000, marketing_opt_in=True, job_title="CTO")
    return contact_row(updated_at=1_767_600_000_000)


def contact_messages(
    registry: FileRegistry, ids: dict[int, int]
) -> list[tuple[str, int, int, int, bytes, bytes]]:
    """Three crm.contacts records: values of v3 (the reader) and v1 (resolved), a bad id.

    Args:
        registry: the file registry whose schemas encode the records.
        ids: file registry id -> the id to write in the Confluent header.
    """
    key_schema = registry.latest("crm.contacts-key")
    key = encode(key_schema, ids[key_schema.schema_id], {"contact_id": "c1"})
    v1, v3 = registry.get("crm.contacts-value", 1), registry.get("crm.contacts-value", 3)
    values = [
        encode(v3, ids[15], contact_envelope("c", 0, None, contact(3))),
        encode(v1, ids[4], contact_envelope("u", 1, None, contact(1))),
        encode(v3, UNKNOWN_ID, contact_envelope("c", 2, None, contact(3))),
    ]
    return [("crm.contacts", 0, offset, 0, key, value) for offset, value in enumerate(values)]


@pytest.fixture(scope="module")
def contacts_contract(contracts_path: Path) -> TopicContract:
    return load_contracts(contracts_path)["crm.contacts"]


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_decoder_reads_records_framed_with_the_server_ids(
    http_registry: HttpRegistry,
    file_registry: FileRegistry,
    server_ids: dict[int, int],
    contacts_contract: TopicContract,
    columnar: bool,
) -> None:
    decoder = TopicDecoder(http_registry, contacts_contract, columnar=columnar)
    reference = TopicDecoder(file_registry, contacts_contract, columnar=columnar)
    assert decoder.arrow_schema == reference.arrow_schema

    batch = decode_messages(decoder, contact_messages(file_registry, server_ids))
    same_ids = {file_id: file_id for file_id in server_ids}
    expected = decode_messages(reference, contact_messages(file_registry, same_ids))

    rows = batch.to_pylist()
    assert [(row["key_schema_id"], row["value_schema_id"]) for row in rows] == [
        (server_ids[3], server_ids[15]),
        (server_ids[3], server_ids[4]),
        (server_ids[3], UNKNOWN_ID),
    ]
    unknown = f"value schema id {UNKNOWN_ID} is not in the registry"
    assert [(row["error_code"], row["error"]) for row in rows] == [
        (None, None),
        (None, None),
        (QuarantineReason.UNKNOWN_SCHEMA_ID, unknown),
    ]
    decoded = ["key", "value", "extra_fields", "error_code", "error"]
    assert batch.select(decoded) == expected.select(decoded)
    after = [row["value"] and row["value"]["after"] for row in rows]
    assert (after[0]["marketing_opt_in"], after[0]["job_title"]) == (True, "CTO")
    # v1 has neither field: the reader's defaults fill them in.
    assert (after[1]["marketing_opt_in"], after[1]["job_title"]) == (False, None)
    assert after[2] is None


def test_unknown_id_and_subject_raise_schema_not_found(
    http_registry: HttpRegistry, registry_url: str
) -> None:
    with pytest.raises(SchemaNotFoundError) as by_id:
        http_registry.by_id(UNKNOWN_ID)
    assert str(by_id.value) == f"schema id {UNKNOWN_ID} is not in the registry {registry_url}"
    with pytest.raises(SchemaNotFoundError) as latest:
        http_registry.latest("nope-value")
    assert str(latest.value) == f"subject 'nope-value' is not in the registry {registry_url}"
    with pytest.raises(SchemaNotFoundError) as get:
        http_registry.get("crm.contacts-value", 4)
    assert str(get.value) == f"crm.contacts-value v4 is not in the registry {registry_url}"
