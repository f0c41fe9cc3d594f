"""Buffered sinks end to end on real Postgres (pgqueue) and moto's SQS: stage -> fenced publish
-> outbox -> buffer queue -> sink -> data.alert_events, plus dead letters and ``trace-lite dlq``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic_core import to_json

from trace_core import outbox
from trace_core.cli.main import cli
from trace_core.errors import InvalidBatch, StaleAttempt, StaleReceipt
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.sinks.consumer import SinkReport, parse_pointer, sink_once, write_rows
from trace_core.sinks.publish import BatchRef, batch_key, buffer_message, publish_batch, stage_batch
from trace_core.sinks.schemas import parse_jsonl
from trace_core.tasks import claim, complete_success, create_task
from trace_core.tasks.lifecycle import Lease

EVENT_TIME = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def jsonl(*rows: Mapping[str, Any]) -> bytes:
    return b"".join(to_json(r) + b"\n" for r in rows)


def row(n: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dedupe_key": f"big_transfer:1:0xblock{n}:0xtx{n}",
        "alert_name": "big_transfer",
        "severity": "warning",
        "chain_id": 1,
        "block_number": n,
        "block_hash": f"0xblock{n}",
        "tx_hash": f"0xtx{n}",
        "event_time": EVENT_TIME,
        "payload": {"value_wei": str(10**21 + n), "n": n},
    }
    base.update(changes)
    return base


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(
        settings.model_copy(update={"max_receive_count": 3, "sink_retry_delay_seconds": 0.0})
    )
    yield runtime
    runtime.close()


def new_lease(rt: Runtime) -> Lease:
    task_id = uuid.uuid4()
    with rt.state() as conn, conn.transaction():
        create_task(conn, task_id=task_id, operator="alert_evaluate", payload={}, max_attempts=3)
        return claim(conn, task_id, lease_seconds=30)


def publish_rows(rt: Runtime, rows: list[dict[str, Any]], lease: Lease | None = None) -> BatchRef:
    """An operator's path: stage, then complete + publish in one fenced transaction, drain."""
    lease = lease or new_lease(rt)
    ref = stage_batch(
        rt.store,
        destination="alert_events",
        task_id=lease.task_id,
        attempt=lease.attempt,
        rows=rows,
    )
    with rt.state() as conn:
        with conn.transaction():
            complete_success(conn, lease)
            publish_batch(conn, ref, task_id=lease.task_id, attempt=lease.attempt)
        outbox.drain_all(conn, rt.queue)
    return ref


def sink_all(rt: Runtime, *, timeout: float = 20.0) -> SinkReport:
    """``sink_once`` until the buffer queue has nothing visible or in flight; summed report."""
    total = SinkReport()
    deadline = time.monotonic() + timeout
    while True:
        r = sink_once(rt)
        total = SinkReport(
            received=total.received + r.received,
            acked=total.acked + r.acked,
            failed=total.failed + r.failed,
            stale_acks=total.stale_acks + r.stale_acks,
            rows_inserted=total.rows_inserted + r.rows_inserted,
            rows_duplicate=total.rows_duplicate + r.rows_duplicate,
            errors=total.errors + r.errors,
        )
        stats = rt.queue.stats(BUFFER_QUEUE)
        if r.idle and stats.depth == 0 and stats.in_flight == 0:
            return total
        assert time.monotonic() < deadline, f"buffer queue not drained: {stats}"
        if r.idle:
            time.sleep(0.05)


def events(rt: Runtime) -> list[tuple[Any, ...]]:
    with rt.data() as conn:
        return conn.execute(
            """SELECT dedupe_key, severity, block_number, payload, event_time,
                      source_task_id, source_attempt
               FROM data.alert_events ORDER BY block_number"""
        ).fetchall()


def buffer_outbox_rows(rt: Runtime) -> int:
    with rt.state() as conn:
        got = conn.execute(
            "SELECT count(*) FROM state.outbox WHERE topic = %s", (BUFFER_QUEUE,)
        ).fetchone()
    assert got is not None
    return int(got[0])


# --- producer side -------------------------------------------------------------------------


