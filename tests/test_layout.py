"""The layout shows the design: qvtune's stages import only from earlier ones (the data flows one way:
config -> data -> model -> train -> store -> sweep -> collect), and no modules import each other
in a circle (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

QVTUNE = Path(__file__).resolve().parents[1] / "qvtune"
# a stage may import from its own and earlier ones; the entry points (run, rekey) from any
STAGES = {
    "common": 0,
    "status": 0,
    "config": 1,
    "data": 2,
    "model": 3,
    "train": 4,
    "store": 5,
    "track": 5,
    "sweep": 6,
    "collect": 7,
    "theory": 7,
    "run": 8,
    "rekey": 8,
}


def imports() -> dict[str, set[str]]:
    """Every qvtune module -> the qvtune modules it imports (at any depth of the file)."""
    found: dict[str, set[str]] = {}
    for path in QVTUNE.rglob("*.py"):
        module = ".".join(path.relative_to(QVTUNE.parent).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qvtune."):
                # `from qvtune.collect import labels` imports the module qvtune.collect.labels
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    is_module = (QVTUNE.parent / (sub.replace(".", "/") + ".py")).exists()
                    names.add(sub if is_module else node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("qvtune.")}
        found[module] = names
    return found


def stage(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_module_has_a_stage() -> None:
    assert sorted({stage(m) for m in imports()} - set(STAGES) - {"qvtune"}) == []


def test_no_module_imports_from_a_later_stage() -> None:
    later = [
        f"{m} -> {t}"
        for m, targets in imports().items()
        for t in targets
        if stage(m) in STAGES and STAGES[stage(t)] > STAGES[stage(m)]
    ]
    assert later == []


def test_no_import_circles() -> None:
    graph = imports()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target in graph and target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])
    assert circles == []
