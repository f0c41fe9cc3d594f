"""Each operator's one typed payload: bad fields are refused naming the field, and what the
planner stores parses back to the same values."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from trace_core.datasets import ids
from trace_core.errors import InvalidPayload
from trace_core.operators.cryo_payload import OPERATOR, CryoIngestTask
from trace_core.operators.parquet_compact import ParquetCompactPayload

ORG = "00000000-0000-0000-0000-000000000001"


def test_the_planners_payload_parses_back_unchanged() -> None:
    dataset_uuid = uuid.uuid4()
    stored = CryoIngestTask(
        chain_id=1,
        range_start=0,
        range_end=10,
        dataset_key="logs",
        job_name="j",
        dataset_uuid=dataset_uuid,
        cryo_dataset_name="logs",
        rpc_pool="main",
        config_hash="cryo_ingest.logs:v1",
        cryo_options={"topic0": "0xdd", "hex": None},
    ).to_json()
    assert stored["operator"] == OPERATOR and stored["dataset_uuid"] == str(dataset_uuid)
    assert stored["cryo_options"] == {"topic0": "0xdd", "hex": None}  # stored as planned
    task = CryoIngestTask.parse(stored, org_id=ORG)
    assert task.dataset_id == dataset_uuid and task.cryo_options == {"topic0": "0xdd"}
    assert task.version_config_hash == "cryo_ingest.logs:v1"


def test_an_older_payload_is_filled_in() -> None:
    """No dataset_uuid, no config_hash, options under their old key ``config``."""
    task = CryoIngestTask.parse(
        {
            "chain_id": 1,
            "range_start": 0,
            "range_end": 10,
            "dataset_key": "b",
            "cryo_dataset_name": "blocks",
            "config": {"hex": True},
        },
        org_id=ORG,
    )
    assert task.dataset_id == ids.dataset_uuid(ORG, 1, "b")
    assert task.cryo_options == {"hex": True}
    assert task.version_config_hash == ids.config_hash("blocks", {"hex": True})


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"range_start": 10, "range_end": 5}, "range_end"),
        ({"config_hash": ""}, "config_hash"),
        ({"cryo_options": ["hex"]}, "cryo_options"),
        ({"cryo_dataset_name": None}, "cryo_dataset_name"),
        ({"dataset_key": 7}, "dataset_key"),
    ],
)
def test_cryo_ingest_refuses_a_bad_field(bad: dict[str, Any], field: str) -> None:
    good = {"chain_id": 1, "range_start": 0, "range_end": 10, "dataset_key": "b"}
    good["cryo_dataset_name"] = "blocks"
    with pytest.raises(InvalidPayload) as info:
        CryoIngestTask.parse({**good, **bad}, org_id=ORG)
    assert info.value.fields["field"] == field


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"datasets": ["blocks", "receipts_x"]}, "datasets"),
        ({"dataset_key": "blocks", "range_start": 10, "range_end": 10}, "range_end"),
        ({"dataset_key": "blocks"}, "range_end"),
        ({"delete_hot": "maybe"}, "delete_hot"),
    ],
)
def test_parquet_compact_refuses_a_bad_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        ParquetCompactPayload.parse({"chain_id": 1, **bad})
    assert info.value.fields["field"] == field
    assert ParquetCompactPayload.parse({"chain_id": 1, "delete_hot": True}).delete_hot is True
