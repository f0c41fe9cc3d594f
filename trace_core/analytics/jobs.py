"""Which jobs have analytics, read from Postgres state (the applied chain_sync specs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync.analytics_spec import AnalyticsSpec
from trace_core.db.queries import q
from trace_core.errors import ConfigError

# Bumped when ``staking_events`` decodes more (2: ValidatorRewarded), so committed versions
# of the per-range output are recomputed rather than served without the new rows.
STAKING_EVENTS_REVISION = 2


@dataclass(frozen=True)
class AnalyticsJob:
    """A chain_sync job's ``analytics:`` block with what it needs to run.

    ``streams``: stream key -> cryo dataset name; ``source_file``: the job file the spec was
    applied from (relative genesis files resolve against its directory).
    """

    job: str
    chain_id: int
    spec: AnalyticsSpec
    streams: dict[str, str]
    source_file: str | None = None
    pools: dict[str, str] = field(default_factory=dict)

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute() or not self.source_file:
            return p
        return Path(self.source_file).parent / p

    @property
    def burn_addresses(self) -> list[str]:
        """Addresses whose balances are out of circulation (``supply.burn_addresses``)."""
        return sorted(self.spec.supply.burn_addresses) if self.spec.supply else []

    def deltas_salt(self) -> tuple[object, ...]:
        """What besides its input identifies a ``supply_deltas`` version (the burn addresses;
        nothing without them, so versions from before the setting keep their ids)."""
        return (tuple(self.burn_addresses),) if self.burn_addresses else ()

    def events_salt(self) -> tuple[object, ...]:
        """What besides its input identifies a ``staking_events`` version: the staking address
        and, from revision 2 on (ValidatorRewarded decoded), the revision."""
        address = self.spec.staking.address if self.spec.staking else ""
        return (address, STAKING_EVENTS_REVISION)

    def require_balances(self) -> str:
        """The balance-diffs stream key; ``ConfigError`` naming the field if unset."""
        if self.spec.balance_diffs is None:
            raise ConfigError(
                f"job {self.job!r} has no balance_diffs stream", field="analytics.balance_diffs"
            )
        return self.spec.balance_diffs

    def require_staking(self) -> tuple[str, str]:
        """``(logs stream key, staking address)``; ``ConfigError`` naming the field if unset."""
        if self.spec.staking is None:
            raise ConfigError(
                f"job {self.job!r} has no staking logs stream or address",
                field="analytics.staking.address",
            )
        return self.spec.staking.logs, self.spec.staking.address


def load_analytics_jobs(
    conn: Connection[Any], org_id: str, job: str | None = None
) -> list[AnalyticsJob]:
    """Jobs of the org (or the one named) that carry an ``analytics:`` block, by name."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("analytics", "analytics_jobs"), {"org_id": org_id, "job": job})
        out = []
        for row in rows.fetchall():
            spec = AnalyticsSpec.model_validate(row["analytics"], strict=False)
            streams = {k: v["cryo_dataset_name"] for k, v in row["streams"].items()}
            pools = {k: v["rpc_pool"] for k, v in row["streams"].items()}
            out.append(
                AnalyticsJob(row["name"], row["chain_id"], spec, streams, row["source_file"], pools)
            )
    return out


def get_analytics_job(conn: Connection[Any], org_id: str, job: str) -> AnalyticsJob:
    """The named job's analytics; ``ConfigError`` naming the job when it has none."""
    found = load_analytics_jobs(conn, org_id, job)
    if not found:
        raise ConfigError(
            f"job {job!r} is not applied or has no analytics: block", field="analytics"
        )
    return found[0]
