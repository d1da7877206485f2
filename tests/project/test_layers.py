"""The package's layers run one way: every import (at module level or inside a function)
goes to a lower layer or within the same package, and no modules import each other in a
loop. A new import that breaks this fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# lowest first; a module may import its own package and anything below it
LAYERS = [
    {"sweep.errors", "sweep.stats", "sweep.paths", "sweep.testing.faults", "sweep.study.locks"},
    {"sweep.config", "sweep.secrets"},
    {"sweep.runtime"},
    {"sweep.data", "sweep.models"},
    {"sweep.training"},
    {"sweep.tracking"},
    {"sweep.study"},
    {"sweep.trial", "sweep.targets", "sweep.testing"},
    {"sweep.evaluation"},
    {"sweep.shipping"},
    {"hydra_plugins.sweep_optuna"},
    {"sweep.cli", "sweep.__main__", "sweep"},
    {"bench"},  # the benchmarks (a package beside src/) sit on top of everything
]


def modules() -> Dict[str, Path]:
    found = {}
    for base, path in [(SRC, p) for p in sorted(SRC.rglob("*.py"))] + \
            [(ROOT, p) for p in sorted((ROOT / "bench").rglob("*.py"))]:
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[0] in ("sweep", "hydra_plugins", "bench"):
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer(name: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{name}: in no layer of tests/project/test_layers.py"
    return best[0]


def graph() -> Dict[str, Set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_imports_go_down_the_layers() -> None:
    def package(name: str) -> str:
        return ".".join(name.split(".")[:2])

    wrong: List[str] = []
    for name, targets in graph().items():
        for target in sorted(targets):
            if target in ("sweep",) or package(target) == package(name):
                continue
            if layer(target) > layer(name):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that run back up the layers:\n  " + "\n  ".join(wrong)


def test_no_import_cycles() -> None:
    edges = graph()
    state: Dict[str, int] = {}
    cycles: List[str] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt in ("sweep",) or nxt.endswith(".__init__"):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            visit(node, [node])
    assert not cycles, "modules that import each other:\n  " + "\n  ".join(cycles)
