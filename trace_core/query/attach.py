"""Trusted attach: turn grants into registered dataset versions and checked file lists.

Untrusted SQL never names a file. This module decides which objects a query may read:

1. grants -> versions, from Postgres state only. A user token sees, per dataset, the
   committed versions of its org that serve some block (``registry.visible_parts``: the
   newest version of each block wins), one relation
   per dataset key; ``job`` restricts to that job's streams and analytics outputs. A task token sees exactly the
   versions it pins. A grant the registry does not hold -> ``AccessDenied`` (403).
2. versions -> manifests, fetched with a size cap (``TooLarge``, 413) and parsed by the
   strict shared parser (``datasets.manifest.parse_manifest``: unknown fields rejected, keys
   directly under the version prefix, ``.parquet`` only), then checked against the registry
   row (ids, chain, range, config and schema hashes) and a file-count cap; local files must
   resolve inside the prefix directory and are made read-only -> ``ManifestInvalid`` (422).
3. relations: the union of a name's versions' files (a version that serves only part of its
   range, because a newer one replaced the rest, is read with that block filter), plus
   optional hot Postgres rows beyond
   the last cold block (``HotSource``, from a ``HotSourceResolver`` hook). ``blocks``,
   ``transactions`` and ``logs`` also exist for chains the org follows into the hot tables
   (a chain_sync job with a ``hot:`` block) before any cold version does: such a hot-only
   relation has no files and takes cryo's column shape (``Relation.columns``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from psycopg import Connection, sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from trace_core.chain_sync.analytics_spec import (
    job_dataset_key,
    output_keys,
    output_relation,
    shared_output_key,
)
from trace_core.datasets.cryo_schemas import CRYO_COLUMNS
from trace_core.datasets.manifest import DatasetManifest, parse_manifest
from trace_core.datasets.registry import (
    VersionRecord,
    VisiblePart,
    latest_covering,
    missing_ranges,
    visible_parts,
)
from trace_core.db.connection import with_session
from trace_core.db.queries import q
from trace_core.errors import (
    AccessDenied,
    InvalidObjectKey,
    ManifestInvalid,
    ObjectNotFound,
    ObjectTooLarge,
    QueryError,
    TooLarge,
)
from trace_core.query.relations import ClippedFiles, HotSource, Relation
from trace_core.query.tokens import TaskClaims, UserClaims
from trace_core.tenancy import TENANT_ROLE, tenant_scope

log = logging.getLogger(__name__)

Versions = dict[str, list[VersionRecord]]
__all__ = ["ClippedFiles", "HotSource", "Relation"]  # defined in relations, used from here too


class ObjectReader(Protocol):
    """The part of ``trace_core.storage.base.ObjectStore`` attach needs."""

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes: ...

    def duckdb_uri(self, key: str) -> str: ...


HotSourceResolver = Callable[[str, Sequence[VersionRecord]], Sequence[HotSource]]


# --- grants -> versions ----------------------------------------------------------------


def _records(conn: Connection[Any], name: str, params: dict[str, Any]) -> list[VersionRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [VersionRecord(**row) for row in cur.execute(q("query", name), params).fetchall()]


def default_relations(records: Iterable[VersionRecord]) -> Versions:
    """Group versions into relations named by dataset key, keeping per dataset the versions
    that serve some block (``registry.latest_covering``). The one place the
    default-visibility policy lives: the per-chain analytics outputs committed before outputs
    were per job (``analytics_<name>``, stale since) are not served."""
    by_dataset: dict[uuid.UUID, list[VersionRecord]] = defaultdict(list)
    for rec in records:
        if not shared_output_key(rec.dataset_key):
            by_dataset[rec.dataset_uuid].append(rec)
    out: Versions = defaultdict(list)
    for recs in by_dataset.values():
        chosen = latest_covering(recs)
        out[chosen[0].dataset_key].extend(chosen)
    return {name: sorted(recs, key=_order) for name, recs in sorted(out.items())}


def _order(rec: VersionRecord) -> tuple[int, int, int]:
    return (rec.chain_id, rec.range_start, rec.range_end)


def user_versions(
    conn: Connection[Any],
    claims: UserClaims,
    *,
    requested: Sequence[str] | None = None,
    job: str | None = None,
    hot_relations: Iterable[str] = (),
) -> Versions:
    """Relations a user query may read, by name.

    Without ``requested``: every granted relation of the org, named by dataset key (or of
    ``job``: its streams, and the ``analytics_<name>`` outputs its ``analytics:`` block
    produces, read from the job's own datasets ``analytics_<name>__<job tag>``).
    ``hot_relations`` exist even without a registered version (served from hot rows; an
    empty version list). Raises ``AccessDenied`` for a requested name the token does not
    grant or that neither the registry nor ``hot_relations`` holds, and
    ``QueryError(code='job_not_found')`` for an unknown job.
    """
    registered = registered_relations(conn, claims.org_id, job)
    return granted_relations(registered, claims, requested=requested, hot_relations=hot_relations)


def registered_relations(
    conn: Connection[Any], org_id: uuid.UUID | str, job: str | None = None
) -> Versions:
    """The registry's part of ``user_versions``: every relation of the org (or of ``job``)
    by name, before grants (what ``QueryService`` caches per registry generation). Raises
    ``QueryError(code='job_not_found')``."""
    params = {"org_id": org_id, "job": job}
    if job is not None:
        found = conn.execute(q("query", "job_exists"), params).fetchone()
        if found is None:
            raise QueryError(f"no job named {job!r}", code="job_not_found")
        records = _records(conn, "job_versions", params)
        keys = [job_dataset_key(job, k) for k in output_keys(found[2])]
        if keys:
            records += _records(
                conn,
                "job_analytics_versions",
                {"org_id": org_id, "chain_id": found[1], "keys": keys},
            )
        # the job's own outputs, under their relation names (analytics_<name>)
        return {output_relation(k): v for k, v in default_relations(records).items()}
    return default_relations(_records(conn, "org_versions", params))


def granted_relations(
    registered: Versions,
    claims: UserClaims,
    *,
    requested: Sequence[str] | None = None,
    hot_relations: Iterable[str] = (),
) -> Versions:
    """The part of ``registered`` that ``claims`` grants (see ``user_versions``); a new
    dict, ``registered`` is left as it is."""
    registered = dict(registered)
    for name in hot_relations:
        registered.setdefault(name, [])
    if requested is None:
        return {name: recs for name, recs in registered.items() if claims.grants(name)}
    out: Versions = {}
    for name in requested:
        if not claims.grants(name):
            raise AccessDenied(f"dataset {name!r} is not granted")
        if name not in registered:
            raise AccessDenied(f"dataset {name!r} is not registered")
        out[name] = registered[name]
    return out


def task_versions(conn: Connection[Any], claims: TaskClaims) -> Versions:
    """Relations of a task capability: exactly its pinned versions, by dataset key (a job's
    analytics output by its relation name ``analytics_<name>``).

    Raises ``AccessDenied`` when a pin is not registered, belongs to another org, or names a
    different dataset or manifest than the registry.
    """
    pins = {pin.dataset_version: pin for pin in claims.datasets}
    found = {
        rec.dataset_version: rec
        for rec in _records(conn, "pinned_versions", {"versions": list(pins)})
    }
    out: Versions = defaultdict(list)
    for version, pin in pins.items():
        rec = found.get(version)
        if (
            rec is None
            or rec.org_id != claims.org_id
            or rec.dataset_uuid != pin.dataset_uuid
            or rec.manifest_key != pin.manifest_key
        ):
            raise AccessDenied(f"dataset version {version} is not registered for this grant")
        out[output_relation(rec.dataset_key)].append(rec)  # a job's outputs: analytics_<name>
    return {name: sorted(recs, key=_order) for name, recs in sorted(out.items())}


def refuse_fake(versions: Versions, names: Iterable[str], *, allow: bool) -> None:
    """Fail closed on made-up data: raise ``QueryError(code='fake_data')`` (409) when a
    relation the query reads is served by a version ``TRACE_CRYO_MODE=fake`` made (or one
    derived from it), unless ``allow`` (``TRACE_QUERY_ALLOW_FAKE``)."""
    if allow:
        return
    for name in sorted(set(names)):
        fake = [r for r in versions.get(name, ()) if r.fake]
        if fake:
            raise QueryError(
                f"relation {name!r} is served by {len(fake)} fake dataset version(s) (made by "
                f"TRACE_CRYO_MODE=fake, e.g. blocks [{fake[0].range_start}, "
                f"{fake[0].range_end})); set TRACE_QUERY_ALLOW_FAKE=true to read them anyway",
                code="fake_data",
            )


# --- versions -> files -------------------------------------------------------------------


class ManifestCache:
    """Checked file URIs per (version, manifest key). Versions are immutable, so entries
    never go stale; bounded and thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[uuid.UUID, str], tuple[str, ...]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, rec: VersionRecord) -> tuple[str, ...] | None:
        key = (rec.dataset_version, rec.manifest_key)
        with self._lock:
            files = self._entries.get(key)
            if files is not None:
                self._entries.move_to_end(key)
            return files

    def put(self, rec: VersionRecord, files: tuple[str, ...]) -> None:
        with self._lock:
            self._entries[(rec.dataset_version, rec.manifest_key)] = files
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def load_manifest(store: ObjectReader, rec: VersionRecord, *, max_bytes: int) -> DatasetManifest:
    """Fetch and parse one version's manifest. Raises ``TooLarge`` past ``max_bytes``,
    ``ManifestInvalid`` when missing or malformed; other storage errors propagate."""
    where = f"manifest of dataset version {rec.dataset_version}"
    if not rec.storage_prefix.endswith("/") or not rec.manifest_key.startswith(rec.storage_prefix):
        raise ManifestInvalid(f"{where} is not under its version prefix")
    try:
        raw = store.get_bytes(rec.manifest_key, max_bytes=max_bytes)
    except ObjectTooLarge as exc:
        raise TooLarge(f"{where} is larger than {max_bytes} bytes") from exc
    except (ObjectNotFound, InvalidObjectKey) as exc:
        raise ManifestInvalid(f"{where} is missing") from exc
    if len(raw) > max_bytes:
        raise TooLarge(f"{where} is larger than {max_bytes} bytes")
    try:
        return parse_manifest(raw, prefix=rec.storage_prefix)
    except ManifestInvalid as exc:
        raise ManifestInvalid(f"{where}: {exc.message}") from exc


