"""Alert YAML validation, dedupe templates, rows -> events, and delivery decisions (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trace_core.alerts.delivery import next_step
from trace_core.alerts.evaluate import EvaluationPayload, events_from_result
from trace_core.alerts.outcome import SendResult, classify_status, parse_retry_after
from trace_core.alerts.spec import (
    TemplateError,
    load_alert_file,
    parse_alert,
    redact_url,
    render_template,
    template_columns,
)
from trace_core.errors import AlertResultInvalid, ConfigError, InvalidJobFile
from trace_core.settings import REPO_ROOT
from trace_core.tasks.retry import RetryPolicy

SECRET = "s3cr3t-token"
GOOD = f"""kind: alert
name: large_transfer
job: demo
reads: [transactions]
condition: |
  SELECT block_number, transaction_hash FROM transactions WHERE value_f64 > 1e15
trigger: {{on_commit: true}}
dedupe_key: "large_transfer:{{transaction_hash}}"
severity: warning
channels:
  - webhook: {{url: "https://hooks.example.com/T0/{SECRET}?k={SECRET}", rate_limit_per_minute: 30}}
  - log: {{}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_alert(text, source="alert.yaml")
    exc = info.value
    found = exc.problems if isinstance(exc, InvalidJobFile) else [exc]
    return [str(p) for p in found]


def test_valid_alert_and_the_shipped_example_load() -> None:
    spec = parse_alert(GOOD).spec
    assert spec.reads == ["transactions"] and spec.trigger.on_commit
    assert [c.kind for c in spec.channels] == ["webhook", "log"]
    assert spec.channels[0].key.startswith("webhook:") and spec.channels[1].key == "log"
    assert SECRET not in spec.channels[0].describe()
    example = load_alert_file(REPO_ROOT / "examples" / "alerts" / "large_transfer.yaml").spec
    assert example.job == "demo" and example.severity == "warning"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("severity: warning", "severity: loud", "alert.yaml:9: severity: Input should be"),
        ("severity: warning", "severity: warning\nextra: 1", "alert.yaml:10: extra: unknown field"),
        ("job: demo\n", "", "alert.yaml:1: job: field required"),
        ("FROM transactions", "FROM logs", "alert.yaml:5: condition: rejected by the SQL gate"),
        (
            "SELECT block_number, transaction_hash FROM transactions WHERE value_f64 > 1e15",
            "DELETE FROM transactions",
            "alert.yaml:5: condition: rejected by the SQL gate",
        ),
        (
            "SELECT block_number, transaction_hash FROM transactions WHERE value_f64 > 1e15",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "alert.yaml:5: condition: rejected by the SQL gate",
        ),
        (
            '"large_transfer:{transaction_hash}"',
            '"large_transfer:fixed"',
            "at least one result column",
        ),
        (
            '"large_transfer:{transaction_hash}"',
            '"other:{transaction_hash}"',
            "must start with 'large_transfer:'",
        ),
        (
            '"large_transfer:{transaction_hash}"',
            '"large_transfer:{transaction_hash!r}"',
            "conversion or format spec",
        ),
        ('"large_transfer:{transaction_hash}"', '"large_transfer:{a.b}"', "plain column name"),
        ('"large_transfer:{transaction_hash}"', '"large_transfer:{oops"', "not a valid template"),
        (
            "trigger: {on_commit: true}",
            "trigger: {on_commit: false}",
            "alert.yaml:7: trigger: set on_commit",
        ),
        (
            "trigger: {on_commit: true}",
            "trigger: {schedule_seconds: 1}",
            "trigger.schedule_seconds: Input should be greater",
        ),
        (
            "trigger: {on_commit: true}",
            'trigger: {on_commit: "yes"}',
            "trigger.on_commit: Input should be a valid boolean",
        ),
        (
            "reads: [transactions]",
            "reads: [transactions, transactions]",
            "alert.yaml:4: reads: stream keys must be distinct",
        ),
        (
            "reads: [transactions]",
            "reads: []",
            "alert.yaml:4: reads: List should have at least 1 item",
        ),
        (
            "  - log: {}",
            "  - log: {}\n    webhook: {url: 'https://x.example/'}",
            "channels[1]: a channel is exactly one of",
        ),
        ("  - log: {}", "  - {}", "channels[1]: a channel is exactly one of"),
        ("  - log: {}", "  - log: {}\n  - log: {}", "channels: the same channel is listed twice"),
        (
            "rate_limit_per_minute: 30",
            "rate_limit_per_minute: 0",
            "rate_limit_per_minute: Input should be greater",
        ),
        (
            "name: large_transfer",
            "name: Large Transfer",
            "alert.yaml:2: name: must be 1-64 characters",
        ),
        (
            "name: large_transfer",
            "name: large_transfer\nname: again",
            "alert.yaml:3: name: duplicate key",
        ),
    ],
)
def test_each_problem_names_line_and_field(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://hooks.example.com/{SECRET}",
        f"https://user:{SECRET}@hooks.example.com/",
        f"https:///{SECRET}",
        f"https://hooks.example.com/{SECRET} x",
        f"https://hooks.example.com:99999/{SECRET}",
    ],
)
def test_bad_webhook_urls_are_refused_without_echoing_them(url: str) -> None:
    found = problems(GOOD.replace(f"https://hooks.example.com/T0/{SECRET}?k={SECRET}", url))
    assert any("channels[0].webhook.url" in p for p in found), found
    assert all(SECRET not in p for p in found)


