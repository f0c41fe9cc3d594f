"""chain_sync YAML: strict loading and validation, every refusal naming file:line: field."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from trace_core.chain_sync.spec import CRYO_DATASETS, FixedTarget, FollowHead, missing_pool_vars
from trace_core.chain_sync.store import stream_config_hash, stream_dataset_uuid, yaml_hash
from trace_core.chain_sync.yamlload import MAX_YAML_BYTES, load_job_file, load_yaml, parse_job
from trace_core.errors import ConfigError, InvalidJobFile
from trace_core.settings import REPO_ROOT

SOURCE = "job.yaml"

# line numbers are part of the contract below: keep this text stable
BASE = """\
kind: chain_sync
name: demo
chain_id: 31337
mode:
  kind: fixed_target
  from_block: 0
  to_block: 2000
streams:
  blocks:
    cryo_dataset_name: blocks
    rpc_pool: demo
    chunk_size: 500
    max_inflight: 4
  logs:
    cryo_dataset_name: logs
    rpc_pool: demo
    chunk_size: 500
    max_inflight: 4
    cryo_options:
      inner_request_size: 10
"""

FOLLOW = """\
kind: chain_sync
name: follow
chain_id: 1
mode:
  kind: follow_head
  from_block: 100
  tail_lag: 5
  head_poll_interval_seconds: 5
  max_head_age_seconds: 30
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 10, max_inflight: 2}
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


SECRET_URL = "https://user:s3cret@rpc.example/v2/KEY123"

