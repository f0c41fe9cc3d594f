"""The transform job model (``kind: transform``) and its strict YAML validation.

A transform file looks like::

    kind: transform
    name: erc20_volume
    job: demo                        # the chain_sync job whose chain and streams it reads
    inputs: [logs]                   # stream keys of the job, or other transforms' outputs
    code: {python: erc20_volume.py}  # a UDF file next to the YAML (main(tables) -> table),
                                     # or {sql: "SELECT ... FROM logs"} (one gated SELECT)
    output: erc20_volume             # the dataset (and query relation) it commits
    trigger:
      on_input: true                 # one run per committed range of inputs[0] (default)
      cron: "*/10 * * * *"           # and/or a Dagster schedule
      webhook: true                  # and/or POST /v1/sources/{name}/webhook (signed)
      manual: true                   # trace-lite trigger NAME, the Dagster UI (default true)
    limits: {memory_mb: 128, wall_seconds: 30}

Loading reuses ``trace_core.yamlfile``; every problem is reported as
``file:line: field: message``. A Python file is read next to the YAML, must parse and define
a top-level ``main``; a syntax error names the Python file's own line too. Webhook secrets never
appear here: they come from ``TRACE_SOURCE_<NAME>_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Annotated, Any, NamedTuple

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

from trace_core.chain_sync.spec import Name, Slug, validation_problems
from trace_core.errors import ConfigError, InvalidJobFile, SqlRejected
from trace_core.query.gate import MAX_SQL_BYTES, validate_sql
from trace_core.yamlfile import LoadedYaml, load_yaml, read_capped

MAX_INPUTS = 8
MAX_UDF_BYTES = 256 * 1024
RESERVED_PREFIXES = ("analytics_", "hot_")
_CRON_FIELD = re.compile(
    r"^(\*|\d{1,2}(-\d{1,2})?)(/\d{1,2})?(,(\*|\d{1,2}(-\d{1,2})?)(/\d{1,2})?)*$"
)
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _cron(value: str) -> str:
    """Five fields (minute hour day month weekday) of numbers, ranges, steps, lists and ``*``."""
    fields = value.split()
    if len(fields) != 5:
        raise PydanticCustomError(
            "cron", "must have 5 fields (minute hour day-of-month month day-of-week)"
        )
    for text, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(text):
            raise PydanticCustomError("cron", "field {f!r} is not a cron field", {"f": text})
        for number in re.findall(r"(?<![/\d])\d+", text):
            if not lo <= int(number) <= hi:
                raise PydanticCustomError(
                    "cron",
                    "{n} is outside {lo}-{hi} in field {f!r}",
                    {"n": number, "lo": lo, "hi": hi, "f": text},
                )
    return " ".join(fields)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Code(_Model):
    """Exactly one of ``python`` (a UDF file, path relative to the YAML) or ``sql``."""

    python: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    sql: Annotated[str, Field(min_length=1, max_length=MAX_SQL_BYTES)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Code:
        if (self.python is None) == (self.sql is None):
            raise PydanticCustomError("code", "code is exactly one of 'python' or 'sql'")
        return self


class Trigger(_Model):
    """When the transform runs: per committed input range, on a cron, on a webhook, by hand."""

    on_input: bool = True
    cron: Annotated[str, Field(min_length=9, max_length=120)] | None = None
    webhook: bool = False
    manual: bool = True

    @field_validator("cron")
    @classmethod
    def _cron_ok(cls, value: str | None) -> str | None:
        return None if value is None else _cron(value)

    @model_validator(mode="after")
    def _some_trigger(self) -> Trigger:
        if not (self.on_input or self.cron or self.webhook or self.manual):
            raise PydanticCustomError("trigger", "enable at least one trigger")
        return self


class Limits(_Model):
    """Overrides of the UDF sandbox's default limits (see docs/udf.md)."""

    memory_mb: Annotated[int, Field(ge=16, le=4096)] | None = None
    wall_seconds: Annotated[float, Field(gt=0, le=900)] | None = None
    cpu_seconds: Annotated[int, Field(ge=1, le=900)] | None = None
    output_mb: Annotated[int, Field(ge=1, le=1024)] | None = None


