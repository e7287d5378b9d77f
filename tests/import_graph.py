"""The package import graph of a source tree, read with ``ast`` (nothing is imported).

A node is a top-level part of the root package: a subpackage (``relay``) or a
module (``app``); ``__init__`` stands for the root package itself. An edge
``a -> b`` means some file of ``a`` imports something of ``b`` (imports under
``if TYPE_CHECKING:`` and inside functions count too: a cycle is a cycle for a
reader and for mypy even when Python would tolerate it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

Graph = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of one import that makes the edge


def _node_of(root: Path, parts: tuple[str, ...]) -> str:
    """The node of a dotted module path below the root package (``("relay", "drain")``)."""
    if not parts:
        return "__init__"
    first = parts[0]
    if (root / first).is_dir() or (root / f"{first}.py").is_file():
        return first
    return "__init__"  # a name defined in the root package's __init__.py


def _imported(root: Path, file: Path) -> Iterable[tuple[tuple[str, ...], int]]:
    """Each import of the root package in ``file``: the dotted parts below the root, and its line."""
    package = root.name
    rel = file.relative_to(root).with_suffix("").parts
    here = rel[:-1]  # the package the file is in, below the root
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split("."))
                if parts[0] == package:
                    yield parts[1:], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                module = tuple(node.module.split(".")) if node.module else ()
                parts = base + module
            else:
                if not node.module or node.module.split(".")[0] != package:
                    continue
                parts = tuple(node.module.split("."))[1:]
            if parts:
                yield parts, node.lineno
            else:  # from gateway import topics, __version__
                for alias in node.names:
                    yield (alias.name,), node.lineno


def package_edges(root: Path) -> list[Edge]:
    """Every import from one node of ``root`` (a package directory) to another."""
    edges: list[Edge] = []
    for file in sorted(root.rglob("*.py")):
        source = _node_of(root, file.relative_to(root).with_suffix("").parts)
        for parts, line in _imported(root, file):
            target = _node_of(root, parts)
            if target != source:
                edges.append(Edge(source, target, f"{file.relative_to(root.parent)}:{line}"))
    return edges


def graph_of(edges: Iterable[Edge]) -> dict[str, frozenset[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    return {node: frozenset(targets) for node, targets in graph.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def upward_imports(edges: Iterable[Edge], layers: list[set[str]]) -> list[Edge]:
    """The imports that go from a lower layer to a higher one (``layers`` lowest first)."""
    level = {node: n for n, layer in enumerate(layers) for node in layer}
    return [e for e in edges if level[e.source] < level[e.target]]
