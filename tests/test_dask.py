"""The executor checks on a real ``dask.distributed.LocalCluster`` of 2 worker processes.

The cluster lives for the module, so this module's leak check looks only at
what blpipe owns: processes named ``blpipe ...`` and resource tracker reports.
These tests run last (see ``conftest.py``), and the stateful stages here do
not fork this process: the Dask client leaves threads running in it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import psutil
import pytest

from tests import executor_checks as checks
from tests.helpers import wait_no_children

distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    with cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def executor(client: Any) -> Executor:
    return client.get_executor()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def no_leaks(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(out)
    sys.stderr.write(err)
    assert "resource_tracker" not in err, err

    def ours() -> list[psutil.Process]:
        found = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "blpipe" in p.name():
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    left = ours()
    if left:
        wait_no_children(3.0)
        left = ours()
    assert not left, f"blpipe processes left behind: {left}"


def test_matches_sequential_forkserver(executor: Executor) -> None:
    # not fork: the Dask client runs threads in this process, and forking it is unsafe
    checks.check_matches_sequential(executor, "forkserver")


def test_matches_sequential_spawn(executor: Executor) -> None:
    checks.check_matches_sequential(executor, "spawn")


def test_stage_error(executor: Executor) -> None:
    checks.check_stage_error(executor)


def test_bounded(executor: Executor) -> None:
    checks.check_bounded(executor)


def test_two_pipelines_share_it(executor: Executor) -> None:
    checks.check_two_pipelines_share_it(executor)


def test_width_is_the_cluster_threads(executor: Executor) -> None:
    from blpipe import Pipeline
    from tests.stages import Add

    with Pipeline([Add(1)], executor=executor) as p:
        assert p.n_cpu == 2
        assert list(p.apply(range(3))) == [1, 2, 3]


def test_a_dead_dask_worker_is_an_error_not_a_hang() -> None:
    """Dask retries a task whose worker died; with no retries allowed it raises
    KilledWorker, which blpipe raises as WorkerDied with the stage's name."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        checks.check_dead_worker(c.get_executor(), "KilledWorker", at=300, inputs=1000,
                                 within=30)
