"""The alert definition model and its strict YAML validation.

An alert file looks like::

    kind: alert
    name: large_transfer
    job: demo                      # the chain_sync job whose streams it reads
    reads: [transactions]          # stream keys or the job's analytics_* outputs; each is a
                                   # relation of the condition
    condition: |                   # one gated SELECT; every result row is an event
      SELECT block_number, transaction_hash, value_f64 FROM transactions
      WHERE value_f64 > 1e18
    trigger: {on_commit: true}     # and/or schedule_seconds: 300
    dedupe_key: "large_transfer:{transaction_hash}"
    severity: warning              # info | warning | critical
    channels:
      - webhook: {url: "https://hooks.example.com/T0/abc", rate_limit_per_minute: 30}
      - log: {}                    # and slack, pagerduty, email, sms: see channel_spec

Loading reuses ``trace_core.yamlfile`` (no tags, anchors, aliases or merge keys, duplicate
keys and oversized files refused). Every problem is reported as ``file:line: field: message``.
``condition`` must pass the Query Service's SQL gate over ``reads``; ``dedupe_key`` must
start with ``<name>:`` (so two alerts never suppress each other's events in the shared
``alert_events`` table) and reference at least one result column. Webhook URLs may carry
secrets: they are never echoed in errors and are redacted wherever they are shown.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trace_core.alerts.channel_spec import Channel
from trace_core.alerts.channel_spec import redact_url as redact_url  # re-exported
from trace_core.chain_sync.spec import Name, Slug, validation_problems
from trace_core.errors import AlertResultInvalid, ConfigError, InvalidJobFile, SqlRejected
from trace_core.query.gate import MAX_SQL_BYTES, validate_sql
from trace_core.yamlfile import LoadedYaml, load_yaml, read_capped

MAX_DEDUPE_KEY_CHARS = 512
MAX_CHANNELS = 16
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Severity = Literal["info", "warning", "critical"]


class TemplateError(ValueError):
    """A malformed ``dedupe_key`` template."""


def template_columns(template: str) -> tuple[str, ...]:
    """Column names a ``dedupe_key`` template references, in order (repeats kept).

    Placeholders are plain column names (``{transaction_hash}``); conversions, format specs,
    attribute and index access are refused. Raises ``TemplateError``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"is not a valid template: {exc}") from None
    columns: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _COLUMN.match(name):
            raise TemplateError(
                f"placeholder {{{name}}} must be a plain column name like {{transaction_hash}}"
            )
        if spec or conversion:
            raise TemplateError(f"placeholder {{{name}}} must not have a conversion or format spec")
        columns.append(name)
    return tuple(columns)


