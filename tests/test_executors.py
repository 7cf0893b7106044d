"""``Pipeline(executor=...)``: pool stages on a ``concurrent.futures`` executor.

The checks shared with ``test_dask.py`` are in ``tests/executor_checks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from blpipe import (
    BrokenPipeline,
    Pipeline,
    SerializationError,
    stage,
)
from tests.executor_checks import (
    check_bounded,
    check_dead_worker,
    check_matches_sequential,
    check_stage_error,
    check_two_pipelines_share_it,
)
from tests.helpers import drain
from tests.stages import Add

pytestmark = pytest.mark.timeout(60)


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
    with ProcessPoolExecutor(2) as ex:
        check_dead_worker(ex, "BrokenProcessPool", at=600, inputs=2000, within=10)


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