# (id, document, line, field or None, message fragment)
# fmt: off
MALFORMED: list[tuple[str, str, int | None, str | None, str]] = [
    ("unknown-top-field", BASE + "bogus: 1\n", 21, "bogus", "unknown field"),
    ("unknown-mode-field", edit(BASE, "  to_block: 2000\n", "  to_block: 2000\n  extra: 1\n"), 8, "mode.extra", "unknown field"),
    ("unknown-stream-field", edit(BASE, "    max_inflight: 4\n  logs:", "    max_inflight: 4\n    foo: 1\n  logs:"), 14, "streams.blocks.foo", "unknown field"),
    ("unknown-cryo-option", BASE + "      rpc: x\n", 21, "streams.logs.cryo_options.rpc", "unknown field"),
    ("string-for-int", edit(BASE, "chain_id: 31337", 'chain_id: "31337"'), 3, "chain_id", "valid integer"),
    ("bool-for-int", edit(BASE, "max_inflight: 4", "max_inflight: true"), 13, "streams.blocks.max_inflight", "valid integer"),
    ("float-for-int", edit(BASE, "chunk_size: 500", "chunk_size: 500.0"), 12, "streams.blocks.chunk_size", "valid integer"),
    ("int-for-string", edit(BASE, "name: demo", "name: 5"), 2, "name", "valid string"),
    ("list-for-int", edit(BASE, "inner_request_size: 10", "inner_request_size: [10]"), 20, "streams.logs.cryo_options.inner_request_size", "valid integer"),
    ("from-equals-to", edit(BASE, "from_block: 0", "from_block: 2000"), 7, "mode.to_block", "greater than from_block"),
    ("from-above-to", edit(BASE, "to_block: 2000", "to_block: 0"), 7, "mode.to_block", "greater than from_block"),
    ("negative-from", edit(BASE, "from_block: 0", "from_block: -1"), 6, "mode.from_block", "greater than or equal to 0"),
    ("chunk-zero", edit(BASE, "chunk_size: 500", "chunk_size: 0"), 12, "streams.blocks.chunk_size", "greater than 0"),
    ("chunk-negative", edit(BASE, "chunk_size: 500", "chunk_size: -5"), 12, "streams.blocks.chunk_size", "greater than 0"),
    ("inflight-zero", edit(BASE, "max_inflight: 4", "max_inflight: 0"), 13, "streams.blocks.max_inflight", "greater than 0"),
    ("chain-zero", edit(BASE, "chain_id: 31337", "chain_id: 0"), 3, "chain_id", "greater than 0"),
    ("unknown-cryo-dataset", edit(BASE, "cryo_dataset_name: logs", "cryo_dataset_name: lags"), 15, "streams.logs.cryo_dataset_name", "unknown cryo dataset 'lags'"),
    ("url-in-pool", edit(BASE, "rpc_pool: demo", f"rpc_pool: {SECRET_URL}"), 11, "streams.blocks.rpc_pool", "not a URL"),
    ("pool-not-slug", edit(BASE, "rpc_pool: demo", 'rpc_pool: "Demo Pool"'), 11, "streams.blocks.rpc_pool", "lowercase"),
    ("wrong-kind", edit(BASE, "kind: chain_sync", "kind: alert"), 1, "kind", "'chain_sync'"),
    ("missing-name", edit(BASE, "name: demo\n", ""), 1, "name", "field required"),
    ("missing-stream-field", edit(BASE, "    max_inflight: 4\n    cryo_options", "    cryo_options"), 14, "streams.logs.max_inflight", "field required"),
    ("missing-to-block", edit(BASE, "  to_block: 2000\n", ""), 4, "mode.to_block", "field required"),
    ("unknown-mode-kind", edit(BASE, "kind: fixed_target", "kind: fixed"), 4, "mode", "does not match"),
    ("missing-mode-kind", edit(BASE, "  kind: fixed_target\n", ""), 4, "mode", "field 'kind' required"),
    ("mode-not-mapping", edit(BASE, "mode:\n  kind: fixed_target\n  from_block: 0\n  to_block: 2000\n", "mode: fixed_target\n"), 4, "mode", "dictionary"),
    ("follow-missing-tail-lag", edit(FOLLOW, "  tail_lag: 5\n", ""), 4, "mode.tail_lag", "field required"),
    ("follow-age-below-poll", edit(FOLLOW, "max_head_age_seconds: 30", "max_head_age_seconds: 2"), 9, "mode.max_head_age_seconds", "at least head_poll_interval_seconds"),
    ("follow-poll-zero", edit(FOLLOW, "head_poll_interval_seconds: 5", "head_poll_interval_seconds: 0"), 8, "mode.head_poll_interval_seconds", "greater than 0"),
    ("dataset-key-not-slug", edit(BASE, "  blocks:\n", "  Blocks:\n"), 9, "streams.Blocks", "invalid key"),
    ("streams-empty", edit(BASE, BASE[BASE.index("streams:"):], "streams: {}\n"), 8, "streams", "at least 1"),
    ("streams-not-mapping", edit(BASE, BASE[BASE.index("streams:"):], "streams: [blocks]\n"), 8, "streams", "valid dictionary"),
    ("max-attempts-zero", BASE + "max_attempts: 0\n", 21, "max_attempts", "greater than 0"),
    ("finality-negative", BASE + "finality_depth: -1\n", 21, "finality_depth", "greater than or equal to 0"),
    ("hex-option", BASE + "      contract: 12ab\n", 21, "streams.logs.cryo_options.contract", "0x-prefixed"),
    ("epoch-below-chunk", BASE + "epoch_blocks: 400\n", 21, "epoch_blocks", "at least every stream's chunk_size (blocks, logs larger)"),
    ("epoch-zero", BASE + "epoch_blocks: 0\n", 21, "epoch_blocks", "greater than 0"),
    ("epoch-string", BASE + 'epoch_blocks: "100000"\n', 21, "epoch_blocks", "valid integer"),
    # refusals while loading
    ("tag-standard", edit(BASE, "chain_id: 31337", "chain_id: !!int 31337"), 3, None, "tags"),
    ("tag-python", edit(BASE, "name: demo", "name: !!python/name:os.system"), 2, None, "tags"),
    ("tag-local", edit(BASE, "name: demo", "name: !custom demo"), 2, None, "tags"),
    ("anchor", edit(BASE, "  blocks:\n", "  blocks: &s\n"), 9, None, "anchors"),
    ("alias-bomb", 'a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: [*b,*b]\n', 1, None, "anchors"),
    ("bare-alias", BASE + "extra: *nothing\n", 21, None, "aliases"),
    ("merge-key", edit(BASE, "  logs:\n", "  logs:\n    <<: {chunk_size: 1}\n"), 15, "streams.logs", "merge keys"),
    ("duplicate-top-key", BASE + "name: other\n", 21, "name", "duplicate key 'name'"),
    ("duplicate-nested-key", edit(BASE, "    chunk_size: 500\n", "    chunk_size: 500\n    chunk_size: 600\n"), 13, "streams.blocks.chunk_size", "duplicate key"),
    ("complex-key", BASE + "? [a, b]\n: 1\n", 21, None, "plain scalars"),
    ("top-level-list", "- kind\n- chain_sync\n", 1, None, "top level must be a mapping"),
    ("top-level-scalar", "chain_sync\n", 1, None, "top level must be a mapping"),
    ("empty-file", "", 1, None, "empty"),
    ("comments-only", "# nothing here\n", 1, None, "empty"),
    ("two-documents", BASE + "---\nkind: chain_sync\n", 21, None, "another document"),
    ("syntax-error", BASE + "  : : [\n", 21, None, "invalid YAML"),
    ("deep-nesting", "a: " + "[" * 100 + "]" * 100 + "\n", 1, None, "nesting deeper"),
]
# fmt: on


