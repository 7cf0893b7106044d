"""Adjacent stateful stages are linked: each worker feeds the next, not through the caller."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from blpipe import Pipeline, WorkerDied
from tests.helpers import drain, wait_no_children
from tests.oracle import assert_matches_sequential
from tests.stages import DieAt, FailAt, Pid, RunningSum, Weighted

pytestmark = pytest.mark.timeout(60)


def chain3(**attrs: Any) -> list[Any]:
    return [Pid("a", stateful=True, batch_size=8, **attrs),
            Pid("b", stateful=True, batch_size=8, **attrs),
            Pid("c", stateful=True, batch_size=8, **attrs)]


def test_each_stage_has_its_own_process_in_one_segment(start_method: str) -> None:
    with Pipeline(chain3(), start_method=start_method) as p:
        out = list(p.apply(range(200)))
    assert [x for x, _ in out] == list(range(200))
    pids = {name: {pid for _, trace in out for n, pid in trace if n == name} for name in "abc"}
    assert all(len(v) == 1 for v in pids.values())
    assert len({next(iter(v)) for v in pids.values()}) == 3
    assert os.getpid() not in {next(iter(v)) for v in pids.values()}
    stages = p.statistics().stages
    assert len({s.segment for s in stages}) == 1
    assert [s.items_in for s in stages] == [200, 200, 200]
    assert [s.items_out for s in stages] == [200, 200, 200]
    assert max(s.peak_in_flight for s in stages) <= 3 * 8  # the sum of their batch_size


def test_links_only_stages_of_one_batch_size() -> None:
    ops = [RunningSum(batch_size=8), RunningSum(batch_size=4),
           FailAt(-1, stateful=True, batch_size=4, on_error="skip"), RunningSum(batch_size=4)]
    with Pipeline(ops) as p:
        assert len(list(p.apply(range(50)))) == 50
    assert [s.segment for s in p.statistics().stages] == [0, 1, 2, 3]


def test_matches_sequential_with_none_and_windows(start_method: str) -> None:
    def ops() -> list[Any]:
        return [RunningSum(batch_size=16), FailAt(-1, stateful=True, batch_size=16),
                RunningSum(batch_size=16), Weighted(3, batch_size=16)]

    data = [None if i % 5 == 0 else i for i in range(3000)]
    assert_matches_sequential(ops, data, n_cpu=2, start_method=start_method)


class Drop:
    """Stateful: drops odd inputs, so the next linked stage gets fewer."""

    batch_size = 8

    def __call__(self, x: int) -> int | None:
        return None if x % 2 else x


@pytest.mark.parametrize("at", [0, 1, 2])
def test_a_stage_error_anywhere_in_a_link(at: int) -> None:
    def ops() -> list[Any]:
        stages: list[Any] = [RunningSum(batch_size=8), Drop(), RunningSum(batch_size=8)]
        stages.insert(at, FailAt(600, stateful=True, batch_size=8))
        return stages

    _, failure = assert_matches_sequential(ops, range(0, 5000, 2), raises=(ValueError,))
    assert failure == (ValueError, ("bad 600", 600))


@pytest.mark.parametrize("at", [0, 1, 2])
def test_a_death_anywhere_in_a_link(at: int, start_method: str) -> None:
    """Outputs of every chunk that got past the dead worker, then its death, by name."""
    stages: list[Any] = [Pid("a", stateful=True, batch_size=4), Pid("b", stateful=True,
                                                                    batch_size=4)]
    stages.insert(at, Dies(100, batch_size=4))
    with Pipeline(stages, start_method=start_method) as p:
        start = time.monotonic()
        got, err = drain(p.apply(range(1000)))
        took = time.monotonic() - start
    assert isinstance(err, WorkerDied)
    assert f"stage {at} (Dies())" in str(err)
    assert err.exitcode == 3
    xs = [x for x, _ in got] if got and isinstance(got[0], tuple) else got
    assert xs == list(range(len(xs)))
    assert len(xs) <= 100
    assert took < 5
    assert not wait_no_children()


class Dies(DieAt):
    """DieAt for tagged items: ends its process on ``x == at`` with exit code 3."""

    def __init__(self, at: int, **attrs: Any) -> None:
        super().__init__(at, 3, stateful=True, **attrs)

    def __call__(self, item: Any) -> Any:
        x = item[0] if isinstance(item, tuple) else item
        super().__call__(x)
        return item


@pytest.mark.parametrize("which", [0, 1, 2])
def test_an_idle_linked_worker_killed_fails_the_next_input(which: int) -> None:
    with Pipeline(chain3()) as p:
        out = p.apply(iter(range(10**6)))
        first = next(out)
        victim = next(pid for name, pid in first[1] if name == "abc"[which])
        os.kill(victim, signal.SIGKILL)
        got, err = drain(out)
    assert isinstance(err, WorkerDied)
    assert f"stage {which} (Pid())" in str(err)
    assert len(got) < 10**6


def test_large_items_through_a_link() -> None:
    big = [bytes([i % 251]) * 300_000 for i in range(40)]
    ops = [Pid("a", stateful=True, batch_size=4), Pid("b", stateful=True, batch_size=4)]
    with Pipeline(ops) as p:
        out = list(p.apply(big))
    assert [x for x, _ in out] == big
    assert [s.segment for s in p.statistics().stages] == [0, 0]  # they were linked
