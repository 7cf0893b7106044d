"""blpipe's modules import one way: each only from modules of earlier layers.

The layers, bottom up: the leaves (errors, statistics); ``_core``, what runs
in any process; the contract's public faces (stages, errorlog); ``_hub``,
what runs in the calling process only; the pipelines; the package; the demo.
A worker process (``_core.worker`` and all it imports) never loads the
calling process's side. A new module must be placed in a layer.

Names. A module is named by its whole dotted import name (``blpipe._hub.loop``,
``blpipe._core.chain``); a package's ``__init__.py`` by the package's own name
(``blpipe`` for the top one, ``blpipe._core`` for a subpackage). An entry of
LAYERS, HUB_SIDE or CHILD_SIDE names one module, or, written ``pkg.*``, a
subpackage as a whole: its ``__init__`` and every module under it, at any
depth. Every module is placed exactly once. The modules of a subpackage placed
as a whole share its layer and may import each other; a subpackage placed
module by module (``blpipe._core`` for its ``__init__``, then each module)
obeys the layers inside too.

What counts as an import: every ``import`` and ``from ... import`` statement,
at any depth (in functions, under ``if TYPE_CHECKING:``), absolute or relative
at any level. ``from pkg import name`` counts as an import of ``pkg.name``
when that is a module or subpackage, else of ``pkg`` itself. For the layers
an import of ``pkg.mod`` counts as one of ``pkg.mod`` alone; what a worker
loads also counts the subpackages above it, whose ``__init__`` Python runs
first (not the top package: its ``__init__`` imports nothing until one of its
names is used, and using one is an import of ``blpipe``, which is hub side).
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path

import pytest

import blpipe

PACKAGE = Path(blpipe.__file__).parent
TOP = "blpipe"

LAYERS: list[set[str]] = [
    # the leaves: what a user catches, and the figures a user reads
    {"blpipe.errors", "blpipe.statistics"},
    # what runs in any process: the stage contract, chains, wrappers, failures,
    # messages, frames, shared memory, the worker
    {"blpipe._core.*"},
    # the contract's public faces: stage() and the error log
    {"blpipe.stages", "blpipe.errorlog"},
    # what runs in the calling process only: the hub, segments, worker processes,
    # executors, async stages, checkpoints, figures
    {"blpipe._hub.*"},
    {"blpipe.pipeline", "blpipe.sequential"},  # the pipelines
    {"blpipe"},  # the package: every public name, once
    {"blpipe.__main__"},  # the demo
]
# What a worker process runs, and all it imports: it never needs the calling process's side.
CHILD_SIDE = "blpipe._core.worker"
HUB_SIDE = {"blpipe._hub.*", "blpipe.pipeline", "blpipe.sequential", "blpipe"}


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, subpackages included, by its dotted name."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((TOP, *parts))] = path
    return found


def imports(source: str, module: str, is_package: bool, known: Collection[str]) -> set[str]:
    """The blpipe modules that ``module``'s ``source`` imports, by whole dotted
    name, at any depth of its code; ``known`` are the package's module names."""
    here = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _ours(a.name)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                if node.level > len(parts):
                    continue  # above the top package: Python refuses it
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if _ours(target):
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                          for a in node.names}
    found.discard(module)
    return found


def _ours(name: str) -> bool:
    return name == TOP or name.startswith(f"{TOP}.")


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found) | {p for m in found for p in _parents(m)}
    return {m: imports(p.read_text(), m, p.name == "__init__.py", known)
            for m, p in found.items()}


def _parents(module: str) -> list[str]:
    """The subpackages ``module`` is in, the top package left out."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def covers(entry: str, module: str) -> bool:
    """Whether an entry (a module, or ``pkg.*`` for a subpackage as a whole) names ``module``."""
    if entry.endswith(".*"):
        return module == entry[:-2] or module.startswith(entry[:-1])
    return module == entry


def side(entries: Iterable[str], names: Iterable[str]) -> set[str]:
    """The ``names`` that ``entries`` cover."""
    entries = list(entries)
    return {m for m in names if any(covers(e, m) for e in entries)}


def places(module: str, layers: list[set[str]] = LAYERS) -> list[tuple[int, str]]:
    """The layers and entries that place ``module``: exactly one, unless misplaced."""
    return [(i, e) for i, layer in enumerate(layers) for e in sorted(layer) if covers(e, module)]


def misplaced(names: Collection[str], layers: list[set[str]] = LAYERS) -> list[str]:
    """Modules in no layer or in several, and entries that name no module."""
    found = []
    for m in sorted(names):
        where = places(m, layers)
        if not where:
            found.append(f"{m} is in no layer: place it in tests/test_layering.py")
        elif len(where) > 1:
            found.append(f"{m} is placed more than once: {[e for _, e in where]}")
    found += [f"LAYERS names {e}, which is no module: it is gone, or misspelt"
              for layer in layers for e in sorted(layer) if not side([e], names)]
    return found


def violations(edges: dict[str, set[str]], layers: list[set[str]] = LAYERS) -> list[str]:
    """Every import that does not point to an earlier layer, and every misplaced module."""
    found = misplaced(edges, layers)
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            (here, there) = places(module, layers), places(target, layers)
            if len(here) != 1 or len(there) != 1:
                continue  # reported above, or not a module of the package
            (i, entry), (j, target_entry) = here[0], there[0]
            if entry == target_entry:
                continue  # within a subpackage placed as a whole
            if j >= i:
                found.append(f"{module} (layer {i}) imports {target} (layer {j})")
    return found


def loaded_by(edges: dict[str, set[str]], start: Iterable[str]) -> set[str]:
    """The modules that importing ``start`` loads: what each imports, and the
    subpackages above each, whose ``__init__`` runs first; transitively."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        m = todo.pop()
        for t in [*edges.get(m, ()), *_parents(m)]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_every_module_is_in_a_layer() -> None:
    assert misplaced(list(graph())) == []