def manifest_files(
    store: ObjectReader, rec: VersionRecord, manifest: DatasetManifest, *, max_files: int
) -> tuple[str, ...]:
    """DuckDB URIs of a manifest's Parquet files once it matches the registry row.
    Raises ``ManifestInvalid``. Local files are made read-only on disk."""
    where = f"manifest of dataset version {rec.dataset_version}"
    identity = ("dataset_uuid", "dataset_version", "chain_id", "dataset_key", "range_start",
                "range_end", "config_hash", "schema_hash", "fake")  # fmt: skip
    differing = [f for f in identity if getattr(manifest, f) != getattr(rec, f)]
    if differing:
        raise ManifestInvalid(f"{where} differs from the registry in {', '.join(differing)}")
    keys = manifest.parquet_keys
    if len(keys) > max_files:
        raise ManifestInvalid(f"{where} lists more than {max_files} files")
    uris: list[str] = []
    prefix_dir: Path | None = None
    for key in keys:
        if not key.lower().endswith(".parquet"):
            raise ManifestInvalid(f"{where} lists a key that is not .parquet")
        uri = store.duckdb_uri(key)
        if "://" not in uri:
            prefix_dir = prefix_dir or _local_prefix_dir(store, rec)
            _check_local_file(Path(uri), prefix_dir, where)
        uris.append(uri)
    return tuple(uris)