def test_stage_batch_names_row_and_field_and_writes_nothing(rt: Runtime) -> None:
    task_id = uuid.uuid4()
    cases = [
        (row(2, payload="not-an-object"), "row 1: payload: Input should be an object"),
        (row(2, severity="page"), "row 1: severity:"),
        (row(2, chain_id="1"), "row 1: chain_id: Input should be a valid integer"),
        (row(2, event_time=datetime(2026, 1, 1)), "row 1: event_time: Input should have timezone"),
        (row(2, dedupe_key=""), "row 1: dedupe_key:"),
        (row(2, dedupe_key="k" * 513), "row 1: dedupe_key:"),
        ({**row(2), "org_id": "x"}, "row 1: org_id: Extra inputs are not permitted"),
        (row(2, payload={"a": [float("nan")]}), "row 1: payload:"),
        (row(2, alert_name="a\x00b"), "row 1: alert_name:"),
    ]
    for bad, expected in cases:
        with pytest.raises(InvalidBatch) as exc:
            stage_batch(
                rt.store, destination="alert_events", task_id=task_id, attempt=1, rows=[row(1), bad]
            )
        assert expected in str(exc.value), (expected, str(exc.value))
        assert exc.value.row == 1
        assert "not-an-object" not in str(exc.value)  # never the value itself
    with pytest.raises(InvalidBatch, match="unknown destination 'nope'"):
        stage_batch(rt.store, destination="nope", task_id=task_id, attempt=1, rows=[row(1)])
    with pytest.raises(InvalidBatch, match="exceeds the 100-byte cap"):
        stage_batch(
            rt.store,
            destination="alert_events",
            task_id=task_id,
            attempt=1,
            rows=[row(1)],
            max_bytes=100,
        )
    assert not rt.store.exists(batch_key(task_id, 1, "alert_events"))


def test_staged_object_is_canonical_jsonl_the_sink_parses(rt: Runtime) -> None:
    task_id = uuid.uuid4()
    ref = stage_batch(
        rt.store, destination="alert_events", task_id=task_id, attempt=2, rows=[row(1), row(2)]
    )
    assert ref == BatchRef(
        "alert_events", 1, f"batches/{task_id}/2/alert_events.jsonl", 2, ref.size_bytes
    )
    data = rt.store.get_bytes(ref.batch_key)
    assert len(data) == ref.size_bytes and data.count(b"\n") == 2
    assert json.loads(data.splitlines()[0])["event_time"] == "2026-11-23T12:00:00Z"
    from trace_core.sinks.schemas import DESTINATIONS

    parsed = parse_jsonl(DESTINATIONS["alert_events"], data, key=ref.batch_key)
    assert [r.model_dump() for r in parsed] == [row(1), row(2)]


def test_publish_batch_refuses_a_ref_of_another_attempt(rt: Runtime) -> None:
    lease = new_lease(rt)
    ref = stage_batch(
        rt.store, destination="alert_events", task_id=lease.task_id, attempt=1, rows=[row(1)]
    )
    with (
        rt.state() as conn,
        pytest.raises(InvalidBatch, match="does not belong"),
        conn.transaction(),
    ):
        publish_batch(conn, ref, task_id=lease.task_id, attempt=2)
    assert buffer_outbox_rows(rt) == 0


# --- sink: writes, duplicates, redelivery --------------------------------------------------


def test_published_batch_is_written_once_with_its_source(rt: Runtime) -> None:
    lease = new_lease(rt)
    publish_rows(rt, [row(1), row(2), row(3)], lease)
    report = sink_all(rt)
    assert (report.acked, report.rows_inserted, report.failed) == (1, 3, 0)
    got = events(rt)
    assert [g[0] for g in got] == [row(n)["dedupe_key"] for n in (1, 2, 3)]
    assert got[0][3] == row(1)["payload"] and got[0][4] == EVENT_TIME
    assert {(g[5], g[6]) for g in got} == {(lease.task_id, 1)}
    assert rt.queue.stats(BUFFER_QUEUE).dead == 0