def render_template(template: str, row: Mapping[str, Any]) -> str:
    """The dedupe key of one result row. Raises ``AlertResultInvalid`` for a column the row lacks or
    holds NULL in, or a key longer than ``MAX_DEDUPE_KEY_CHARS``: retrying cannot fix those."""
    out: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in row:
            raise AlertResultInvalid(
                f"dedupe_key references column {name!r}, which the condition does not return "
                f"(columns: {', '.join(sorted(row))})",
                field="dedupe_key",
            )
        value = row[name]
        if value is None:
            raise AlertResultInvalid(
                f"dedupe_key column {name!r} is NULL in a result row", field="dedupe_key"
            )
        out.append(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    key = "".join(out)
    if len(key) > MAX_DEDUPE_KEY_CHARS:
        raise AlertResultInvalid(
            f"dedupe_key is {len(key)} characters, over {MAX_DEDUPE_KEY_CHARS}", field="dedupe_key"
        )
    return key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Trigger(_Model):
    """When the alert is evaluated: on each committed version and/or every N seconds."""

    on_commit: bool = False
    schedule_seconds: Annotated[int, Field(ge=10, le=7 * 86_400)] | None = None

    @model_validator(mode="after")
    def _some_trigger(self) -> Trigger:
        if not self.on_commit and self.schedule_seconds is None:
            raise PydanticCustomError("trigger", "set on_commit: true and/or schedule_seconds: N")
        return self


class AlertSpec(_Model):
    """A validated alert definition; identity ``(org_id, name)``."""

    kind: Literal["alert"]
    name: Name
    job: Name
    reads: Annotated[list[Slug], Field(min_length=1, max_length=16)]
    condition: Annotated[str, Field(min_length=1, max_length=MAX_SQL_BYTES)] | None = None
    # a Python alert: main(rows: pa.Table) -> list[dict], run in the UDF sandbox over the
    # condition's rows (default: every row of the single read); the file sits next to the YAML
    udf: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    # set by apply (the stored bundle of ``udf``), never in YAML
    udf_sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")] | None = None
    trigger: Trigger
    dedupe_key: Annotated[str, Field(min_length=1, max_length=MAX_DEDUPE_KEY_CHARS)]
    severity: Severity
    channels: Annotated[list[Channel], Field(min_length=1, max_length=MAX_CHANNELS)]
    enabled: bool = True

    @field_validator("reads")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("reads", "stream keys must be distinct")
        return value

    @model_validator(mode="after")
    def _condition_or_udf(self) -> AlertSpec:
        if self.condition is None and self.udf is None:
            raise PydanticCustomError("condition", "set condition: (SQL) and/or udf: (a .py file)")
        return self

    @field_validator("udf")
    @classmethod
    def _udf_rows(cls, value: str | None, info: ValidationInfo) -> str | None:
        reads = info.data.get("reads") or []
        if value is not None and info.data.get("condition") is None and len(reads) > 1:
            raise PydanticCustomError(
                "udf", "a udf over several reads needs a condition selecting its rows"
            )
        return value

    @property
    def rows_sql(self) -> str:
        """The SELECT whose rows are the events (SQL alert) or the UDF's input (Python alert)."""
        return self.condition or f'SELECT * FROM "{self.reads[0]}"'

    @field_validator("condition")
    @classmethod
    def _gated(cls, value: str | None, info: ValidationInfo) -> str | None:
        reads = info.data.get("reads")
        if reads is None or value is None:
            return value  # reads itself is invalid and reported
        try:
            validate_sql(value, reads)
        except SqlRejected as exc:
            raise PydanticCustomError(
                "sql",
                "rejected by the SQL gate ({code}): {message}",
                {"code": exc.code, "message": exc.message},
            ) from None
        return value

    @field_validator("dedupe_key")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        try:
            columns = template_columns(value)
        except TemplateError as exc:
            raise PydanticCustomError("dedupe_key", "{message}", {"message": str(exc)}) from None
        if not columns:
            raise PydanticCustomError(
                "dedupe_key", "must reference at least one result column, e.g. {transaction_hash}"
            )
        name = info.data.get("name")
        if name is not None and not value.startswith(f"{name}:"):
            raise PydanticCustomError(
                "dedupe_key",
                "must start with '{name}:' so alerts never suppress each other's events",
                {"name": name},
            )
        return value

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, value: list[Channel]) -> list[Channel]:
        keys = [c.key for c in value]
        if len(set(keys)) != len(keys):
            raise PydanticCustomError("channels", "the same channel is listed twice")
        return value

    def channel(self, key: str) -> Channel | None:
        return next((c for c in self.channels if c.key == key), None)


class LoadedAlert(NamedTuple):
    """A validated alert, the exact bytes it came from, where each key sits, and the source
    of its Python UDF (None for a SQL alert)."""

    spec: AlertSpec
    raw: bytes
    doc: LoadedYaml
    udf_source: str | None = None


def validate_alert(doc: LoadedYaml) -> AlertSpec:
    """Validate a loaded document. Raises ``InvalidJobFile`` listing every problem with its line."""
    if not isinstance(doc.data, dict):
        raise ConfigError(
            "the top level must be a mapping (kind: alert, ...)", file=doc.source, line=1
        )
    if "udf_sha256" in doc.data:
        raise ConfigError(
            "udf_sha256 is set by apply; name the file with udf:",
            file=doc.source,
            line=doc.line_of(("udf_sha256",)),
            field="udf_sha256",
        )
    try:
        return AlertSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidJobFile(validation_problems(doc, exc)) from None


def parse_alert(
    raw: str | bytes, *, source: str = "<string>", base: Path | None = None
) -> LoadedAlert:
    """Parse and validate an alert document; a ``udf:`` file is read relative to ``base``.
    Raises ``ConfigError``/``InvalidJobFile``."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    doc = load_yaml(data, source=source)
    spec = validate_alert(doc)
    return LoadedAlert(spec, data, doc, _read_udf(doc, spec, base or Path.cwd()))


def _read_udf(doc: LoadedYaml, spec: AlertSpec, base: Path) -> str | None:
    from trace_core.transforms.spec import MAX_UDF_BYTES, check_udf_source

    if spec.udf is None:
        return None
    line = doc.line_of(("udf",))
    path = (base / spec.udf).resolve()
    try:
        if path.suffix != ".py":
            raise ConfigError("must name a .py file")
        source = read_capped(path, MAX_UDF_BYTES).decode()
    except (ConfigError, UnicodeDecodeError) as exc:
        raise ConfigError(str(exc), file=doc.source, line=line, field="udf") from None
    check_udf_source(source, file=path.name, yaml_file=doc.source, line=line, field="udf")
    return source


def load_alert_file(path: str | Path) -> LoadedAlert:
    """Read, parse and validate an alert file (and its ``udf:`` file next to it)."""
    p = Path(path)
    return parse_alert(read_capped(p), source=str(p), base=p.parent)