def _local_prefix_dir(store: ObjectReader, rec: VersionRecord) -> Path:
    manifest_path = Path(store.duckdb_uri(rec.manifest_key))
    depth = rec.manifest_key[len(rec.storage_prefix) :].count("/")
    return manifest_path.parents[depth].resolve()


def _check_local_file(path: Path, prefix_dir: Path, where: str) -> None:
    """``path`` must be a regular file (not a symlink) directly in the version's prefix
    directory. ``prefix_dir`` is resolved once per version; the manifest parser already
    keeps every key directly under the prefix, so an ``lstat`` per file is enough (a full
    ``resolve`` per file walked every path component: half the cost of attaching at 100k
    versions)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise ManifestInvalid(f"{where} lists a file that does not exist") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ManifestInvalid(f"{where} lists something that is not a regular file")
    if path.parent != prefix_dir and Path(os.path.realpath(path.parent)) != prefix_dir:
        raise ManifestInvalid(f"{where} lists a file that resolves outside its prefix")
    if st.st_mode & 0o222:
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)
        except PermissionError:
            log.debug("cannot make dataset file read-only", extra={"path": str(path)})


def attach(
    store: ObjectReader,
    versions: Versions,
    names: Iterable[str],
    *,
    max_manifest_bytes: int,
    max_files: int,
    cache: ManifestCache | None = None,
    hot: HotSourceResolver | None = None,
) -> list[Relation]:
    """Relations for ``names`` (keys of ``versions``) with every manifest checked.

    Raises ``ManifestInvalid`` / ``TooLarge``; storage errors propagate.
    """
    out: list[Relation] = []
    for name in sorted(set(names)):
        recs = versions[name]
        parts = _parts_by_version(recs)
        files: list[str] = []
        clipped: list[ClippedFiles] = []
        for rec in recs:
            if not parts.get(rec.dataset_version):
                continue  # newer versions of its dataset serve all of its blocks
            checked = cache.get(rec) if cache else None
            if checked is None:
                manifest = load_manifest(store, rec, max_bytes=max_manifest_bytes)
                checked = manifest_files(store, rec, manifest, max_files=max_files)
                if cache:
                    cache.put(rec, checked)
            visible = parts[rec.dataset_version]
            if len(visible) == 1 and visible[0].whole:
                files.extend(checked)
            else:
                clipped += [ClippedFiles(checked, p.start, p.end) for p in visible]
        sources = tuple(hot(name, recs)) if hot else ()
        columns = tuple((c.name, c.duckdb) for c in CRYO_COLUMNS.get(name, ()))
        out.append(Relation(name, tuple(files), tuple(recs), sources, columns, tuple(clipped)))
    return out


def _parts_by_version(recs: Sequence[VersionRecord]) -> dict[uuid.UUID, list[VisiblePart]]:
    """The blocks each version serves, deciding per dataset which version wins a block."""
    by_dataset: dict[uuid.UUID, list[VersionRecord]] = defaultdict(list)
    for rec in recs:
        by_dataset[rec.dataset_uuid].append(rec)
    out: dict[uuid.UUID, list[VisiblePart]] = defaultdict(list)
    for group in by_dataset.values():
        for part in visible_parts(group):
            out[part.record.dataset_version].append(part)
    return out


def audit_datasets(relations: Iterable[Relation]) -> list[dict[str, str]]:
    """What a query read, for the audit: relation, dataset and version ids."""
    return [
        {
            "relation": rel.name,
            "dataset_uuid": str(rec.dataset_uuid),
            "dataset_version": str(rec.dataset_version),
        }
        for rel in relations
        for rec in rel.versions
    ]


# --- hot tables --------------------------------------------------------------------------

HOT_TABLES = {"blocks": "hot_blocks", "transactions": "hot_transactions", "logs": "hot_logs"}


def followed_chains(
    conn: Connection[Any], org_id: str | uuid.UUID, job: str | None = None
) -> list[int]:
    """Chains the org's chain_sync jobs (or the job named ``job``) follow into the hot tables."""
    rows = conn.execute(q("query", "hot_followed_chains"), {"org_id": org_id, "job": job})
    return [int(r[0]) for r in rows.fetchall()]


