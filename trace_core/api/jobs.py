"""``/v1/jobs``: apply a chain_sync, transform or alert YAML (the body), list, status, pause,
resume, trigger (manual source) and delete, always in the caller's org.

A YAML body goes through the same parse, validation and apply code as ``trace-lite apply``
(``chain_sync.store.apply_job``, ``transforms.store.apply_transform_in``,
``alerts.store.apply_alert``); its problems answer 422 with ``<body>:line: field: message``
each. A body never names files on the server: a Python UDF comes with the YAML in a JSON body
``{"yaml": "...", "files": {"gas.py": "def main(...): ..."}}``, its ``code.python:`` (or an
alert's ``udf:``) naming a key of ``files``; the source is checked (it parses, it defines
``main``) and stored as a content-addressed bundle of the caller's org, as
``trace-lite apply`` does with the file next to the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from trace_core.alerts.spec import LoadedAlert, validate_alert
from trace_core.alerts.store import apply_alert
from trace_core.api import models as m
from trace_core.api.http import ApiRefused, Call, Reply, not_found
from trace_core.chain_sync import status as status_mod
from trace_core.chain_sync import store as chain_store
from trace_core.chain_sync.spec import validate_job
from trace_core.db.queries import q
from trace_core.errors import ChainSyncJobNotFound, ConfigError, TransformNotFound
from trace_core.sources.trigger import trigger
from trace_core.transforms import store as transform_store
from trace_core.transforms.spec import (
    MAX_UDF_BYTES,
    LoadedTransform,
    check_udf_source,
    validate_transform,
)
from trace_core.yamlfile import MAX_YAML_BYTES, LoadedYaml, load_yaml

BODY_SOURCE = "<body>"
_KIND = re.compile(rb"(?m)^kind:\s*['\"]?([a-z_]+)['\"]?\s*(#.*)?$")


def _upload(call: Call) -> tuple[bytes, dict[str, str]]:
    """The YAML bytes and the UDF sources of a request: a YAML body, or a JSON one
    (``JobUpload``) when the content type says so."""
    if call.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        upload = call.model(m.JobUpload)
        return upload.yaml.encode(), dict(upload.files)
    return call.body, {}


def _document(raw: bytes) -> tuple[str, LoadedYaml]:
    """The YAML's kind and parsed document; 413 over the YAML cap, 422 for bad YAML."""
    if len(raw) > MAX_YAML_BYTES:
        raise ApiRefused(
            f"a YAML body is at most {MAX_YAML_BYTES} bytes", code="body_too_large", status=413
        )
    doc = load_yaml(raw, source=BODY_SOURCE)
    found = _KIND.search(raw)
    kind = found.group(1).decode() if found else "chain_sync"
    if kind not in ("chain_sync", "transform", "alert"):
        raise ConfigError(
            "kind must be chain_sync, transform or alert", file=BODY_SOURCE, line=1, field="kind"
        )
    return kind, doc


def _udf(doc: LoadedYaml, path: tuple[str, ...], files: dict[str, str]) -> str | None:
    """The Python source a YAML's ``path`` names among the uploaded ``files`` (None when the
    YAML names none); 422 naming the line when it is not there or is not a valid UDF."""
    data: Any = doc.data
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    if data is None:
        return None
    line, field = doc.line_of(path), ".".join(path)
    if not isinstance(data, str) or data not in files:
        raise ConfigError(
            "names a Python file: send it in the JSON body's files "
            '({"yaml": ..., "files": {"<name>.py": "<source>"}})',
            file=BODY_SOURCE,
            line=line,
            field=field,
        )
    source = files[data]
    if len(source.encode()) > MAX_UDF_BYTES:
        raise ApiRefused(f"{data} is over {MAX_UDF_BYTES} bytes", code="body_too_large", status=413)
    check_udf_source(source, file=data, yaml_file=BODY_SOURCE, line=line, field=field)
    return source


def _bundles(call: Call, name: str) -> Callable[[str], str]:
    """Stores a UDF's source as a bundle of the caller's org (as the tenant role)."""
    from trace_core.db.connection import Databases
    from trace_core.runtime import Runtime
    from trace_core.udf.bundles import put_bundle

    pools = (call.api.state, call.api.data)

    def put(source: str) -> str:
        settings = call.api.settings.model_copy(update={"org_id": str(call.org_id)})
        urls = [p.conninfo if isinstance(p.conninfo, str) else p.conninfo() for p in pools]
        dbs = Databases(state_url=urls[0], data_url=urls[1])
        rt = Runtime(settings, dbs, tenant=True)
        try:
            return put_bundle(rt, source, name=name)
        finally:
            rt.close()

    return put


def _verb(created: bool, changed: bool) -> Any:
    return "created" if created else ("updated" if changed else "unchanged")


