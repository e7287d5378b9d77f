"""Write a gateway config file from tables (tests, demo and benchmarks run the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config_file(tables: dict[str, dict[str, Any]], path: Path) -> Path:
    """Write ``{table: {key: value}}`` (one level of sub-tables allowed) as TOML."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {_value(v)}" for k, v in table.items() if k not in nested)
        for sub, values in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines.extend(f"{json.dumps(k)} = {_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path
