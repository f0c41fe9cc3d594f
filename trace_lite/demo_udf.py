"""``trace-lite demo --udf``: user code on the default demo.

Applies ``examples/transforms/erc20_volume.yaml`` (a Python transform: ERC-20 transfer volume
per token, one run per committed ``logs`` range, in the UDF sandbox) and
``examples/udf_alerts/busy_token.yaml`` (a Python alert over that output) to the demo job
before the stack starts; after the backfill it waits for the transform's versions, prints the
volume per token checked against the Transfer logs counted over the synced ``logs``, and the
demo's alert table then includes the Python alert's events.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, Settings

TRANSFORM_FILE = REPO_ROOT / "examples" / "transforms" / "erc20_volume.yaml"
ALERT_FILE = REPO_ROOT / "examples" / "udf_alerts" / "busy_token.yaml"
OUTPUT = "erc20_volume"
TRANSFER_TOPIC = "DDF252AD1BE2C89B69C2B068FC378DAA952BA7F163C4A11628F55A4DF523B3EF"
VOLUME_SQL = f"""
SELECT token, sum(transfers) AS transfers, sum(volume) AS volume_wei, count(*) AS ranges
FROM {OUTPUT} GROUP BY token ORDER BY transfers DESC
"""


@dataclass(frozen=True)
class DemoWebhook:
    """A per-run secret for the example's webhook source, handed to the Query Service through
    its environment (never printed), and one signed delivery sent twice."""

    job: str = "erc20_volume"
    secret: str = field(default_factory=lambda: secrets.token_hex(16))

    def env(self) -> dict[str, str]:
        from trace_core.settings import source_secret_env_var

        return {source_secret_env_var(self.job): self.secret}

    def deliver_twice(self, console: Console, query_url: str) -> list[dict[str, Any]]:
        """POST one signed delivery twice: the first queues a run, the repeat makes none."""
        import httpx

        from trace_core.sources.webhook import signature

        key = f"demo-{int(time.time())}"
        body = json.dumps({"reason": "demo: new token list"}).encode()
        headers = {
            "Idempotency-Key": key,
            "X-Trace-Signature": signature(self.secret.encode(), key, body),
            "content-type": "application/json",
        }
        url = f"{query_url.rstrip('/')}/v1/sources/{self.job}/webhook"
        answers = []
        console.print(
            f"\n[bold]Webhook source[/bold]: POST {url} (signed, Idempotency-Key {key}), twice"
        )
        for attempt in ("first delivery", "redelivery"):
            r = httpx.post(url, content=body, headers=headers, timeout=30)
            answers.append({"status": r.status_code, **r.json()})
            created = answers[-1].get("created")
            console.print(
                f"  {attempt}: HTTP {r.status_code} "
                + ("a run was queued" if created else "no new run (same key)")
                + f" task {answers[-1].get('task_id')}",
                highlight=False,
            )
        return answers


WEBHOOK = DemoWebhook()


def apply_examples(console: Console, rt: Runtime, job: str) -> None:
    """Apply the example transform and Python alert (both written for the ``demo`` job)."""
    from trace_core.alerts.spec import load_alert_file
    from trace_core.alerts.store import apply_alert
    from trace_core.transforms.spec import load_transform_file
    from trace_core.transforms.store import apply_transform
    from trace_core.udf.bundles import put_bundle

    transform = load_transform_file(TRANSFORM_FILE)
    if transform.spec.job != job:
        raise TraceError(f"{TRANSFORM_FILE.name} is written for job {transform.spec.job!r}")
    applied = apply_transform(rt, transform, str(TRANSFORM_FILE))
    sha = (applied.bundle_sha256 or "")[:12]
    console.print(f"applied transform {transform.spec.name!r} (UDF bundle sha256 {sha}...)")
    alert = load_alert_file(ALERT_FILE)
    with rt.state() as conn:
        apply_alert(
            conn,
            rt.settings.org_id,
            alert,
            str(ALERT_FILE),
            bundles=lambda source: put_bundle(rt, source, name=f"alert:{alert.spec.name}"),
        )
    console.print(f"applied Python alert {alert.spec.name!r} ({ALERT_FILE.name})")


def _covered(rt: Runtime, chain_id: int, start: int, end: int) -> bool:
    """Whether every committed ``logs`` range inside ``[start, end)`` has its output version."""
    from trace_core.datasets.registry import versions_for_stream

    with rt.state() as conn:
        org = rt.settings.org_id
        logs = {
            (v.range_start, v.range_end)
            for v in versions_for_stream(conn, org, chain_id, "logs")
            if start <= v.range_start and v.range_end <= end
        }
        out = {
            (v.range_start, v.range_end) for v in versions_for_stream(conn, org, chain_id, OUTPUT)
        }
    return bool(logs) and logs <= out


def show(
    console: Console,
    settings: Settings,
    rt: Runtime,
    chain_id: int,
    start: int,
    end: int,
    deadline: float,
) -> dict[str, Any]:
    """Wait for the transform, print its output and the cross-check; return them for tests."""
    from trace_core.query.client import query_http
    from trace_lite.render import print_response

    with console.status("waiting for the erc20_volume transform runs (UDF sandbox)..."):
        while not _covered(rt, chain_id, start, end):
            if time.monotonic() > deadline:
                raise TraceError(
                    "the transform did not finish in time; see the udf_transform runs in the "
                    "Dagster UI and `trace-lite status`"
                )
            time.sleep(1.0)
    volume = query_http(settings, VOLUME_SQL)
    print_response(console, f"Transform {OUTPUT} (Python UDF): ERC-20 volume per token", volume)
    logs = query_http(
        settings,
        f"SELECT count(*) FROM logs WHERE hex(topic0) = '{TRANSFER_TOPIC}' "
        f"AND block_number >= {start} AND block_number < {end}",
    )["rows"][0][0]
    total = query_http(
        settings,
        f"SELECT sum(transfers) FROM {OUTPUT} WHERE first_block >= {start} AND first_block < {end}",
    )["rows"][0][0]
    verdict = (
        "[green]matches[/green]" if int(total or 0) == int(logs) else "[red]differs from[/red]"
    )
    console.print(
        f"transfers counted by the UDF over [{start}, {end}): {total} {verdict} the Transfer "
        f"logs in `logs` ({logs})"
    )
    return {"volume": volume, "transfer_logs": int(logs), "udf_transfers": int(total or 0)}