def data_hot_sources(
    pool: ConnectionPool[Any],
    url: str,
    followed: Collection[int] = (),
    *,
    org_id: uuid.UUID | str | None = None,
    as_tenant: bool = True,
) -> HotSourceResolver:
    """Resolver over the block follower's ``data.hot_*`` tables: per chain, the hot rows at or
    beyond the end of the newest cold range, plus those in ranges below it that no cold
    version covers, offered only when there are any. A ``followed`` chain without cold
    versions contributes all its hot rows (boundary 0).

    With ``org_id``, the sources select the org's rows only (hot rows are keyed by org), and
    (``as_tenant``) both the probe here and the engine's reads (through the returned sources'
    URL) run as ``trace_tenant`` with that org set: row-level security serves the org's own
    hot rows only, a second line behind the filter."""
    scope = org_id if as_tenant else None
    org = None if org_id is None else str(uuid.UUID(str(org_id)))
    if scope is not None:
        url = with_session(url, org_id=str(scope), role=TENANT_ROLE)

    def resolve(relation: str, recs: Sequence[VersionRecord]) -> list[HotSource]:
        table = HOT_TABLES.get(relation)
        if table is None or not (recs or followed):
            return []
        by_chain: dict[int, list[VersionRecord]] = {c: [] for c in followed}
        for rec in recs:
            by_chain.setdefault(rec.chain_id, []).append(rec)
        sources = []
        with pool.connection() as conn, _scoped(conn, scope):
            for chain_id, chain_recs in sorted(by_chain.items()):
                end = max((r.range_end for r in chain_recs), default=0)
                src = HotSource(
                    url,
                    f"data.{table}",
                    end,
                    chain_id,
                    tuple(missing_ranges(chain_recs, 0, end)),
                    org,
                )
                query = sql.SQL("SELECT EXISTS (SELECT 1 FROM data.{} WHERE {})").format(
                    sql.Identifier(table), sql.SQL(src.block_predicate())
                )
                row = conn.execute(query).fetchone()
                if row and row[0]:
                    sources.append(src)
        return sources

    return resolve


@contextlib.contextmanager
def _scoped(conn: Connection[Any], org_id: uuid.UUID | str | None) -> Iterator[None]:
    if org_id is None:
        yield
        return
    with tenant_scope(conn, org_id):
        yield
