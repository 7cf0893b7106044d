"""blpipe's modules import one way: each only from modules of earlier layers.

The layers follow an item's path: the leaves, what a stage and a chunk are,
how a chunk runs and fails, the child side, the plan, the segments, where
chunks run, the hub, the pipelines. The child side (what a worker process
runs) never imports the hub side. A new module must be placed in a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import blpipe

PACKAGE = Path(blpipe.__file__).parent

LAYERS: list[set[str]] = [
    {"_text", "_options"},  # how a value or a stage is named in a message; option checks
    # no blpipe imports, or only _text
    {"errors", "statistics", "_spec", "_cpu", "_adaptive", "_shm", "_deathsig"},
    {"stages", "errorlog", "_recorder", "_transport", "_progress", "_sizing"},
    {"_failures"},  # how an exception crosses a boundary
    {"_run", "_retry", "_timeout"},  # a chunk, input by input; a call, try by try, timed
    {"_messages"},  # what travels between the hub and a worker
    {"_chain", "_flow"},  # a chunk: how it runs, what carries it, and how a
    # checkpoint cuts the stream
    {"_stall", "_credit", "_state"},  # what each chain has in hand, and since when: the watchdog
    {"_worker"},  # the child side: a worker process
    {"_tasks"},  # the child side: an executor's or a thread stage's task
    {"_plan", "_checkpoint"},  # stages to segments; the checkpoint file and its cuts
    {"_segments", "_master"},  # bounded, ordered release; stages in the caller
    {"_spawn"},  # starting and stopping worker processes
    {"_watchdog"},  # asking workers what call they have in hand
    {"_procs", "_executors", "_rerun"},  # where chunks run; what a dead worker held
    {"_aio"},  # where async stages run: an event loop thread, on _executors' lanes
    {"_pool"},  # groups of worker processes
    {"_feeder"},  # the input, read in a thread with group_wait
    {"_intake", "_assembly"},  # how input is pulled; building a run's segments and backends
    {"_hub"},  # the event loop
    {"_base"},
    {"pipeline", "sequential"},
    {"__init__"},
    {"__main__"},
]
# What a worker process runs, and all it imports: it never needs the hub.
CHILD_SIDE = "_worker"
HUB_SIDE = {"_hub", "_intake", "_assembly", "_feeder", "_segments", "_master", "_flow",
            "_procs", "_spawn", "_watchdog", "_pool", "_rerun", "_credit", "_sizing", "_checkpoint",
            "_executors", "_aio", "_plan", "_base", "_recorder", "_progress", "_adaptive",
            "pipeline", "sequential", "__init__"}


def imports(path: Path) -> set[str]:
    """The blpipe modules ``path`` imports, by name, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == "blpipe":
                base = node.module.partition(".")[2] or None
            else:
                continue
            if base is None:  # from . import x / from blpipe import x
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
                found.add("__init__")
            else:
                found.add(base.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "blpipe":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in sorted(package.glob("*.py"))}


def layer_of() -> dict[str, int]:
    return {name: i for i, layer in enumerate(LAYERS) for name in layer}


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that does not point to an earlier layer, or touches an unplaced module."""
    layers = layer_of()
    found = [f"{m} is in no layer: place it in tests/test_layering.py"
             for m in sorted(edges) if m not in layers]
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if target not in layers or module not in layers:
                continue
            if layers[target] >= layers[module]:
                found.append(f"{module} (layer {layers[module]}) imports {target} "
                             f"(layer {layers[target]})")
    return found


def closure(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        for t in edges.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_every_module_is_in_a_layer() -> None:
    modules = set(graph())
    placed = set(layer_of())
    assert modules - placed == set(), "place new modules in LAYERS"
    assert placed - modules == set(), "LAYERS names a module that is gone"


def test_imports_point_only_to_earlier_layers() -> None:
    assert violations(graph()) == []


def test_the_child_side_never_imports_the_hub_side() -> None:
    assert closure(graph(), CHILD_SIDE) & HUB_SIDE == set()


# The checks must be able to fail: each rule broken on purpose, on a copy.

@pytest.mark.parametrize(("module", "line", "expected"), [
    ("_segments", "from ._hub import Hub", "_segments (layer 11) imports _hub (layer 19)"),
    ("_chain", "from blpipe import _flow", "_chain (layer 6) imports _flow (layer 6)"),
    ("errors", "import blpipe.pipeline", "errors (layer 1) imports pipeline (layer 21)"),
])
def test_an_upward_import_is_caught(tmp_path: Path, module: str, line: str,
                                    expected: str) -> None:
    edges = graph(_copy(tmp_path, module, line))
    assert expected in violations(edges)


def test_a_worker_importing_the_hub_side_is_caught(tmp_path: Path) -> None:
    edges = graph(_copy(tmp_path, "_transport", "from ._procs import Procs"))
    assert "_procs" in closure(edges, CHILD_SIDE) & HUB_SIDE


def test_an_unplaced_module_is_caught(tmp_path: Path) -> None:
    copy = _copy(tmp_path, "errors", "")
    (copy / "_stray.py").write_text("from .errors import BrokenPipeline\n")
    assert "_stray is in no layer: place it in tests/test_layering.py" in violations(graph(copy))


def _copy(tmp_path: Path, module: str, line: str) -> Path:
    for p in PACKAGE.glob("*.py"):
        text = p.read_text()
        if p.stem == module:
            text += f"\n{line}\n"
        (tmp_path / p.name).write_text(text)
    return tmp_path


def test_a_worker_process_loads_no_hub_side_module() -> None:
    """What a worker imports at run time, package __init__ included: a spawned
    worker pays for every module it loads."""
    import subprocess
    import sys

    code = ("import sys, blpipe._worker; "
            "print(' '.join(m.split('.')[1] for m in sys.modules if m.startswith('blpipe.')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, timeout=60).stdout.split())
    assert "_worker" in loaded
    assert loaded & HUB_SIDE == set()
