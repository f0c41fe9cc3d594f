"""Deterministic dataset ids (digest 6.4 check vectors), key layout, manifests, covering sets."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from trace_core.datasets import ids
from trace_core.datasets.manifest import (
    MAX_MANIFEST_BYTES,
    Column,
    DatasetManifest,
    ManifestFile,
    parse_manifest,
)
from trace_core.datasets.registry import (
    VersionRecord,
    latest_covering,
    missing_ranges,
    visible_parts,
)
from trace_core.errors import InvalidPayload, ManifestInvalid

ORG = "00000000-0000-0000-0000-000000000001"
TX_UUID = uuid.UUID("6f8b4b60-1e53-51d1-807c-93fad2c5ac95")


def test_digest_check_vectors() -> None:
    assert ids.dataset_uuid(ORG, 143, "transactions") == TX_UUID
    assert ids.dataset_uuid(ORG, 143, "blocks") == uuid.UUID("0d9f0cf7-64ec-5863-990f-ec95ac577490")
    version = ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 143, 0, 5000)
    assert version == uuid.UUID("7cd990ce-fc2c-52be-8659-23aef369b203")


def test_ids_change_with_every_input() -> None:
    base = ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 143, 0, 5000)
    assert ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 143, 0, 5001) != base
    assert ids.dataset_version(TX_UUID, "cryo_ingest.logs:v1", 143, 0, 5000) != base
    assert ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 1, 0, 5000) != base
    assert ids.dataset_uuid(uuid.uuid4(), 143, "transactions") != TX_UUID


def test_config_hash_is_a_label_unless_options_are_set() -> None:
    assert ids.config_hash("logs") == "cryo_ingest.logs:v1"
    assert ids.config_hash("logs", {}) == "cryo_ingest.logs:v1"
    assert ids.config_hash("logs", {"hex": None}) == "cryo_ingest.logs:v1"
    hashed = ids.config_hash("logs", {"topic0": "0xdd", "chunk_size": 500})
    assert hashed.startswith("cryo_ingest.logs:v1:") and len(hashed.rsplit(":", 1)[1]) == 16
    # canonical JSON: key order does not matter, values do
    assert hashed == ids.config_hash("logs", {"chunk_size": 500, "topic0": "0xdd"})
    assert hashed != ids.config_hash("logs", {"chunk_size": 501, "topic0": "0xdd"})
    assert ids.dataset_name_from_config_hash(hashed) == "logs"
    assert ids.dataset_name_from_config_hash("cryo_ingest.geth_calls:v1") == "geth_calls"
    assert ids.dataset_name_from_config_hash("something else") is None


def test_key_layout() -> None:
    version = ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 143, 0, 5000)
    prefix = ids.version_prefix(143, TX_UUID, 0, 5000, version)
    assert prefix == f"cryo/143/{TX_UUID}/0_5000/{version}/"
    assert ids.manifest_key(prefix) == prefix + "_manifest.json"
    task = uuid.uuid4()
    assert ids.staging_prefix(task, 2) == f"staging/{task}/2/"


@pytest.mark.parametrize(
    ("chain_id", "key", "field"),
    [(0, "blocks", "chain_id"), (-1, "blocks", "chain_id"), (True, "blocks", "chain_id"),
     (1, "Blocks", "dataset_key"), (1, "a-b", "dataset_key"), (1, "", "dataset_key"),
     (1, "x" * 65, "dataset_key")],
)  # fmt: skip
def test_dataset_uuid_validates_inputs(chain_id: int, key: str, field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        ids.dataset_uuid(ORG, chain_id, key)
    assert info.value.fields["field"] == field


def test_dataset_version_validates_ranges() -> None:
    with pytest.raises(InvalidPayload, match="range_end"):
        ids.dataset_version(TX_UUID, "c", 1, 10, 10)
    with pytest.raises(InvalidPayload, match="range_start"):
        ids.dataset_version(TX_UUID, "c", 1, -1, 10)
    with pytest.raises(InvalidPayload, match="config_hash"):
        ids.dataset_version(TX_UUID, "", 1, 0, 10)


# --- manifest --------------------------------------------------------------------------------


def _manifest() -> DatasetManifest:
    version = ids.dataset_version(TX_UUID, "cryo_ingest.transactions:v1", 143, 0, 2000)
    prefix = ids.version_prefix(143, TX_UUID, 0, 2000, version)
    return DatasetManifest(
        dataset_uuid=TX_UUID,
        dataset_version=version,
        chain_id=143,
        dataset_key="transactions",
        range_start=0,
        range_end=2000,
        config_hash="cryo_ingest.transactions:v1",
        schema=(Column("block_number", "uint32"), Column("input", "large_binary")),
        files=(
            ManifestFile(prefix + "b.parquet", 20, "b" * 64, 7),
            ManifestFile(prefix + "a.parquet", 10, "a" * 64, 3),
        ),
    )


def test_manifest_round_trip_is_canonical() -> None:
    m = _manifest()
    data = m.to_json()
    parsed = parse_manifest(data, prefix=m.files[0].key.rsplit("/", 1)[0] + "/")
    assert parsed.to_json() == data
    obj = json.loads(data)
    assert obj["version"] == 1
    assert obj["parquet_keys"] == sorted(f.key for f in m.files)
    assert [f["key"] for f in obj["files"]] == obj["parquet_keys"]
    assert (parsed.row_count, parsed.total_bytes) == (10, 30)
    assert parsed.schema_hash == m.schema_hash and len(m.schema_hash) == 64


def _mutated(**changes: object) -> bytes:
    obj = json.loads(_manifest().to_json())
    obj.update(changes)
    return json.dumps(obj).encode()


def test_manifest_reader_is_strict() -> None:
    prefix = _manifest().files[0].key.rsplit("/", 1)[0] + "/"
    with pytest.raises(ManifestInvalid, match="unknown fields: extra"):
        parse_manifest(_mutated(extra=1))
    with pytest.raises(ManifestInvalid, match="version"):
        parse_manifest(_mutated(version=2))
    with pytest.raises(ManifestInvalid, match="parquet_keys"):
        parse_manifest(_mutated(parquet_keys=["cryo/x.parquet"]))
    with pytest.raises(ManifestInvalid, match="schema_hash"):
        parse_manifest(_mutated(schema_hash="0" * 64))
    with pytest.raises(ManifestInvalid, match="dataset_uuid"):
        parse_manifest(_mutated(dataset_uuid="not-a-uuid"))
    with pytest.raises(ManifestInvalid, match="outside the version prefix"):
        parse_manifest(_manifest().to_json(), prefix="cryo/other/")
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        parse_manifest(b"{nope")
    with pytest.raises(ManifestInvalid, match="larger than"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))
    bad_key = json.loads(_manifest().to_json())
    bad_key["files"][0]["key"] = prefix + "../../etc.parquet"
    bad_key["parquet_keys"] = sorted(f["key"] for f in bad_key["files"])
    with pytest.raises(ManifestInvalid, match="not a valid object key"):
        parse_manifest(json.dumps(bad_key).encode())


def test_manifest_reader_accepts_the_legacy_key_alias() -> None:
    obj = json.loads(_manifest().to_json())
    obj["parquet_objects"] = obj.pop("parquet_keys")
    assert parse_manifest(json.dumps(obj).encode()).parquet_keys == _manifest().parquet_keys


# --- covering sets ---------------------------------------------------------------------------


def _rec(start: int, end: int, age: int) -> VersionRecord:
    return VersionRecord(
        dataset_version=uuid.uuid4(), dataset_uuid=TX_UUID, org_id=uuid.UUID(ORG),
        dataset_key="transactions", chain_id=143, range_start=start, range_end=end,
        config_hash="c", schema_hash="s", storage_prefix="p/", manifest_key="p/_manifest.json",
        row_count=0, bytes=0, file_count=0, task_id=None, attempt=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=age),
    )  # fmt: skip


def test_latest_covering_prefers_newer_versions() -> None:
    a, b, c = _rec(0, 1000, 1), _rec(1000, 2000, 2), _rec(2000, 3000, 3)
    assert latest_covering([c, a, b]) == [a, b, c]
    compacted = _rec(0, 2000, 10)
    assert latest_covering([a, b, c, compacted]) == [compacted, c]
    older_wide = _rec(0, 3000, 0)
    assert latest_covering([older_wide, b]) == [older_wide, b]  # b hides only its own blocks


def test_visible_parts_serve_every_block_once_from_the_newest_version() -> None:
    older_wide, b = _rec(0, 3000, 0), _rec(1000, 2000, 2)
    parts = [(p.record, p.start, p.end, p.whole) for p in visible_parts([b, older_wide])]
    assert parts == [
        (older_wide, 0, 1000, False),
        (b, 1000, 2000, True),
        (older_wide, 2000, 3000, False),
    ]
    # a version that newer ones cover entirely serves nothing
    a, c, compacted = _rec(0, 1000, 1), _rec(1000, 3000, 3), _rec(0, 2000, 10)
    parts = [(p.record, p.start, p.end) for p in visible_parts([a, c, compacted])]
    assert parts == [(compacted, 0, 2000), (c, 2000, 3000)]


def test_missing_ranges() -> None:
    recs = [_rec(0, 1000, 1), _rec(2000, 2500, 1)]
    assert missing_ranges(recs, 0, 3000) == [(1000, 2000), (2500, 3000)]
    assert missing_ranges(recs, 0, 1000) == []
    assert missing_ranges([], 5, 9) == [(5, 9)]