def test_imports_point_only_to_earlier_layers() -> None:
    assert violations(graph()) == []


def test_the_sides_name_modules_that_exist() -> None:
    """A misspelt name would make the side check below pass, checking nothing."""
    names = set(graph())
    assert [e for e in sorted([CHILD_SIDE, *HUB_SIDE]) if not side([e], names)] == []
    assert side([CHILD_SIDE], names) & side(HUB_SIDE, names) == set()


def test_the_child_side_never_imports_the_hub_side() -> None:
    edges = graph()
    child = side([CHILD_SIDE], edges)
    assert loaded_by(edges, child) & side(HUB_SIDE, edges) == set()


# The checks must be able to fail: each rule broken on purpose, on a copy.

@pytest.mark.parametrize(("module", "line", "target"), [
    ("blpipe._hub.segments", "from ..pipeline import Pipeline", "blpipe.pipeline"),
    ("blpipe._core.chain", "from blpipe._hub import flow", "blpipe._hub.flow"),
    ("blpipe.errors", "import blpipe.pipeline", "blpipe.pipeline"),
    ("blpipe._core.chain", "from .. import _hub", "blpipe._hub"),
    ("blpipe._core.chain", "from .. import __version__", "blpipe"),  # a name of the package's own
    ("blpipe._core.chain", "from blpipe import Pipeline", "blpipe"),
    ("blpipe.errors", "def late() -> None:\n    import blpipe._hub.loop", "blpipe._hub.loop"),
    ("blpipe.errors", "class Late:\n    def f(self) -> None:\n        from ._hub.loop import Hub",
     "blpipe._hub.loop"),
    ("blpipe._core.text",
     "import typing\nif typing.TYPE_CHECKING:\n    from ..pipeline import Pipeline",
     "blpipe.pipeline"),
], ids=["relative", "from-blpipe-import-module", "import", "from-dot-import-module",
        "from-dot-import-name", "from-blpipe-import-name", "in-a-function", "in-a-method",
        "under-TYPE_CHECKING"])
def test_an_upward_import_is_caught(tmp_path: Path, module: str, line: str,
                                    target: str) -> None:
    assert _upward(module, target) in violations(graph(_copy(tmp_path, module, line)))


WHOLE = [{"blpipe._sub.*"}, *LAYERS]
BY_MODULE = [{"blpipe._sub"}, {"blpipe._sub.low"}, *LAYERS]


@pytest.mark.parametrize("layers", [WHOLE, BY_MODULE], ids=["whole", "by-module"])
def test_an_upward_import_in_a_subpackage_is_caught(tmp_path: Path,
                                                    layers: list[set[str]]) -> None:
    copy = _copy(tmp_path)
    _write(copy, "_sub/__init__.py", "")
    _write(copy, "_sub/low.py", "from .._hub.loop import Hub\n")
    edges = graph(copy)
    assert edges["blpipe._sub.low"] == {"blpipe._hub.loop"}
    assert _about_sub(violations(edges, layers)) == [
        _upward("blpipe._sub.low", "blpipe._hub.loop", layers)]


# blpipe/_sub/deep/low.py, low in the layers, imports blpipe/_sub/high.py and
# blpipe/_sub/__init__.py (the top layer) in every form, at every level.
DEEP = [{"blpipe._sub.deep.*"}, *LAYERS, {"blpipe._sub", "blpipe._sub.high"}]


@pytest.mark.parametrize(("line", "target"), [
    ("from ..high import x", "blpipe._sub.high"),
    ("from .. import high", "blpipe._sub.high"),
    ("from .. import x", "blpipe._sub"),
    ("from ..._hub.loop import Hub", "blpipe._hub.loop"),
    ("from ... import _hub", "blpipe._hub"),
    ("from ..._sub.high import x", "blpipe._sub.high"),
    ("from ...pipeline import Pipeline", "blpipe.pipeline"),
    ("import blpipe._sub.high", "blpipe._sub.high"),
    ("from blpipe._sub import high", "blpipe._sub.high"),
    ("from blpipe._sub import x", "blpipe._sub"),
    ("def late() -> None:\n    from ..high import x", "blpipe._sub.high"),
], ids=["2-module", "2-from-dots-import-module", "2-from-dots-import-name", "3-module",
        "3-from-dots-import-module", "3-dotted-module", "3-other-module", "import",
        "from-blpipe-import-module", "from-blpipe-import-name", "2-in-a-function"])
