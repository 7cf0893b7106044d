"""Items are opaque: blpipe never compares, hashes or tests the truth of one.

NumPy arrays answer ``==`` elementwise and refuse ``bool()``, pandas objects
likewise, and any object may refuse ``==``, ``bool()`` or ``hash()``. Each
such item, and each falsy one, goes through every placement unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline
from tests.stages import Full4, Hostile, Same, Total

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

pytestmark = pytest.mark.timeout(60)


def items() -> dict[str, list[Any]]:
    return {
        "arrays": [np.full(4, i) for i in range(12)] + [np.arange(6).reshape(2, 3)],
        "frames": [pd.DataFrame({"a": [i, i + 1], "b": ["x", "y"]}) for i in range(6)],
        "series": [pd.Series([i, i * 2]) for i in range(6)],
        "hostile": [Hostile(i) for i in range(12)],
        "falsy": [0, "", [], (), b"", 0.0, False, {}, set(), np.array([]), float("nan"),
                  pd.DataFrame()],
    }


def canon(x: Any) -> Any:
    """A comparable stand-in for an item, built without comparing the item itself."""
    if isinstance(x, np.ndarray):
        return "ndarray", x.shape, x.tolist()
    if isinstance(x, pd.DataFrame):
        return "frame", x.to_dict("list")
    if isinstance(x, pd.Series):
        return "series", x.tolist()
    if isinstance(x, Hostile):
        return "hostile", x.tag
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return type(x).__name__, repr(x)


# Two stages of each placement, so fused, linked and chained paths all run.
PLACEMENTS: dict[str, Callable[[], list[Any]]] = {
    "fused pool": lambda: [Same(stateful=False, batch_size=4), Same(stateful=False,
                                                                   batch_size=4)],
    "window": lambda: [Same(stateful=2, batch_size=4), Same(stateful=False, batch_size=3)],
    "dedicated": lambda: [Same(batch_size=4), Same(stateful=False, batch_size=2)],
    "linked": lambda: [Same(batch_size=4), Same(batch_size=4)],
    "master": lambda: [Same(run_in_master=True), Same(run_in_master=True)],
    "thread": lambda: [Same(stateful=False, threads=2, batch_size=4),
                       Same(stateful=2, threads=2, batch_size=4)],
}


def expected(kind: str, data: list[Any]) -> list[Any]:
    windows = sum(1 for op in PLACEMENTS[kind]() if getattr(op, "stateful", True) == 2)
    return [canon(x) for x in data[windows:]]


@pytest.mark.parametrize("kind", sorted(PLACEMENTS))
@pytest.mark.parametrize("family", sorted(items()))
def test_any_item_through_any_placement(kind: str, family: str) -> None:
    data = items()[family]
    with Pipeline(PLACEMENTS[kind](), n_cpu=2) as p:
        assert [canon(y) for y in p.apply(data)] == expected(kind, data)


@pytest.mark.parametrize("family", sorted(items()))
def test_any_item_through_sequential(family: str) -> None:
    data = items()[family]
    for kind in PLACEMENTS:
        with SequentialPipeline(PLACEMENTS[kind]()) as p:
            assert [canon(y) for y in p.apply(data)] == expected(kind, data)


@pytest.mark.parametrize("family", sorted(items()))
def test_any_item_through_an_executor(family: str) -> None:
    data = items()[family]
    with ThreadPoolExecutor(2) as ex, Pipeline(PLACEMENTS["window"](), executor=ex) as p:
        assert [canon(y) for y in p.apply(data)] == expected("window", data)


def test_any_item_under_every_start_method(start_method: str) -> None:
    data = [x for family in items().values() for x in family]
    ops = [Same(stateful=False, batch_size=8), Same(stateful=False, batch_size=8),
           Same(batch_size=8), Same(batch_size=8), Same(stateful=3, batch_size=8)]
    with Pipeline(ops, n_cpu=3, start_method=start_method) as p:
        assert [canon(y) for y in p.apply(data)] == [canon(x) for x in data[2:]]


def numpy_pipeline(**attrs: Any) -> list[Any]:
    return [Full4(**attrs), Total(**attrs)]


@pytest.mark.parametrize("attrs", [
    {"stateful": False, "batch_size": 8},  # fused in the pool: the first report of the bug
    {"stateful": True, "batch_size": 8},
    {"run_in_master": True},
    {"stateful": False, "threads": 2},
], ids=["pool", "dedicated", "master", "thread"])
def test_arrays_between_stages(attrs: dict[str, Any]) -> None:
    with Pipeline(numpy_pipeline(**attrs), n_cpu=2) as p:
        assert list(p.apply(range(50))) == [4 * i for i in range(50)]
    with SequentialPipeline(numpy_pipeline(**attrs)) as s:
        assert list(s.apply(range(50))) == [4 * i for i in range(50)]


def _blpipe_bug(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug inside blpipe's worker code")


@pytest.mark.parametrize("stateful", [False, True, 2], ids=["pool", "dedicated", "window"])
def test_blpipe_failing_in_a_worker_is_not_a_death(monkeypatch: pytest.MonkeyPatch,
                                                   stateful: Any) -> None:
    """blpipe's own exception in a worker is reported as blpipe's, with the worker's
    traceback, never as the stage killing its process."""
    import blpipe._core.results
    from blpipe import BrokenPipeline, RemoteTraceback, WorkerDied

    monkeypatch.setattr(blpipe._core.results, "carried", _blpipe_bug)  # inherited under fork
    with (Pipeline([Same(stateful=stateful, batch_size=4)], start_method="fork") as p,
          pytest.raises(BrokenPipeline) as info):
        list(p.apply(range(20)))
    assert not isinstance(info.value, WorkerDied)
    assert "blpipe itself failed" in str(info.value)
    assert "stage 0 (Same())" in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "a bug inside blpipe's worker code" in str(info.value.__cause__)


@pytest.mark.parametrize("where", ["executor", "thread"])
def test_blpipe_failing_in_a_task_is_not_the_executors(monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    import blpipe._core.tasks
    from blpipe import BrokenPipeline, RemoteTraceback

    monkeypatch.setattr(blpipe._core.tasks, "carried", _blpipe_bug)
    threads = {"threads": 2} if where == "thread" else {}
    with (ThreadPoolExecutor(2) as ex,
          Pipeline([Same(stateful=False, batch_size=4, **threads)],
                   executor=ex if where == "executor" else None) as p,
          pytest.raises(BrokenPipeline) as info):
        list(p.apply(range(20)))
    assert "blpipe itself failed" in str(info.value)
    assert "stage 0 (Same())" in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "a bug inside blpipe's worker code" in str(info.value.__cause__)
