"""``max_tasks_per_child``: pool workers replaced after n calls, nothing lost or reordered."""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from blpipe import Pipeline, stage
from tests.helpers import live_children
from tests.stages import Pid

pytestmark = pytest.mark.timeout(120)


def _pids(out: list[Any], name: str) -> Counter[int]:
    return Counter(pid for _, trace in out for who, pid in trace if who == name)


@pytest.mark.parametrize("ordered", [True, False])
def test_each_worker_makes_at_most_n_calls(start_method: str, ordered: bool) -> None:
    with Pipeline([Pid("p", batch_size=16, ordered=ordered)], n_cpu=2,
                  start_method=start_method, max_tasks_per_child=5) as p:
        out = []
        for y in p.apply(range(100)):
            out.append(y)
            if len(out) == 80:  # mid-run: a retired worker exits once it has finished
                deadline = time.monotonic() + 5
                while len(live_children()) > 6 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert len(live_children()) <= 6  # the pool, and those holding the 16 in flight
        stats = p.statistics()
    xs = [x for x, _ in out]
    assert (xs if ordered else sorted(xs)) == list(range(100))
    calls = _pids(out, "p")
    assert max(calls.values()) <= 5
    assert len(calls) >= 20  # 100 calls, 5 per worker
    assert os.getpid() not in calls
    assert stats.restarts >= 18  # the two first workers are not restarts


def test_fused_stages_count_each_input_once_and_windows_count_calls() -> None:
    first, second = Pid("a", batch_size=12), Pid("b", batch_size=12)
    window = Pid("w", stateful=3, batch_size=12)
    with Pipeline([first, second, window], n_cpu=2, max_tasks_per_child=4) as p:
        out = list(p.apply(range(60)))
    assert [x for x, _ in out] == list(range(2, 60))
    for name in "abw":
        assert max(_pids(out, name).values()) <= 4


def test_a_group_is_one_call() -> None:
    @stage(stateful=False, batch_size=12, group=3)
    def tag(g: list[int]) -> list[tuple[int, int]]:
        return [(x, os.getpid()) for x in g]

    with Pipeline([tag], n_cpu=2, max_tasks_per_child=2) as p:
        out = [y for ys in p.apply(range(60)) for y in ys]
    assert [x for x, _ in out] == list(range(60))
    assert max(Counter(pid for _, pid in out).values()) <= 6  # 2 groups of 3


def test_dedicated_stages_are_not_replaced() -> None:
    with Pipeline([Pid("d", stateful=True, batch_size=4)], max_tasks_per_child=1) as p:
        out = list(p.apply(range(20)))
        assert p.statistics().restarts == 0
    assert len(_pids(out, "d")) == 1


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError),
                                              (True, TypeError), (2.0, TypeError)])
def test_bad_values_fail_at_construction(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"max_tasks_per_child={value!r}"):
        Pipeline([Pid("p")], max_tasks_per_child=value)


def test_not_with_an_executor() -> None:
    with ThreadPoolExecutor(2) as ex, pytest.raises(ValueError, match="executor's workers"):
        Pipeline([Pid("p")], executor=ex, max_tasks_per_child=3)
