"""Thread stages (``threads = n``) and unordered stages (``ordered = False``)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, stage
from tests.helpers import Endless, drain, take
from tests.oracle import assert_matches_sequential
from tests.stages import Add, FailAt, RunningSum, Sleepy, Weighted

pytestmark = pytest.mark.timeout(60)


def test_io_bound_stage_overlaps_its_waits() -> None:
    """50 waits of 20 ms in 32 threads: about two rounds, not a second."""
    io = Sleepy(0.02, stateful=False, threads=32, batch_size=64)
    with Pipeline([io], n_cpu=1) as p:
        start = time.monotonic()
        out = list(p.apply(range(50)))
        took = time.monotonic() - start
    assert out == list(range(50))
    assert took < 0.5, took  # one thread at a time would take 1.0 s


class Where:
    """Where it ran: ``(pid, thread name)``; it holds a lock, so it cannot pickle."""

    stateful = False
    threads = 4
    batch_size = 8

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x: int) -> tuple[int, str]:
        with self.lock:
            return os.getpid(), threading.current_thread().name


def test_runs_in_threads_of_the_caller_without_pickling(start_method: str) -> None:
    with Pipeline([Where()], start_method=start_method) as p:
        out = list(p.apply(range(40)))
    assert {pid for pid, _ in out} == {os.getpid()}
    assert all(name.startswith("blpipe stage 0") for _, name in out)
    assert p.statistics().stages[0].placement == "thread"
    assert p.statistics().stages[0].workers == 4


def test_thread_stages_mix_with_every_kind(start_method: str) -> None:
    def ops() -> list[Any]:
        a = Add(3, batch_size=16)
        a.threads = 3  # type: ignore[attr-defined]
        w = Weighted(3, batch_size=8)
        w.threads = 2  # type: ignore[attr-defined]
        return [a, RunningSum(batch_size=4), w, Add(1, batch_size=32)]

    data = [None if i % 7 == 0 else i for i in range(3000)]
    assert_matches_sequential(ops, data, n_cpu=2, start_method=start_method)


def test_a_failing_thread_stage_gives_earlier_outputs_then_its_error() -> None:
    with Pipeline([FailAt(300, stateful=False, threads=4, batch_size=16)]) as p:
        got, err = drain(p.apply(range(1000)))
    assert got == list(range(300))
    assert isinstance(err, ValueError)
    assert err.args == ("bad 300", 300)
    assert any("stage 0 (FailAt())" in n for n in err.__notes__)


def test_breaking_out_stops_the_threads() -> None:
    before = set(threading.enumerate())
    with Pipeline([Sleepy(0.01, stateful=False, threads=8, batch_size=16)]) as p:
        for x in p.apply(Endless()):
            if x == 20:
                during = [t for t in threading.enumerate() if t not in before]
                break
        else:
            pytest.fail("the endless stream ended")
    assert any(t.name.startswith("blpipe stage 0") for t in during), during
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, left


@pytest.mark.parametrize("kind", [{"threads": 4}, {}])
def test_unordered_gives_the_same_multiset(kind: dict[str, Any]) -> None:
    """Random sleeps reorder completions; nothing is lost or repeated."""
    def ops(ordered: bool) -> list[Any]:
        return [stage(jitter, stateful=False, batch_size=16, ordered=ordered, **kind),
                RunningSum(batch_size=4)]

    data = list(range(400))
    with Pipeline(ops(True), n_cpu=3) as p:
        ordered = list(p.apply(data))
    with Pipeline(ops(False), n_cpu=3) as q:
        unordered = list(q.apply(data))
    # The running sum sees its inputs in another order, but its final total
    # and the multiset of what reached it are the same.
    assert unordered[-1] == ordered[-1]
    def alone(ordered: bool) -> list[int]:
        with Pipeline([stage(jitter, stateful=False, batch_size=16, ordered=ordered, **kind)],
                      n_cpu=3) as r:
            return list(r.apply(data))

    assert Counter(alone(False)) == Counter(alone(True))


def jitter(x: int) -> int:
    time.sleep((x * 7919 % 13) / 4000)
    return x


@pytest.mark.parametrize("kind", [{"threads": 4}, {}])
def test_unordered_passes_a_slow_item_by(kind: dict[str, Any]) -> None:
    slow = Sleepy(1.0, at=0, stateful=False, batch_size=16, ordered=False, **kind)
    with Pipeline([slow], n_cpu=2) as p:
        out = list(p.apply(range(200)))
    assert sorted(out) == list(range(200))
    assert out[0] != 0
    assert out.index(0) > 100


@pytest.mark.parametrize("kind", [{"threads": 2}, {}])
def test_unordered_stays_bounded_on_an_endless_stream(kind: dict[str, Any]) -> None:
    src = Endless()
    with Pipeline([Add(0, batch_size=8), stage(jitter, stateful=False, batch_size=8,
                                                 ordered=False, **kind)], n_cpu=2) as p:
        take(p.apply(src), 301)
        peak = max(s.peak_in_flight for s in p.statistics().stages)
    assert peak <= 8
    assert src.pulled <= 301 + 8 + 8 + 64 + 8


@pytest.mark.parametrize("kind", [{"threads": 3}, {}])
def test_unordered_raises_after_every_earlier_output(kind: dict[str, Any]) -> None:
    fail = FailAt(250, stateful=False, batch_size=16, ordered=False, **kind)
    with Pipeline([Sleepy(0.001, stateful=False, batch_size=16), fail], n_cpu=2) as p:
        got, err = drain(p.apply(range(1000)))
    assert isinstance(err, ValueError)
    assert err.args == ("bad 250", 250)
    assert set(range(250)) <= set(got)
    assert 250 not in got


def test_sequential_pipeline_runs_them_in_order() -> None:
    ops = [Where(), stage(len, stateful=False, ordered=False)]
    with SequentialPipeline(ops) as p:
        assert list(p.apply(range(3))) == [2, 2, 2]