@pytest.mark.parametrize(
    "doc,line,field,fragment", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_documents_name_file_line_and_field(
    doc: str, line: int, field: str | None, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_job(doc, source=SOURCE)
    err = info.value
    prefix = f"{SOURCE}:{line}: " + (f"{field}: " if field else "")
    assert str(err).startswith(prefix), str(err)
    assert fragment in str(err)
    assert (err.file, err.line, err.field) == (SOURCE, line, field)
    assert "s3cret" not in str(err) and "KEY123" not in str(err)


def test_every_problem_is_reported_in_file_order() -> None:
    doc = edit(edit(BASE, "chunk_size: 500", "chunk_size: 0"), "chain_id: 31337", "chain_id: -1")
    with pytest.raises(InvalidJobFile) as info:
        parse_job(doc, source=SOURCE)
    assert [(p.line, p.field) for p in info.value.problems] == [
        (3, "chain_id"),
        (12, "streams.blocks.chunk_size"),
    ]
    assert str(info.value).splitlines()[1].startswith(f"{SOURCE}:12: streams.blocks.chunk_size: ")


def test_oversize_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = BASE + "#" + "x" * MAX_YAML_BYTES + "\n"
    with pytest.raises(ConfigError, match="limit") as info:
        parse_job(big, source=SOURCE)
    assert info.value.file == SOURCE
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(ConfigError, match="limit") as info:
        load_job_file(path)
    assert info.value.file == str(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_job_file(tmp_path / "nope.yaml")
    assert info.value.file == str(tmp_path / "nope.yaml")


def test_valid_document_parses_with_strict_types() -> None:
    spec, raw = parse_job(BASE, source=SOURCE)
    assert raw == BASE.encode()
    assert spec.name == "demo" and spec.chain_id == 31337
    assert spec.mode == FixedTarget(kind="fixed_target", from_block=0, to_block=2000)
    assert list(spec.streams) == ["blocks", "logs"]
    assert spec.streams["logs"].cryo_options.as_kwargs() == {"inner_request_size": 10}
    assert spec.streams["blocks"].cryo_options.as_kwargs() == {}
    assert spec.max_attempts is None and spec.finality_depth is None
    assert spec.pools == ["demo"]


def test_follow_head_and_optional_fields() -> None:
    spec, _ = parse_job(FOLLOW + "max_attempts: 5\nfinality_depth: 64\n", source=SOURCE)
    assert spec.mode == FollowHead(
        kind="follow_head",
        from_block=100,
        tail_lag=5,
        head_poll_interval_seconds=5,
        max_head_age_seconds=30,
    )
    assert (spec.max_attempts, spec.finality_depth) == (5, 64)


def test_yaml_1_1_integers_with_underscores_are_accepted() -> None:
    spec, _ = parse_job(edit(BASE, "to_block: 2000", "to_block: 46_000_000"), source=SOURCE)
    assert isinstance(spec.mode, FixedTarget) and spec.mode.to_block == 46_000_000


def test_missing_pools_are_an_error_only_when_required() -> None:
    spec, _ = parse_job(FOLLOW, source=SOURCE, environ={})
    assert missing_pool_vars(spec, {}) == {"standard": "TRACE_RPC_POOL_STANDARD_URL"}
    assert missing_pool_vars(spec, {"TRACE_RPC_POOL_STANDARD_URL": "http://x"}) == {}
    with pytest.raises(InvalidJobFile) as info:
        parse_job(FOLLOW, source=SOURCE, require_pools=True, environ={})
    assert str(info.value) == (
        f"{SOURCE}:11: streams.blocks.rpc_pool: rpc pool 'standard' has no URL: "
        "set TRACE_RPC_POOL_STANDARD_URL"
    )
    ok, _ = parse_job(
        FOLLOW,
        source=SOURCE,
        require_pools=True,
        environ={"TRACE_RPC_POOL_STANDARD_URL": "http://x"},
    )
    assert ok.name == "follow"


def test_loader_records_key_lines() -> None:
    doc = load_yaml(BASE, source=SOURCE)
    assert doc.line_of(("streams", "logs", "cryo_options", "inner_request_size")) == 20
    assert doc.line_of(("mode", "to_block")) == 7
    assert doc.line_of(("mode", "nonexistent")) == 4
    assert doc.line_of(()) == 1


@pytest.mark.parametrize(
    "name", ["chain_sync.demo.yaml", "chain_sync.monad_mainnet.yaml", "chain_sync.follow_head.yaml"]
)
def test_examples_are_valid(name: str) -> None:
    spec, _ = load_job_file(REPO_ROOT / "examples" / name)
    assert all(s.cryo_dataset_name in CRYO_DATASETS for s in spec.streams.values())


def test_monad_example_matches_the_reference() -> None:
    spec, _ = load_job_file(REPO_ROOT / "examples" / "chain_sync.monad_mainnet.yaml")
    assert (spec.name, spec.chain_id) == ("monad_mainnet_bootstrap", 143)
    assert spec.mode == FixedTarget(kind="fixed_target", from_block=0, to_block=46_000_000)
    assert {k: (s.cryo_dataset_name, s.rpc_pool) for k, s in spec.streams.items()} == {
        "blocks": ("blocks", "standard"),
        "logs": ("logs", "standard"),
        "transactions": ("transactions", "standard"),
        "geth_calls": ("geth_calls", "traces"),
        "geth_balance_diffs": ("geth_balance_diffs", "traces"),
    }
    assert {(s.chunk_size, s.max_inflight) for s in spec.streams.values()} == {(5000, 20)}


def test_deterministic_identifiers_match_the_reference_vectors() -> None:
    org = "00000000-0000-0000-0000-000000000001"
    assert stream_dataset_uuid(org, 143, "transactions") == uuid.UUID(
        "6f8b4b60-1e53-51d1-807c-93fad2c5ac95"
    )
    assert stream_dataset_uuid(org, 143, "blocks") == uuid.UUID(
        "0d9f0cf7-64ec-5863-990f-ec95ac577490"
    )
    assert stream_config_hash("transactions") == "cryo_ingest.transactions:v1"
    spec, _ = parse_job(BASE, source=SOURCE)
    with_options = stream_config_hash("logs", spec.streams["logs"].cryo_options.as_kwargs())
    assert with_options.startswith("cryo_ingest.logs:v1:") and with_options != stream_config_hash(
        "logs"
    )
    ns = uuid.UUID("41915e64-16d8-4c48-8f6c-e48a0f4b620a")
    assert yaml_hash(BASE.encode()) == str(uuid.uuid5(ns, BASE))
    assert yaml_hash(BASE.encode()) != yaml_hash((BASE + "\n").encode())


def test_epoch_blocks_default_keeps_a_monad_year_near_1000_partitions() -> None:
    spec, _ = parse_job(BASE, source=SOURCE)
    assert spec.epoch_blocks is None and spec.epoch_size == 100_000
    assert 104_000_000 // spec.epoch_size == 1040  # ~104M blocks a year at 300 ms
    big = edit(
        BASE,
        "chunk_size: 500\n    max_inflight: 4\n  logs",
        "chunk_size: 250000\n    max_inflight: 4\n  logs",
    )
    assert parse_job(big, source=SOURCE)[0].epoch_size == 250_000  # never below a chunk
    set_ = parse_job(BASE + "epoch_blocks: 500\n", source=SOURCE)[0]
    assert set_.epoch_size == 500