class TransformSpec(_Model):
    """A validated transform definition; identity ``(org_id, name)``."""

    kind: Annotated[str, Field(pattern="^transform$")]
    name: Name
    job: Name
    inputs: Annotated[list[Slug], Field(min_length=1, max_length=MAX_INPUTS)]
    code: Code
    output: Slug
    trigger: Trigger = Trigger()
    limits: Limits = Limits()
    enabled: bool = True

    @field_validator("inputs")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("inputs", "input keys must be distinct")
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(RESERVED_PREFIXES):
            raise PydanticCustomError(
                "output", "must not start with {p}", {"p": " or ".join(RESERVED_PREFIXES)}
            )
        if value in (info.data.get("inputs") or ()):
            raise PydanticCustomError("output", "must differ from every input")
        return value

    @field_validator("code")
    @classmethod
    def _gated(cls, value: Code, info: ValidationInfo) -> Code:
        inputs = info.data.get("inputs")
        if value.sql is None or inputs is None:
            return value
        try:
            validate_sql(value.sql, inputs)
        except SqlRejected as exc:
            raise PydanticCustomError(
                "sql",
                "rejected by the SQL gate ({code}): {message}",
                {"code": exc.code, "message": exc.message},
            ) from None
        return value

    def limit_overrides(self) -> dict[str, Any]:
        return self.limits.model_dump(exclude_none=True)


class LoadedTransform(NamedTuple):
    """A validated transform, the exact YAML bytes, where each key sits, and the UDF source."""

    spec: TransformSpec
    raw: bytes
    doc: LoadedYaml
    python_source: str | None


def check_udf_source(
    source: str, *, file: str, yaml_file: str, line: int, field: str = "code.python"
) -> None:
    """Refuse Python that does not parse or lacks a top-level ``def main``. Raises ``ConfigError``
    at the YAML line, naming the Python file's own line for a syntax error."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise ConfigError(
            f"{file}:{exc.lineno}: {exc.msg}", file=yaml_file, line=line, field=field
        ) from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
        raise ConfigError(
            f"{file} defines no top-level function main",
            file=yaml_file,
            line=line,
            field=field,
        )


def _read_udf(doc: LoadedYaml, spec: TransformSpec, base: Path) -> str | None:
    if spec.code.python is None:
        return None
    line = doc.line_of(("code", "python"))
    path = (base / spec.code.python).resolve()
    if path.suffix != ".py":
        raise ConfigError("must name a .py file", file=doc.source, line=line, field="code.python")
    try:
        raw = read_capped(path, MAX_UDF_BYTES)
    except ConfigError as exc:
        raise ConfigError(str(exc), file=doc.source, line=line, field="code.python") from None
    try:
        source = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path.name} is not UTF-8", file=doc.source, line=line, field="code.python"
        ) from None
    check_udf_source(source, file=path.name, yaml_file=doc.source, line=line)
    return source


def validate_transform(doc: LoadedYaml) -> TransformSpec:
    """Validate a loaded document. Raises ``InvalidJobFile`` listing every problem by line."""
    if not isinstance(doc.data, dict):
        raise ConfigError(
            "the top level must be a mapping (kind: transform, ...)", file=doc.source, line=1
        )
    try:
        return TransformSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidJobFile(validation_problems(doc, exc)) from None


def parse_transform(
    raw: str | bytes, *, source: str = "<string>", base: Path | None = None
) -> LoadedTransform:
    """Parse and validate a transform document; a Python UDF is read relative to ``base``.
    Raises ``ConfigError``/``InvalidJobFile``."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    doc = load_yaml(data, source=source)
    spec = validate_transform(doc)
    return LoadedTransform(spec, data, doc, _read_udf(doc, spec, base or Path.cwd()))


def load_transform_file(path: str | Path) -> LoadedTransform:
    """Read, parse and validate a transform file (its UDF next to it)."""
    p = Path(path)
    return parse_transform(read_capped(p), source=str(p), base=p.parent)


def is_transform_document(raw: bytes) -> bool:
    """Cheap check for ``kind: transform`` (which loader ``trace-lite apply`` hands a file to)."""
    return re.search(rb"(?m)^kind:\s*['\"]?transform['\"]?\s*(#.*)?$", raw) is not None