def test_every_problem_is_reported_in_file_order() -> None:
    text = GOOD.replace("severity: warning", "severity: loud").replace("job: demo", "job: Demo!")
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["3", "9"]


def test_unsafe_yaml_is_refused(tmp_path: Path) -> None:
    assert (
        "anchors (&name) are not allowed" in problems(GOOD.replace("job: demo", "job: &j demo"))[0]
    )
    assert "aliases (*name) are not allowed" in problems(GOOD.replace("job: demo", "job: *j"))[0]
    assert "tags" in problems(GOOD.replace("job: demo", "job: !!python/name:os.system demo"))[0]
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "#" * 300_000)
    with pytest.raises(ConfigError, match="limit"):
        load_alert_file(big)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_alert("- 1\n")


def test_template_columns_and_rendering() -> None:
    assert template_columns("a:{x}:{y}:{x}") == ("x", "y", "x")
    with pytest.raises(TemplateError):
        template_columns("{x:>10}")
    assert render_template("a:{n}:{h}", {"n": 7, "h": "0xab"}) == "a:7:0xab"
    with pytest.raises(AlertResultInvalid, match="'missing'.*columns: h, n"):
        render_template("a:{missing}", {"n": 7, "h": "0xab"})
    with pytest.raises(AlertResultInvalid, match="NULL"):
        render_template("a:{h}", {"h": None})
    with pytest.raises(AlertResultInvalid, match="over 512"):
        render_template("a:{h}", {"h": "x" * 600})


def _payload() -> EvaluationPayload:
    return EvaluationPayload(
        alert_id=uuid.uuid4(),
        alert_name="big",
        severity="critical",
        condition="SELECT 1",
        dedupe_key="big:{transaction_hash}",
        chain_id=31337,
        trigger="on_commit",
        source={"dataset_version": "v"},
    )


def test_rows_become_events_deterministically() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    cols = ["block_number", "transaction_hash", "timestamp", "value"]
    rows = [
        [5, "0xaa", 1_700_000_005, "10"],
        [5, "0xaa", 1_700_000_005, "10"],
        [9, "0xbb", None, "3"],
    ]
    p = _payload()
    events = events_from_result(p, cols, rows, evaluated_at=now)
    assert [e["dedupe_key"] for e in events] == ["big:0xaa", "big:0xbb"]
    assert events[0]["tx_hash"] == "0xaa" and events[0]["block_hash"] is None
    assert events[0]["event_time"] == datetime.fromtimestamp(1_700_000_005, UTC)
    assert events[1]["event_time"] == now
    assert events[0]["payload"]["row"] == dict(zip(cols, rows[0], strict=True))
    assert events == events_from_result(p, cols, rows, evaluated_at=now)


def test_rows_that_cannot_be_events_are_fatal() -> None:
    now = datetime.now(UTC)
    with pytest.raises(AlertResultInvalid, match="block_number"):
        events_from_result(_payload(), ["transaction_hash"], [["0xaa"]], evaluated_at=now)
    with pytest.raises(AlertResultInvalid, match="duplicate column"):
        events_from_result(_payload(), ["a", "a"], [], evaluated_at=now)
    with pytest.raises(AlertResultInvalid, match="transaction_hash"):
        events_from_result(_payload(), ["block_number"], [[1]], evaluated_at=now)


def test_delivery_decisions() -> None:
    assert [classify_status(s) for s in (200, 204, 302, 400, 404, 408, 429, 500, 503)] == [
        "delivered", "delivered", "failed", "failed", "failed", "retry", "retry", "retry", "retry",
    ]  # fmt: skip
    assert parse_retry_after("7") == 7.0 and parse_retry_after("Wed, 21 Oct 2015") is None
    policy = RetryPolicy(5, 60)
    retry = SendResult("retry", 503)
    assert next_step(retry, attempt=1, max_attempts=3, policy=policy) == ("pending", 5.0)
    assert next_step(retry, attempt=3, max_attempts=3, policy=policy) == ("failed", 0.0)
    assert next_step(
        SendResult("retry", 429, retry_after=40), attempt=1, max_attempts=3, policy=policy
    ) == ("pending", 40.0)
    assert next_step(
        SendResult("retry", 429, retry_after=4000), attempt=1, max_attempts=3, policy=policy
    ) == ("pending", 60.0)
    assert (
        next_step(SendResult("failed", 404), attempt=1, max_attempts=3, policy=policy)[0]
        == "failed"
    )
    assert (
        next_step(SendResult("delivered", 200), attempt=3, max_attempts=3, policy=policy)[0]
        == "delivered"
    )
    assert (
        redact_url(f"https://h.example:8443/a/{SECRET}?t={SECRET}") == "https://h.example:8443/..."
    )