def test_duplicate_messages_and_retries_create_no_duplicate_rows(rt: Runtime) -> None:
    lease = new_lease(rt)
    ref = publish_rows(rt, [row(1), row(2)], lease)
    # The same pointer again through the outbox is the same outbox row (deterministic id) ...
    with rt.state() as conn:
        with conn.transaction():
            publish_batch(conn, ref, task_id=lease.task_id, attempt=lease.attempt)
        assert outbox.drain_all(conn, rt.queue) == 0
    assert buffer_outbox_rows(rt) == 1
    # ... and a duplicated delivery (at-least-once queue) is a second message.
    rt.queue.publish(BUFFER_QUEUE, buffer_message(ref, task_id=lease.task_id, attempt=1))
    # A retried evaluation (another task attempt) yields the same dedupe keys.
    retry = new_lease(rt)
    publish_rows(rt, [row(2), row(3)], retry)
    report = sink_all(rt)
    assert report.acked == 3 and report.failed == 0
    assert (report.rows_inserted, report.rows_duplicate) == (3, 3)
    assert [g[0] for g in events(rt)] == [row(n)["dedupe_key"] for n in (1, 2, 3)]
    assert events(rt)[1][5] == lease.task_id  # first write wins


def test_redelivery_after_a_lost_ack_writes_nothing_new(rt: Runtime) -> None:
    publish_rows(rt, [row(1), row(2)])
    # Consumer A writes and commits, then dies before acking (visibility 0: due again at once).
    (first,) = rt.queue.receive(BUFFER_QUEUE, 1, visibility_timeout=0)
    pointer = parse_pointer(first.payload)
    rows = parse_jsonl(pointer.destination, rt.store.get_bytes(pointer.batch_key), key="k")
    with rt.data() as conn:
        assert write_rows(conn, pointer.destination, rows, task_id=pointer.task_id, attempt=1) == 2
    report = sink_once(rt)
    assert (report.received, report.acked, report.rows_inserted, report.rows_duplicate) == (
        1,
        1,
        0,
        2,
    )
    with pytest.raises(StaleReceipt):
        rt.queue.ack(first)
    assert len(events(rt)) == 2


def test_stale_attempt_never_publishes(rt: Runtime) -> None:
    task_id = uuid.uuid4()
    with rt.state() as conn:
        with conn.transaction():
            create_task(conn, task_id=task_id, operator="alert_evaluate", payload={})
            stale = claim(conn, task_id, lease_seconds=0)  # expires at once
        with conn.transaction():
            current = claim(conn, task_id, lease_seconds=30)
    assert (stale.attempt, current.attempt) == (1, 2)
    ref = stage_batch(
        rt.store, destination="alert_events", task_id=task_id, attempt=1, rows=[row(1)]
    )
    with rt.state() as conn:
        with pytest.raises(StaleAttempt), conn.transaction():
            publish_batch(conn, ref, task_id=task_id, attempt=1)  # written, then rolled back
            complete_success(conn, stale)
        assert buffer_outbox_rows(rt) == 0
        outbox.drain_all(conn, rt.queue)  # task wake-ups only
    assert sink_once(rt).idle and rt.queue.stats(BUFFER_QUEUE).depth == 0
    publish_rows(rt, [row(1, severity="critical")], current)
    assert sink_all(rt).rows_inserted == 1
    assert [(g[1], g[6]) for g in events(rt)] == [("critical", 2)]


# --- sink: bad batches and pointers --------------------------------------------------------