def test_relative_imports_at_any_level_are_caught(tmp_path: Path, line: str,
                                                  target: str) -> None:
    copy = _copy(tmp_path)
    _write(copy, "_sub/__init__.py", "x = 1\n")
    _write(copy, "_sub/high.py", "x = 1\n")
    _write(copy, "_sub/deep/__init__.py", "")
    _write(copy, "_sub/deep/low.py", f"{line}\n")
    edges = graph(copy)
    assert edges["blpipe._sub.deep.low"] == {target}
    assert _about_sub(violations(edges, DEEP)) == [_upward("blpipe._sub.deep.low", target, DEEP)]


def test_a_subpackage_placed_whole_may_import_itself(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _write(copy, "_sub/__init__.py", "from .low import x\n")
    _write(copy, "_sub/low.py", "from . import high\nx = 1\n")
    _write(copy, "_sub/high.py", "from .low import x\n")
    assert _about_sub(violations(graph(copy), [*LAYERS, {"blpipe._sub.*"}])) == []
    by_module = [*LAYERS, {"blpipe._sub.low"}, {"blpipe._sub.high"}, {"blpipe._sub"}]
    assert _about_sub(violations(graph(copy), by_module)) == [
        _upward("blpipe._sub.low", "blpipe._sub.high", by_module)]


def test_a_worker_importing_the_hub_side_is_caught(tmp_path: Path) -> None:
    edges = graph(_copy(tmp_path, "blpipe._core.transport", "from .._hub.procs import Procs"))
    assert "blpipe._hub.procs" in loaded_by(edges, [CHILD_SIDE]) & side(HUB_SIDE, edges)


def test_a_worker_loading_a_subpackage_that_imports_the_hub_side_is_caught(
        tmp_path: Path) -> None:
    """Importing ``blpipe._sub.leaf`` runs ``blpipe/_sub/__init__.py`` first."""
    copy = _copy(tmp_path, "blpipe._core.worker", "from .._sub.leaf import x")
    _write(copy, "_sub/__init__.py", "from .._hub.procs import Procs\n")
    _write(copy, "_sub/leaf.py", "x = 1\n")
    edges = graph(copy)
    assert "blpipe._hub.procs" not in edges["blpipe._core.worker"]
    assert "blpipe._hub.procs" in loaded_by(edges, [CHILD_SIDE]) & side(HUB_SIDE, edges)


def test_an_unplaced_module_is_caught(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _write(copy, "_stray.py", "from .errors import BrokenPipeline\n")
    _write(copy, "_sub/__init__.py", "")
    _write(copy, "_sub/stray.py", "")
    assert misplaced(list(graph(copy))) == [
        f"{m} is in no layer: place it in tests/test_layering.py"
        for m in ["blpipe._stray", "blpipe._sub", "blpipe._sub.stray"]]


def test_a_module_placed_twice_or_a_gone_one_is_caught(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _write(copy, "_sub/__init__.py", "")
    layers = [{"blpipe._sub.*"}, {"blpipe._sub"}, {"blpipe._gone", "blpipe._none.*"}, *LAYERS]
    assert misplaced(list(graph(copy)), layers) == [
        "blpipe._sub is placed more than once: ['blpipe._sub.*', 'blpipe._sub']",
        "LAYERS names blpipe._gone, which is no module: it is gone, or misspelt",
        "LAYERS names blpipe._none.*, which is no module: it is gone, or misspelt"]


def _about_sub(found: list[str]) -> list[str]:
    """What ``found`` says of the test's subpackage; the rest of the package is
    checked by the tests above."""
    return [v for v in found if v.startswith("blpipe._sub")]


def _upward(module: str, target: str, layers: list[set[str]] = LAYERS) -> str:
    (i, _), (j, _) = places(module, layers)[0], places(target, layers)[0]
    return f"{module} (layer {i}) imports {target} (layer {j})"


def _copy(tmp_path: Path, module: str = "", line: str = "") -> Path:
    """A copy of the package, subpackages included, with ``line`` added to ``module``."""
    copy = tmp_path / TOP
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    if module:
        path = modules(copy)[module]
        path.write_text(f"{path.read_text()}\n{line}\n")
    return copy


def _write(package: Path, name: str, text: str) -> None:
    (package / name).parent.mkdir(parents=True, exist_ok=True)
    (package / name).write_text(text)


def test_a_worker_process_loads_no_hub_side_module() -> None:
    """What a worker imports at run time: a spawned worker pays for every module
    it loads. The top package is left out: any of its modules loads it, and
    its __init__ imports nothing until a name is used (the static check
    above covers that)."""
    import subprocess
    import sys

    code = ("import sys, blpipe._core.worker; "
            "print(' '.join(m for m in sys.modules if m.startswith('blpipe.')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, timeout=60).stdout.split())
    assert CHILD_SIDE in loaded
    assert loaded & side(HUB_SIDE, modules()) == set()