def apply_document(call: Call, expect: str | None = None, name: str | None = None) -> Reply:
    """Apply the YAML body (``expect``: only that kind; ``name``: the body must name it)."""
    raw, files = _upload(call)
    kind, doc = _document(raw)
    if expect is not None and kind != expect:
        raise ConfigError(f"kind must be {expect}", file=BODY_SOURCE, line=1, field="kind")
    if kind == "chain_sync":
        spec = validate_job(doc)
        _same_name(doc, spec.name, name)
        with call.state() as conn:
            got = chain_store.apply_job(conn, call.org_id, spec, raw, BODY_SOURCE)
        spec_name, ident, created, changed = spec.name, got.job_id, got.created, got.changed
    elif kind == "transform":
        tspec = validate_transform(doc)
        _same_name(doc, tspec.name, name)
        loaded = LoadedTransform(tspec, raw, doc, _udf(doc, ("code", "python"), files))
        with call.state() as conn:
            tgot = transform_store.apply_transform_in(
                conn, call.org_id, loaded, BODY_SOURCE,
                bundles=_bundles(call, f"transform:{tspec.name}"),
            )  # fmt: skip
        spec_name, ident, created, changed = (
            tspec.name,
            tgot.transform_id,
            tgot.created,
            tgot.changed,
        )
    else:
        aspec = validate_alert(doc)
        _same_name(doc, aspec.name, name)
        loaded_alert = LoadedAlert(aspec, raw, doc, _udf(doc, ("udf",), files))
        with call.state() as conn:
            agot = apply_alert(
                conn, call.org_id, loaded_alert, BODY_SOURCE,
                bundles=_bundles(call, f"alert:{aspec.name}"),
            )  # fmt: skip
        spec_name, ident, created, changed = aspec.name, agot.alert_id, agot.created, agot.changed
    call.audit_target.append(spec_name)
    answer = m.JobApplied(
        kind=kind,  # type: ignore[arg-type]
        name=spec_name,
        id=ident,
        result=_verb(created, changed),
    )
    return (201 if created else 200), answer


def _same_name(doc: LoadedYaml, got: str, want: str | None) -> None:
    if want is not None and got != want:
        raise ConfigError(
            f"the body names {got!r}, the path {want!r}",
            file=BODY_SOURCE,
            line=doc.line_of(("name",)),
            field="name",
        )


def create_job(call: Call) -> Reply:
    """Apply a chain_sync, transform or alert YAML job (idempotent, like trace-lite apply)."""
    return apply_document(call)


def list_jobs(call: Call) -> Reply:
    """The org's chain_sync and transform jobs."""
    with call.state() as conn:
        chains = chain_store.list_jobs(conn, call.org_id)
        transforms = transform_store.list_transforms(conn, call.org_id)
    jobs = [
        m.JobSummary(
            kind="chain_sync", name=j.name, id=j.job_id, enabled=j.enabled, chain_id=j.chain_id
        )
        for j in chains
    ] + [
        m.JobSummary(
            kind="transform", name=t.name, id=t.transform_id, enabled=t.enabled, chain_id=t.chain_id
        )
        for t in transforms
    ]
    return m.JobList(jobs=jobs)


def get_job(call: Call) -> Reply:
    """A chain_sync job's status (as trace-lite status --json), or a transform's definition."""
    name = call.params["name"]
    with call.state() as conn:
        try:
            found = status_mod.job_status(conn, call.org_id, name)
            return m.JobStatus(kind="chain_sync", name=found[0]["name"], status=found[0])
        except ChainSyncJobNotFound:
            pass
        try:
            t = transform_store.get_transform(conn, call.org_id, name)
        except TransformNotFound:
            raise not_found("job", name) from None
        from trace_core.sources.trigger import count_events

        body = {**t.as_json(), "source_events": count_events(conn, call.org_id, name)}
    return m.JobStatus(kind="transform", name=t.name, status=body)


def _set_enabled(call: Call, enabled: bool) -> Reply:
    name = call.params["name"]
    try:
        with call.state() as conn:
            job_id = chain_store.set_enabled(conn, call.org_id, name, enabled)
    except ChainSyncJobNotFound:
        raise not_found("chain_sync job", name) from None
    return m.JobChanged(name=name, id=job_id, enabled=enabled)


def pause_job(call: Call) -> Reply:
    """Stop scheduling and claiming a chain_sync job's new work (running tasks finish)."""
    return _set_enabled(call, False)


def resume_job(call: Call) -> Reply:
    """Resume a paused chain_sync job."""
    return _set_enabled(call, True)


def trigger_job(call: Call) -> Reply:
    """Run a transform job now (manual source): one run per ``Idempotency-Key`` header
    (default: a fingerprint of the pinned input versions, as trace-lite trigger)."""
    name = call.params["name"]
    with call.state() as conn:
        got = trigger(
            conn,
            call.org_id,
            name,
            "manual",
            idempotency_key=call.headers.get("idempotency-key"),
            max_attempts=call.api.settings.max_attempts,
        )
    return (202 if got.created else 200), m.Triggered.model_validate(got.as_json())


def delete_job(call: Call) -> Reply:
    """Delete a job: a chain_sync job only once paused and with no running task (its queued
    tasks go with it, its committed datasets stay), a transform at once (its outputs stay)."""
    name = call.params["name"]
    with call.state() as conn:
        try:
            job_id = chain_store.resolve_job(conn, call.org_id, name)
        except ChainSyncJobNotFound:
            row = conn.execute(
                q("api", "delete_transform"), {"org_id": call.org_id, "name": name}
            ).fetchone()
            if row is None:
                raise not_found("job", name) from None
            return m.Deleted(name=name, id=row[0])
        job = chain_store.get_job(conn, call.org_id, job_id)
        if job.enabled:
            raise ApiRefused(
                f"pause job {name!r} before deleting it", code="job_not_paused", status=409
            )
        running = conn.execute(q("api", "job_running_tasks"), {"job_id": job_id}).fetchone()
        if running and running[0]:
            raise ApiRefused(
                f"job {name!r} still has {running[0]} running task(s): retry when they finish",
                code="job_busy",
                status=409,
            )
        conn.execute(q("api", "delete_paused_tasks"), {"job_id": job_id})
        conn.execute(q("api", "delete_chain_sync_job"), {"org_id": call.org_id, "job_id": job_id})
    return m.Deleted(name=job.name, id=job_id)
