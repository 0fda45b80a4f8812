"""Imports flow one way: data/models -> qkt -> experiments -> fl -> deploy, with no cycle and no Flower in qkt.

Every module of ``qkt_flower/`` is parsed with ``ast``; module-level *and* function-level imports of
``qkt_flower.*`` count (a lazy import is still a dependency). ``from qkt_flower.data import sources``
is an edge to ``qkt_flower.data.sources``; ``from qkt_flower.data import DATASETS`` (or
``import qkt_flower.data``) is an edge to the package's ``__init__``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import qkt_flower

PACKAGE = Path(qkt_flower.__file__).resolve().parent
ROOT = PACKAGE.parent

# The top-level part of a module's name -> its layer. A module may import its own layer or lower ones only.
LAYERS = {
    "errors": 0,
    "data": 0,
    "models": 0,
    "qkt": 1,
    "baselines": 1,
    "config": 2,
    "results": 2,
    "reference": 2,
    "experiments": 2,
    "fl": 3,
    "deploy": 4,
}


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.source} -> {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> list[tuple[str, int]]:
    """Every absolute module name ``path`` imports (at any depth of the file), with its line.

    ``from a.b import c`` gives ``a.b.c`` when that is a module of the package, else ``a.b``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    modules = all_modules()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return found


def import_graph() -> tuple[dict[str, Path], list[Edge], list[tuple[str, str, int]]]:
    """Modules, the edges between them (deduplicated per line), and every import of anything."""
    modules = all_modules()
    edges: dict[tuple[str, str, int], Edge] = {}
    everything = []
    for name, path in modules.items():
        for target, line in imports_of(path, name):
            everything.append((name, target, line))
            if target in modules and target != name:
                edges[(name, target, line)] = Edge(name, target, str(path.relative_to(ROOT)), line)
    return modules, list(edges.values()), everything


def layer_of(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    if len(parts) == 1:  # the package root: only a docstring and __version__
        return "qkt_flower", -1
    return parts[1], LAYERS.get(parts[1])


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        succ[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in succ[v]:
                out.append(sorted(comp))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def test_the_parser_sees_module_and_function_level_imports():
    _, edges, _ = import_graph()
    pairs = {(e.source, e.target) for e in edges}
    assert ("qkt_flower.data.federation", "qkt_flower.data.datasets") in pairs  # module level
    assert ("qkt_flower.data.datasets", "qkt_flower.data.sources") in pairs  # "from qkt_flower.data import sources"
    assert ("qkt_flower.models", "qkt_flower.models.resnet") in pairs  # function level


def test_every_module_has_a_layer():
    modules = all_modules()
    unknown = sorted(m for m in modules if layer_of(m)[1] is None)
    assert not unknown, f"modules without a layer (add their top-level name to LAYERS): {unknown}"


def test_no_module_imports_a_higher_layer():
    _, edges, _ = import_graph()
    bad = []
    for e in edges:
        (src_group, src_layer), (dst_group, dst_layer) = layer_of(e.source), layer_of(e.target)
        if src_layer is not None and dst_layer is not None and dst_layer > src_layer:
            bad.append(f"{e}  ({src_group}: layer {src_layer} imports {dst_group}: layer {dst_layer})")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_cycle():
    modules, edges, _ = import_graph()
    cycles = strongly_connected(sorted(modules), edges)
    report = []
    for comp in cycles:
        members = set(comp)
        inside = [str(e) for e in edges if e.source in members and e.target in members]
        report.append(f"cycle between {comp}:\n    " + "\n    ".join(inside))
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_the_algorithm_imports_no_flower():
    modules, _, everything = import_graph()
    bad = [
        f"{modules[src].relative_to(ROOT)}:{line} {src} imports {target}"
        for src, target, line in everything
        if src.startswith("qkt_flower.qkt") and (target == "flwr" or target.startswith("flwr."))
    ]
    assert not bad, "qkt_flower/qkt/ must not import Flower:\n" + "\n".join(bad)


def test_every_module_holds_one_idea_in_at_most_300_lines():
    """A module that grows past 300 lines has become a switchboard: split it by idea."""
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long


def test_scripts_are_thin_and_import_the_package_without_path_edits():
    """Command lines parse arguments and call the package; tests import it too — no ``sys.path`` edits anywhere."""
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert scripts
    long = {p.name: n for p in scripts if (n := len(p.read_text().splitlines())) >= 120}
    assert not long, long
    edits = [str(p.relative_to(ROOT)) for p in [*scripts, *(ROOT / "tests").rglob("*.py")]
             if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]  # fmt: skip
    assert edits == [p for p in edits if p.endswith("test_layers.py")], edits
