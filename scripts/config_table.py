"""Print the README's configuration table from ``Settings`` (tests/unit/test_readme_config.py
checks the README against the same source): ``.venv/bin/python scripts/config_table.py``."""

from __future__ import annotations

from trace_core.settings import Settings


def default_text(name: str) -> str:
    if name == "home":
        return "`<checkout>/.trace`"
    value = Settings.model_fields[name].default
    if value is None or hasattr(value, "get_secret_value"):
        return ""
    return str(value.value if hasattr(value, "value") else value)


def main() -> None:
    print("| variable | default | meaning |")
    print("|---|---|---|")
    for name, field in Settings.model_fields.items():
        print(f"| `TRACE_{name.upper()}` | {default_text(name)} | {field.description or ''} |")


if __name__ == "__main__":
    main()