def test_one_bad_row_writes_nothing_dead_letters_then_replay_after_fix(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = publish_rows(rt, [row(1), row(2)])
    good1, good2 = rt.store.get_bytes(ref.batch_key).splitlines()
    broken = json.loads(good2.decode())
    broken["block_number"] = "two"
    rt.store.put_bytes(ref.batch_key, good1 + b"\n\n" + json.dumps(broken).encode() + b"\n")
    for receive in range(1, 4):
        report = sink_once(rt)
        assert (report.received, report.failed, report.acked) == (1, 1, 0), receive
        (error,) = report.errors
        assert f"{ref.batch_key} line 3: block_number: Input should be a valid integer" in error
        assert '"two"' not in error and "0xtx2" not in error  # never row contents
        assert events(rt) == []
    assert sink_once(rt).idle
    (dead,) = rt.queue.list_dead(BUFFER_QUEUE)
    assert dead.receive_count == 3 and "line 3: block_number" in (dead.last_error or "")
    assert dead.payload["batch_key"] == ref.batch_key

    # Replay before the fix fails again; after rewriting the object it writes both rows.
    _cli_env(monkeypatch, rt)
    rt.store.put_bytes(ref.batch_key, good1 + b"\n" + good2 + b"\n")
    result = CliRunner().invoke(cli, ["dlq", "replay", dead.message_id])
    assert result.exit_code == 0, result.output
    assert "replayed 1 dead letter" in result.output
    report = sink_all(rt)
    assert (report.acked, report.rows_inserted, report.failed) == (1, 2, 0)
    assert [g[0] for g in events(rt)] == [row(1)["dedupe_key"], row(2)["dedupe_key"]]
    assert rt.queue.stats(BUFFER_QUEUE).dead == 0


def _pointer(rt: Runtime, **changes: Any) -> dict[str, Any]:
    task_id = uuid.uuid4()
    ref = stage_batch(
        rt.store, destination="alert_events", task_id=task_id, attempt=1, rows=[row(1)]
    )
    msg = buffer_message(ref, task_id=task_id, attempt=1)
    msg.update(changes)
    return msg


MALFORMED: dict[str, tuple[Mapping[str, Any], str]] = {
    "bad shape": ({"destination": "alert_events", "rows": [1]}, "buffer message: schema_version"),
    "wrong type": ({"attempt": "1"}, "buffer message: attempt: Input should be a valid integer"),
    "bad task id": ({"task_id": "nope"}, "buffer message: task_id:"),
    "unknown destination": ({"destination": "users"}, "unknown destination 'users'"),
    "wrong content_type": ({"content_type": "application/json"}, "content_type: must be"),
    "wrong schema_version": ({"schema_version": 2}, "alert_events is at version 1, got 2"),
    "key outside batches/": ({"batch_key": "datasets/x.jsonl"}, "batch_key: must be 'batches/"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_pointer_is_dead_lettered_with_a_clear_error(rt: Runtime, case: str) -> None:
    changes, expected = MALFORMED[case]
    payload = dict(changes) if case == "bad shape" else _pointer(rt, **changes)
    _expect_dead(rt.queue, rt, payload, expected)


def test_missing_oversized_and_non_utf8_objects_are_dead_lettered(rt: Runtime) -> None:
    rt = Runtime(rt.settings.model_copy(update={"sink_max_batch_bytes": 400}))
    try:
        missing = _pointer(rt)
        rt.store.delete(missing["batch_key"])
        _expect_dead(rt.queue, rt, missing, "object_not_found: no object")
        big = _pointer(rt)
        rt.store.put_bytes(big["batch_key"], jsonl(row(1)) * 4)
        _expect_dead(rt.queue, rt, big, "larger than 400 bytes")
        latin = _pointer(rt)
        rt.store.put_bytes(latin["batch_key"], b"\n\n\xff\xfe")
        _expect_dead(rt.queue, rt, latin, "line 3: not valid UTF-8")
    finally:
        rt.close()


def _expect_dead(queue: Any, rt: Runtime, payload: Mapping[str, Any], expected: str) -> None:
    before = {m.message_id for m in queue.list_dead(BUFFER_QUEUE)}
    queue.publish(BUFFER_QUEUE, payload)
    deadline = time.monotonic() + 20
    while True:
        report = sink_once(rt)
        assert report.acked == 0 and report.rows_inserted == 0
        assert all(expected in e for e in report.errors), (expected, report.errors)
        new = [m for m in queue.list_dead(BUFFER_QUEUE) if m.message_id not in before]
        if new:
            break
        assert time.monotonic() < deadline, "message never dead-lettered"
    assert expected in (new[0].last_error or ""), new[0].last_error
    assert events(rt) == []


# --- SQS driver ----------------------------------------------------------------------------


def test_sqs_duplicates_dead_letter_and_replay(settings: Settings, moto_server_url: str) -> None:
    rt = Runtime(
        settings.model_copy(
            update={
                "queue_driver": "sqs",
                "sqs_endpoint_url": moto_server_url,
                "sqs_queue_prefix": f"t{uuid.uuid4().hex[:8]}-",
                "max_receive_count": 2,
                "sink_retry_delay_seconds": 0.0,
            }
        )
    )
    try:
        lease = new_lease(rt)
        ref = publish_rows(rt, [row(1), row(2)], lease)
        msg = buffer_message(ref, task_id=lease.task_id, attempt=1)
        rt.queue.publish(BUFFER_QUEUE, msg)  # a duplicate delivery
        bad = _pointer(rt)
        rt.store.put_bytes(bad["batch_key"], b'{"dedupe_key": "x"}\n')
        rt.queue.publish(BUFFER_QUEUE, bad)
        report = sink_all(rt)
        assert (report.acked, report.rows_inserted, report.rows_duplicate) == (2, 2, 2)
        assert report.failed == 2 and all(
            "line 1: alert_name: Field required" in e for e in report.errors
        )
        (dead,) = rt.queue.list_dead(BUFFER_QUEUE)
        assert dead.payload["batch_key"] == bad["batch_key"]
        rt.store.put_bytes(bad["batch_key"], jsonl(row(7)))
        assert rt.queue.replay_dead(BUFFER_QUEUE, [dead.message_id]) == 1
        assert sink_all(rt).rows_inserted == 1
        assert [g[2] for g in events(rt)] == [1, 2, 7]
    finally:
        rt.close()


# --- CLI -----------------------------------------------------------------------------------


def _cli_env(monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> None:
    s = rt.settings
    assert s.state_url and s.data_url
    monkeypatch.setenv("TRACE_HOME", str(s.home))
    monkeypatch.setenv("TRACE_STATE_URL", s.state_url.get_secret_value())
    monkeypatch.setenv("TRACE_DATA_URL", s.data_url.get_secret_value())
    monkeypatch.setenv("TRACE_MAX_RECEIVE_COUNT", str(s.max_receive_count))


def _bury(rt: Runtime, n: int) -> list[str]:
    """``n`` dead letters on the buffer queue (pointers to an unknown destination)."""
    one = Runtime(rt.settings.model_copy(update={"max_receive_count": 1}))
    try:
        for i in range(n):
            one.queue.publish(BUFFER_QUEUE, _pointer(rt, destination=f"gone{i}"))
        while not sink_once(one, max_messages=n).idle:
            pass
    finally:
        one.close()
    return [m.message_id for m in rt.queue.list_dead(BUFFER_QUEUE)]


def test_dlq_cli(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _cli_env(monkeypatch, rt)
    runner = CliRunner()
    out = runner.invoke(cli, ["dlq", "list"])
    assert out.exit_code == 0 and "no dead letters on queue 'buffer'" in out.output

    ids = _bury(rt, 3)
    assert len(ids) == 3
    out = runner.invoke(cli, ["dlq", "list"])
    assert out.exit_code == 0, out.output
    assert "3 dead letter(s)" in out.output and "unknown destination 'gone0'" in out.output
    listed = json.loads(runner.invoke(cli, ["dlq", "list", "--json"]).output)
    assert [m["message_id"] for m in listed] == ids
    assert listed[0]["payload"]["destination"] == "gone0" and listed[0]["receive_count"] == 1

    shown = runner.invoke(cli, ["dlq", "show", ids[1]])
    assert shown.exit_code == 0 and json.loads(shown.output)["payload"]["destination"] == "gone1"
    missing = runner.invoke(cli, ["dlq", "show", "999999"])
    assert missing.exit_code == 1 and "no dead letter with id 999999" in missing.output

    # Unknown ids change nothing; usage mistakes exit 2.
    bad = runner.invoke(cli, ["dlq", "replay", ids[0], "999999"])
    assert bad.exit_code == 1 and "999999" in bad.output and "nothing changed" in bad.output
    assert runner.invoke(cli, ["dlq", "replay"]).exit_code == 2
    assert runner.invoke(cli, ["dlq", "replay", ids[0], "--all"]).exit_code == 2
    refused = runner.invoke(cli, ["dlq", "purge", ids[0]])
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert rt.queue.stats(BUFFER_QUEUE).dead == 3

    out = runner.invoke(cli, ["dlq", "purge", ids[0], "--yes"])
    assert out.exit_code == 0 and "purged 1 dead letter" in out.output
    out = runner.invoke(cli, ["dlq", "replay", ids[1]])
    assert out.exit_code == 0 and "replayed 1 dead letter" in out.output
    assert rt.queue.stats(BUFFER_QUEUE).depth == 1

    status = runner.invoke(cli, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["queue"]["buffer"] == {"depth": 1, "in_flight": 0, "dead": 1}
    text = runner.invoke(cli, ["status"])
    assert "buffer: depth=1 in_flight=0 dead_letters=1" in text.output

    out = runner.invoke(cli, ["dlq", "purge", "--all", "--yes"])
    assert out.exit_code == 0 and "purged 1 dead letter" in out.output
    assert rt.queue.list_dead(BUFFER_QUEUE) == []
