"""The package's import structure: every module imports on its own, the module import graph
has no cycle, imports flow one way through the layers, and no module hides an import of
another streamlearn module inside a function (the way a cycle used to be dodged)."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streamlearn"

#: Imports flow from a higher layer to the same or a lower one, never up. A module's layer is
#: that of the longest entry that names it or a package above it.
LAYERS: dict[str, int] = {
    # 0: nothing of streamlearn below them
    "streamlearn.errors": 0,
    # the local stack's state file and process checks: stdlib only, read by config to find
    # a running local stack
    "streamlearn.devstack.state": 0,
    "streamlearn.devstack.procs": 0,
    # 1: settings, label codings, the numpy kernels and tensor engines
    "streamlearn.config": 1,
    "streamlearn.labels": 1,
    "streamlearn.backends": 1,
    # 2: the examples an update step works on (SparseRows.dot runs a backend kernel), the
    # time-series points and the calendar of their frequencies (numpy only)
    "streamlearn.batch": 2,
    "streamlearn.series_batch": 2,
    "streamlearn.timefreq": 2,
    # 3: state store, wire formats, Kafka and file I/O, synthetic data
    "streamlearn.statestore": 3,
    "streamlearn.wire": 3,
    "streamlearn.streams": 3,
    "streamlearn.datasets": 3,
    # 4: algorithms and their artifacts
    "streamlearn.algorithms": 4,
    "streamlearn.snapshots": 4,
    # 5: what runs jobs, ingests events, starts the local stack, queries the registry
    "streamlearn.runtime": 5,
    "streamlearn.ingest": 5,
    "streamlearn.devstack": 5,
    "streamlearn.registry": 5,
    "streamlearn.monitoring": 5,
    "streamlearn.serving": 5,
    "streamlearn.tuning": 5,
    "streamlearn.export": 5,
    "streamlearn.reporting": 5,
    # 6: entry points
    "streamlearn.client": 6,
    "streamlearn.demo": 6,
    "streamlearn.cli": 6,
    "streamlearn.__main__": 6,
    "streamlearn": 6,
}

#: the optional tensor engines' modules import their engine at the top (it is the module's job)
OPTIONAL_ENGINES = {"streamlearn.backends._torch": "torch", "streamlearn.backends._mxnet": "mxnet"}

#: modules whose function-local imports of streamlearn modules keep start-up cheap (each
#: command imports what it needs); anywhere else a local import would only hide a cycle
LAZY_BY_DESIGN = {"streamlearn.cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported streamlearn module, imported inside a function) for every import in ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from pkg import module` imports the module
                targets.append(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        for t in targets:
            if t == "streamlearn" or t.startswith("streamlearn."):
                while t not in MODULES:
                    t = t.rpartition(".")[0]
                if t != name:
                    out.append((t, id(node) in local))
    return out


GRAPH: dict[str, set[str]] = {m: {t for t, _ in _imports(m)} for m in MODULES}


def _layer(name: str) -> int:
    probe = name
    while probe not in LAYERS:
        probe = probe.rpartition(".")[0]
    return LAYERS[probe]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "streamlearn.__main__"))
def test_every_module_imports_alone_in_a_fresh_interpreter(module):
    engine = OPTIONAL_ENGINES.get(module)
    if engine is not None and importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} is not installed (an optional engine)")
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_flow_down_the_layers():
    upward = [f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a in sorted(GRAPH) for b in sorted(GRAPH[a])
              if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_function_local_import_of_a_streamlearn_module():
    hidden = [f"{m} imports {t} inside a function" for m in sorted(MODULES) if m not in LAZY_BY_DESIGN
              for t, local in _imports(m) if local]
    assert not hidden, "\n".join(hidden)


def test_the_graph_sees_the_imports():
    """The checks above would pass on an empty graph: a few known edges must be in it."""
    assert "streamlearn.runtime.jobs" in GRAPH["streamlearn.runtime.worker"]
    assert "streamlearn.wire.serde" in GRAPH["streamlearn.wire.decode"]
    assert "streamlearn.runtime.jobs" in GRAPH["streamlearn.cli"]  # a lazy (function-local) one
    assert _layer("streamlearn.runtime.record") == 5 and _layer("streamlearn.devstack.state") == 0
