"""The README's configuration table lists every setting (name, default, meaning) as the code
has it; regenerate it with ``scripts/config_table.py``."""

from __future__ import annotations

import re

from trace_core.settings import REPO_ROOT, Settings


def _readme_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\| `(TRACE_[A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def _default(name: str) -> str:
    from scripts.config_table import default_text

    return default_text(name)


def test_every_setting_is_documented_with_its_default_and_meaning() -> None:
    rows = _readme_rows()
    for name, field in Settings.model_fields.items():
        var = f"TRACE_{name.upper()}"
        assert var in rows, f"README configuration table lacks {var}"
        default, meaning = rows[var]
        assert default == _default(name), (
            f"{var}: README default {default!r}, code {_default(name)!r}"
        )
        assert meaning == (field.description or ""), (
            f"{var}: README meaning differs from the field description"
        )
