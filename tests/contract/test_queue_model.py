"""Both QueueDrivers against an in-memory model of SQS semantics (Hypothesis state machine).

The model tracks every message: visible, held (one current receipt), dead or acked, its
receive count and every receipt it ever had. Rules publish, receive, extend, ack (one or in a
batch), nack, expire a visibility (driven, no sleeping) and replay spent receipts; after each
step the driver's stats must match the model. Invariants checked on the way: a message is
never handed to a second holder while one holds a current receipt; receive counts go up by
one per receive; spent receipts are rejected; a message is dead-lettered exactly when it
becomes due after ``max_receive_count`` receives (or is nacked at that limit).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.contract.test_queue_contract import KINDS, VIS, Harness, open_harness
from trace_core.errors import StaleReceipt
from trace_core.queue.base import Message

MAX_RECEIVES = 2  # small, so runs reach the dead-letter paths often
EXAMPLES = {"pgqueue": 25, "sqs": 12}
STEPS = {"pgqueue": 25, "sqs": 18}


@dataclass
class Tracked:
    payload: dict[str, Any]
    count: int = 0
    status: str = "visible"  # visible | held | dead | acked
    current: Message | None = None  # the receipt that still works, if any
    spent: list[Message] = field(default_factory=list)  # receipts that never work again
    last_error: str | None = None  # latest nack error
    dead_error: str | None = None  # expected last_error once dead


def machine_for(h: Harness) -> type[RuleBasedStateMachine]:
    """A state machine class bound to one driver; every run uses a fresh queue."""

    class QueueModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.queue = f"m{uuid.uuid4().hex[:12]}"
            self.msgs: dict[str, Tracked] = {}
            self.serial = 0

        def _with(self, status: str) -> list[str]:
            return sorted(mid for mid, t in self.msgs.items() if t.status == status)

        def _pick(self, status: str, pick: int) -> tuple[str, Tracked]:
            ids = self._with(status)
            mid = ids[pick % len(ids)]
            return mid, self.msgs[mid]

        def _spent(self) -> list[Message]:
            return [m for mid in sorted(self.msgs) for m in self.msgs[mid].spent]

        def _finish(self, t: Tracked, status: str) -> None:
            assert t.current is not None
            t.spent.append(t.current)
            t.current = None
            t.status = status

        # --- rules ---------------------------------------------------------------

        @rule(n=st.integers(1, 3))
        def publish(self, n: int) -> None:
            payloads = [{"serial": self.serial + i} for i in range(n)]
            self.serial += n
            if n == 1:
                ids = [h.driver.publish(self.queue, payloads[0])]
            else:
                ids = h.driver.publish_batch(self.queue, payloads)
            assert len(set(ids)) == n and not set(ids) & set(self.msgs)
            for mid, payload in zip(ids, payloads, strict=True):
                self.msgs[mid] = Tracked(payload)

        @rule(k=st.integers(1, 4))
        def receive(self, k: int) -> None:
            eligible = [mid for mid in self._with("visible") if self.msgs[mid].count < MAX_RECEIVES]
            got = h.driver.receive(self.queue, k, visibility_timeout=VIS)
            assert len(got) == min(k, len(eligible))
            assert len({m.message_id for m in got}) == len(got)
            for m in got:
                t = self.msgs[m.message_id]
                # never to a second holder, never past the receive limit
                assert t.status == "visible" and t.count < MAX_RECEIVES
                assert m.receive_count == t.count + 1 and m.payload == t.payload
                if t.current is not None:
                    t.spent.append(t.current)  # an expired receipt is superseded now
                t.count, t.status, t.current = t.count + 1, "held", m
            self._sync_dead()

        def _sync_dead(self) -> None:
            dead = {d.message_id: d for d in h.driver.list_dead(self.queue, limit=1000)}
            h.settle()
            for mid, d in dead.items():
                t = self.msgs[mid]
                if t.status == "visible":
                    # buried lazily: due again after its last receive
                    assert t.count >= MAX_RECEIVES
                    t.status = "dead"
                    t.dead_error = t.last_error if h.keeps_error_on_redrive else None
                    if t.current is not None:
                        t.spent.append(t.current)
                        t.current = None
                assert t.status == "dead"
                assert (d.reason, d.receive_count, d.payload) == (
                    "max_receive_count",
                    MAX_RECEIVES,
                    t.payload,
                )
                assert d.last_error == t.dead_error
            assert set(self._with("dead")) == set(dead)

        @precondition(lambda self: self._with("held"))
        @rule(pick=st.integers(0, 1000))
        def ack(self, pick: int) -> None:
            _, t = self._pick("held", pick)
            assert t.current is not None
            h.driver.ack(t.current)
            self._finish(t, "acked")

        @precondition(lambda self: self._with("held"))
        @rule(
            picks=st.lists(st.integers(0, 1000), min_size=1, max_size=3), with_stale=st.booleans()
        )
        def ack_batch(self, picks: list[int], with_stale: bool) -> None:
            chosen = {self._pick("held", p)[0] for p in picks}
            batch = [self.msgs[mid].current for mid in sorted(chosen)]
            stale = self._spent()[:1] if with_stale else []
            returned = h.driver.ack_batch([m for m in batch if m is not None] + stale)
            assert [m.receipt for m in returned] == [m.receipt for m in stale]
            for mid in chosen:
                self._finish(self.msgs[mid], "acked")

        @precondition(
            lambda self: any(
                t.current is not None for t in self.msgs.values() if t.status == "visible"
            )
        )
        @rule(pick=st.integers(0, 1000))
        def ack_after_expiry(self, pick: int) -> None:
            """An expired receipt still works until the message is received again (as SQS)."""
            ids = [mid for mid in self._with("visible") if self.msgs[mid].current is not None]
            t = self.msgs[ids[pick % len(ids)]]
            assert t.current is not None
            h.driver.ack(t.current)
            self._finish(t, "acked")

        @precondition(lambda self: self._with("held"))
        @rule(pick=st.integers(0, 1000))
        def extend(self, pick: int) -> None:
            _, t = self._pick("held", pick)
            assert t.current is not None
            h.driver.extend(t.current, VIS)

        @precondition(lambda self: self._with("held"))
        @rule(pick=st.integers(0, 1000))
        def expire(self, pick: int) -> None:
            _, t = self._pick("held", pick)
            assert t.current is not None
            h.expire(t.current)
            t.status = "visible"  # its receipt stays current until the next receive

        @precondition(lambda self: self._with("held"))
        @rule()
        def expire_all(self) -> None:
            """Every holder dies at once (drives messages to their receive limit quickly)."""
            for mid in self._with("held"):
                t = self.msgs[mid]
                assert t.current is not None
                h.expire(t.current)
                t.status = "visible"

        @precondition(lambda self: self._with("held"))
        @rule(pick=st.integers(0, 1000), error=st.sampled_from(["e1", "e2", "timeout"]))
        def nack(self, pick: int, error: str) -> None:
            _, t = self._pick("held", pick)
            assert t.current is not None
            h.driver.nack(t.current, error=error)
            h.settle()
            t.last_error = error
            if t.count >= MAX_RECEIVES:
                self._finish(t, "dead")
                t.dead_error = error
            else:
                self._finish(t, "visible")

        @precondition(lambda self: self._spent())
        @rule(pick=st.integers(0, 1000), op=st.sampled_from(["ack", "extend", "nack"]))
        def spent_receipt_is_rejected(self, pick: int, op: str) -> None:
            spent = self._spent()
            m = spent[pick % len(spent)]
            with pytest.raises(StaleReceipt):
                if op == "ack":
                    h.driver.ack(m)
                elif op == "extend":
                    h.driver.extend(m, VIS)
                else:
                    h.driver.nack(m, error="stale")

        # --- invariants -------------------------------------------------------------

        @invariant()
        def stats_match_the_model(self) -> None:
            stats = h.driver.stats(self.queue)
            assert (stats.depth, stats.in_flight, stats.dead) == (
                len(self._with("visible")),
                len(self._with("held")),
                len(self._with("dead")),
            )

        @invariant()
        def one_current_receipt_per_message(self) -> None:
            for t in self.msgs.values():
                assert (t.current is not None) == (t.status == "held") or t.status == "visible"
                assert t.current is None or all(t.current.receipt != s.receipt for s in t.spent)

    return QueueModel


@pytest.mark.parametrize("kind", KINDS)
def test_driver_matches_the_sqs_model(kind: str, request: pytest.FixtureRequest) -> None:
    with open_harness(kind, request, max_receive_count=MAX_RECEIVES) as h:
        run_state_machine_as_test(
            machine_for(h),
            settings=settings(
                max_examples=EXAMPLES[kind],
                stateful_step_count=STEPS[kind],
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
