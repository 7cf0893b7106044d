"""``Pipeline(executor=...)``: pool stages on a ``concurrent.futures`` executor.

The checks are plain functions of an executor, so ``test_dask.py`` runs the
same ones on a Dask cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from blpipe import (
    BrokenPipeline,
    Pipeline,
    RemoteTraceback,
    SequentialPipeline,
    SerializationError,
    WorkerDied,
    stage,
)
from tests.helpers import Endless, drain
from tests.stages import Add, DieAt, DropMultiples, FailAt, RunningSum, Sleepy, Weighted

pytestmark = pytest.mark.timeout(60)


def mixed() -> list[Any]:
    """Every kind around the executor's stages: fused pool, stateful, window, None."""
    return [Add(1, batch_size=32), DropMultiples(5, batch_size=32), RunningSum(batch_size=4),
            Weighted(3, batch_size=16), Add(2, batch_size=8)]


def check_matches_sequential(executor: Executor, start_method: str = "fork") -> None:
    data = [None if i % 13 == 0 else i for i in range(2000)]
    with SequentialPipeline(mixed()) as ref:
        expected = list(ref.apply(data))
    with Pipeline(mixed(), n_cpu=2, executor=executor, start_method=start_method) as p:
        assert list(p.apply(data)) == expected
    placements = [s.placement for s in p.statistics().stages]
    assert placements == ["pool", "pool", "dedicated", "pool", "pool"]


def check_stage_error(executor: Executor) -> None:
    with Pipeline([Add(0, batch_size=16), FailAt(700, stateful=False, batch_size=16)],
                  executor=executor) as p:
        got, err = drain(p.apply(range(2000)))
    assert got == list(range(700))
    assert isinstance(err, ValueError)
    assert err.args == ("bad 700", 700)
    assert any("stage 1 (FailAt())" in n and "700" in n for n in err.__notes__)
    assert isinstance(err.__cause__, RemoteTraceback)
    assert "raise ValueError" in str(err.__cause__)


def check_bounded(executor: Executor) -> None:
    src = Endless()
    with Pipeline([Sleepy(0.001, stateful=False, batch_size=8), Weighted(2, batch_size=8)],
                  executor=executor) as p:
        for i, _ in enumerate(p.apply(src)):
            if i == 200:
                break
        peaks = [s.peak_in_flight for s in p.statistics().stages]
    assert max(peaks) <= 8
    assert src.pulled <= 201 + 8 + 8 + 64


def check_two_pipelines_share_it(executor: Executor) -> None:
    """Each pipeline's stages are its own, though the executor's workers outlive it."""
    for k in (10, 20):
        with Pipeline([Add(k, batch_size=8)], executor=executor) as p:
            assert list(p.apply(range(50))) == [x + k for x in range(50)]
    assert executor.submit(abs, -3).result(timeout=30) == 3  # not shut down by blpipe


@pytest.fixture(params=["process", "thread"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    ex: Executor = ProcessPoolExecutor(2) if request.param == "process" else ThreadPoolExecutor(4)
    with ex:
        yield ex


def test_matches_sequential(executor: Executor) -> None:
    check_matches_sequential(executor)


def test_matches_sequential_spawn() -> None:
    with ProcessPoolExecutor(2) as ex:
        check_matches_sequential(ex, "spawn")


def test_stage_error(executor: Executor) -> None:
    check_stage_error(executor)


def test_bounded(executor: Executor) -> None:
    check_bounded(executor)


def test_two_pipelines_share_it(executor: Executor) -> None:
    check_two_pipelines_share_it(executor)


def test_width_is_the_pool_size() -> None:
    with ThreadPoolExecutor(5) as ex, Pipeline([Add(1)], executor=ex) as p:
        assert p.n_cpu == 5
        assert list(p.apply([1])) == [2]


def test_a_dead_executor_worker_is_an_error_not_a_hang() -> None:
    die = DieAt(600, 3, stateful=False, batch_size=16)
    with ProcessPoolExecutor(2) as ex, Pipeline([die], executor=ex) as p:
        start = time.monotonic()
        got, err = drain(p.apply(range(2000)))
        took = time.monotonic() - start
    assert isinstance(err, WorkerDied), err
    assert "stage 0 (DieAt())" in str(err)
    assert "BrokenProcessPool" in str(err)
    assert got == list(range(len(got)))
    assert len(got) <= 600
    assert took < 10


def test_an_item_the_executor_cannot_pickle() -> None:
    data: list[Any] = [*range(100), lambda: 0, *range(100)]
    as_text = stage(repr, stateful=False, batch_size=4)
    with ProcessPoolExecutor(2) as ex, Pipeline([as_text], executor=ex) as p:
        got, err = drain(p.apply(data))
    assert isinstance(err, SerializationError), err
    assert "stage 0 (repr)" in str(err)
    assert got == [repr(x) for x in range(len(got))]
    assert len(got) <= 100


def test_an_executor_that_refuses_work_is_an_error_not_a_hang() -> None:
    ex = ThreadPoolExecutor(2)
    ex.shutdown()  # submit now raises RuntimeError
    with Pipeline([Add(1, batch_size=4)], executor=ex) as p:
        got, err = drain(p.apply(range(100)))
    assert isinstance(err, BrokenPipeline)
    assert "stage 0 (Add())" in str(err)
    assert "RuntimeError" in str(err)
    assert got == []
