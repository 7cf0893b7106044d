"""Checks of ``Pipeline(executor=...)``, as plain functions of an executor, so that
``test_executors.py`` runs them on ``concurrent.futures`` executors and
``test_dask.py`` on a Dask cluster."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Any

from blpipe import (
    Pipeline,
    RemoteTraceback,
    SequentialPipeline,
    WorkerDied,
)
from tests.helpers import Endless, drain, take
from tests.stages import Add, DieAt, DropMultiples, FailAt, RunningSum, Sleepy, Weighted


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
        take(p.apply(src), 201)
        peaks = [s.peak_in_flight for s in p.statistics().stages]
    assert max(peaks) <= 8
    assert src.pulled <= 201 + 8 + 8 + 64


def check_two_pipelines_share_it(executor: Executor) -> None:
    """Each pipeline's stages are its own, though the executor's workers outlive it."""
    for k in (10, 20):
        with Pipeline([Add(k, batch_size=8)], executor=executor) as p:
            assert list(p.apply(range(50))) == [x + k for x in range(50)]
    assert executor.submit(abs, -3).result(timeout=30) == 3  # not shut down by blpipe


def check_dead_worker(executor: Executor, marker: str, at: int, inputs: int,
                      within: float) -> None:
    """An executor's worker dies on input ``at``: a WorkerDied that names the stage and
    ``marker`` (how the executor reported the death), within ``within`` seconds."""
    die = DieAt(at, 3, stateful=False, batch_size=16)
    with Pipeline([die], executor=executor) as p:
        start = time.monotonic()
        got, err = drain(p.apply(range(inputs)))
        took = time.monotonic() - start
    assert isinstance(err, WorkerDied), err
    assert "stage 0 (DieAt())" in str(err)
    assert marker in str(err)
    assert got == list(range(len(got)))
    assert len(got) <= at
    assert took < within
