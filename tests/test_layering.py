"""The packages of gateway/ form layers: no import cycles, no import upwards.

Lowest first. A package may import its own layer and the layers below it;
the kit (lab, sim, demo: tests, demo and benchmarks) sits above everything
that runs on a box, and only the command line is above the kit. A new
package must be placed here, which is the moment to think about where it
belongs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.import_graph import Edge, cycles, graph_of, package_edges, upward_imports

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"

LAYERS: list[set[str]] = [
    {"__init__", "errors"},
    {"topics", "backoff", "batching", "pacing", "serving", "signed", "config", "metrics"},
    {"store"},
    {"security", "health"},
    {"broker"},
    {"relay"},
    {"state"},
    {"commands", "cache", "appliance", "sysupdate"},
    {"web", "school_console", "academy", "status_view"},
    {"app"},
    {"lab", "sim", "demo"},  # the kit: never imported by what runs on a box
    {"cli", "__main__"},
]


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class TestGatewayTree:
    """The real tree keeps its layers."""

    def test_no_package_cycles(self) -> None:
        assert cycles(graph_of(package_edges(GATEWAY))) == []

    def test_every_package_has_a_layer(self) -> None:
        nodes = {p.stem for p in GATEWAY.glob("*.py")}
        nodes |= {p.parent.name for p in GATEWAY.glob("*/__init__.py")}
        placed = set().union(*LAYERS)
        assert sorted(nodes - placed) == [], "place them in LAYERS (tests/test_layering.py)"
        assert sum(map(len, LAYERS)) == len(placed), "a package stands in two layers"

    def test_no_import_goes_up_a_layer(self) -> None:
        upward = [
            f"{e.where}: {e.source} -> {e.target}"
            for e in upward_imports(package_edges(GATEWAY), LAYERS)
        ]
        assert upward == []

    def test_the_daemon_loads_no_kit_module(self) -> None:
        """``python -m gateway run`` parses its command line and builds the app without lab/sim/demo."""
        probe = (
            "import sys\n"
            "from gateway.cli import build_parser\n"
            "build_parser().parse_args(['run'])\n"
            "import gateway.app\n"
            "kit = ('gateway.lab', 'gateway.sim', 'gateway.demo')\n"
            "print(sorted(m for m in sys.modules if m.startswith(kit)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=GATEWAY.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() == "[]"


class TestTestsTree:
    """Test modules share helpers through kits (``tests/*_kit.py``, ``helpers.py``), never
    through another test module: importing one runs its module set-up and couples the two."""

    def test_no_test_module_imports_another(self) -> None:
        tests = Path(__file__).resolve().parent
        found = [
            f"{path.relative_to(tests)}:{number}: {line.strip()}"
            for path in sorted(tests.rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.match(r"\s*(from|import)\s+(tests\.)?(academy\.)?test_\w+", line)
        ]
        assert found == []


class TestChecker:
    """The checks fail on a tree that has the faults (a tiny package in tmp_path)."""

    def test_a_cycle_between_two_packages_is_found(self, tmp_path: Path) -> None:
        root = _write(
            tmp_path / "pkg",
            {
                "__init__.py": "",
                "low/__init__.py": "",
                "low/core.py": "from pkg.high.api import thing\n",
                "high/__init__.py": "",
                "high/api.py": "from pkg.low import core\nthing = 1\n",
                "alone.py": "import pkg.low.core\n",
            },
        )
        assert cycles(graph_of(package_edges(root))) == [["high", "low"]]

    def test_a_cycle_through_relative_and_lazy_imports_is_found(self, tmp_path: Path) -> None:
        root = _write(
            tmp_path / "pkg",
            {
                "__init__.py": "",
                "a/__init__.py": "from ..b import x\n",
                "b/__init__.py": "x = 1\n",
                "b/late.py": "def f():\n    from pkg import c\n",
                "c.py": "from .a import y\n",
            },
        )
        assert cycles(graph_of(package_edges(root))) == [["a", "b", "c"]]

    def test_a_tree_without_cycles_passes(self, tmp_path: Path) -> None:
        root = _write(
            tmp_path / "pkg",
            {"__init__.py": "", "low.py": "", "high.py": "from pkg import low\n"},
        )
        assert cycles(graph_of(package_edges(root))) == []

    def test_an_upward_import_is_named_with_its_file(self, tmp_path: Path) -> None:
        root = _write(
            tmp_path / "pkg",
            {"__init__.py": "", "low.py": "from pkg import high\n", "high.py": ""},
        )
        assert upward_imports(package_edges(root), [{"low"}, {"high", "__init__"}]) == [
            Edge("low", "high", "pkg/low.py:1")
        ]
