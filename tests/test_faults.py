"""Faults that must never hang: crashes, early stops, huge items, and the same in a loop."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from blpipe import Pipeline, SequentialPipeline, WorkerDied
from tests.helpers import Endless, MiB, drain, live_children, take, wait_idle, wait_no_children
from tests.stages import (
    SIGKILL,
    Add,
    Attrs,
    DieAt,
    FailAt,
    Pid,
    RunningSum,
    Segfault,
    Sleepy,
    Weighted,
)

STRESS_ROUNDS = int(os.environ.get("BLPIPE_STRESS_ROUNDS", "20"))


def test_segfault_is_named(start_method: str) -> None:
    with Pipeline([Add(0, batch_size=4), Segfault(7)], n_cpu=2,
                  start_method=start_method) as p:
        got, err = drain(p.apply(range(100)))
    assert got == list(range(7))
    assert isinstance(err, WorkerDied)
    assert "SIGSEGV(-11)" in str(err)
    assert "native code" in str(err)


def test_pool_survives_to_deliver_earlier_items() -> None:
    """A pool worker dies in one segment; another segment's earlier items still finish."""
    ops = [Add(0, batch_size=16), RunningSum(batch_size=8), DieAt(300, SIGKILL, stateful=False)]
    with Pipeline(ops, n_cpu=3) as p:
        got, err = drain(p.apply(itertools.repeat(1)))
    assert got == list(range(1, 300))
    assert isinstance(err, WorkerDied)


def test_busy_stage_elsewhere_does_not_delay_an_error(start_method: str) -> None:
    # The dedicated stage sleeps 30 s on input 20, which is later than the failing input 3.
    ops = [Sleepy(30, at=20, batch_size=8), FailAt(3, stateful=False, batch_size=4)]
    with Pipeline(ops, n_cpu=3, start_method=start_method) as p:
        out = p.apply(range(100))
        assert [next(out) for _ in range(3)] == [0, 1, 2]
        start = time.monotonic()
        with pytest.raises(ValueError, match="bad 3"):
            next(out)
        assert time.monotonic() - start < 0.5
    assert not wait_no_children(1.0)


@pytest.mark.parametrize("where", ["pool", "dedicated"])
def test_early_stop_while_stages_are_busy(where: str, start_method: str) -> None:
    source = Endless()
    busy = Sleepy(0.2, stateful=where == "dedicated", batch_size=4)
    with Pipeline([Add(0, batch_size=8), busy], n_cpu=3, start_method=start_method) as p:
        out = p.apply(source)
        next(out)
        seen = source.pulled
        # A fixed wait, as it checks for an absence: nothing is pulled while the consumer is
        # away (meanwhile every stage is inside a sleep, or blocked behind one).
        time.sleep(0.05)
        assert source.pulled == seen
    start = time.monotonic()
    assert not wait_no_children(1.0)
    assert time.monotonic() - start < 1.0
    del out


def test_early_stop_while_a_worker_is_blocked_writing() -> None:
    """A stage's big results fill the pipe while the consumer is away."""
    def big(x: int) -> bytes:
        return bytes(4 * MiB)

    big.stateful = False  # type: ignore[attr-defined]
    big.batch_size = 8  # type: ignore[attr-defined]
    with Pipeline([big], n_cpu=2) as p:
        out = p.apply(itertools.count())
        next(out)
        # Until the workers have done all they can: their results wait unread. Nothing new
        # reaches them while the consumer is away, so a short quiet spell is proof enough.
        wait_idle(live_children(), quiet=0.1)
    assert not wait_no_children(1.0)
    del out


@pytest.mark.slow
def test_huge_items_go_through(start_method: str) -> None:
    def double(b: bytes) -> bytes:
        return b + b

    double.stateful = False  # type: ignore[attr-defined]
    sizes = [len(b) for b in (b"a" * (64 * MiB), b"b", b"c" * (96 * MiB))]
    with Pipeline([double, len], start_method=start_method) as p:
        got = list(p.apply(b"x" * n for n in sizes))
    assert got == [2 * n for n in sizes]


FAULTS: dict[str, tuple[list[Any], type[BaseException]]] = {
    "pool raises": ([Add(0, batch_size=8), FailAt(50, stateful=False, batch_size=8)],
                    ValueError),
    "window raises": ([Add(0, batch_size=8), FailAt(50, stateful=2, batch_size=8)],
                      ValueError),
    "dedicated raises": ([Add(0, batch_size=8), FailAt(50, batch_size=8)], ValueError),
    "master raises": ([Add(0, batch_size=8), FailAt(50, run_in_master=True)], ValueError),
    "pool dies": ([Add(0, batch_size=8), DieAt(50, 1, stateful=False)], WorkerDied),
    "dedicated killed": ([Add(0, batch_size=8), DieAt(50, SIGKILL, batch_size=4)],
                         WorkerDied),
}


def one_round(name: str, start_method: str) -> None:
    ops, error = FAULTS[name]
    with Pipeline(ops, n_cpu=3, start_method=start_method) as p:
        got, err = drain(p.apply(range(200)))
    # a window of 2 has no output for the first input
    assert got == list(range(1 if "window" in name else 0, 50)), name
    assert isinstance(err, error), (name, err)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stress_faults_in_a_row() -> None:
    """Every fault, STRESS_ROUNDS times in a row, under fork and spawn: flush out races."""
    for r in range(STRESS_ROUNDS):
        for name in FAULTS:
            one_round(name, "fork")
            if r % 10 == 0:
                one_round(name, "spawn")
        with Pipeline([Add(0, batch_size=8), RunningSum(batch_size=4)], n_cpu=2) as p:
            take(p.apply(itertools.count()), 101)  # and an early stop
        assert not wait_no_children(1.0)


class Jitter(Attrs):
    """Identity with a random tiny delay on a few items, so timings interleave."""

    def __init__(self, seed: int, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.rng = random.Random(seed)

    def __call__(self, x: Any) -> Any:
        if self.rng.random() < 0.002:
            time.sleep(0.001)
        return x


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_exact_output_and_flat_memory() -> None:
    n = 300_000

    def ops() -> list[Any]:
        return [Jitter(1, stateful=False, batch_size=256), RunningSum(batch_size=256),
                Weighted(3, batch_size=256), Jitter(2, batch_size=64),
                Add(5, batch_size=256)]

    expected = SequentialPipeline(ops()).apply(range(n))
    me = psutil.Process()
    rss: list[int] = []
    with Pipeline(ops(), n_cpu=4) as p:
        for i, (got, want) in enumerate(zip(p.apply(range(n)), expected, strict=True)):
            assert got == want
            if i % 20_000 == 0:
                rss.append(me.memory_info().rss)
    warm = rss[2]  # after 40,000 items
    assert max(rss[2:]) <= warm * 1.10, [r >> 20 for r in rss]


def test_idle_pool_worker_killed_from_outside_loses_nothing(start_method: str) -> None:
    """The OOM killer may pick a worker between items: it is replaced, the stream goes on."""
    with Pipeline([Pid("pool", batch_size=4)], n_cpu=2, start_method=start_method) as p:
        out = p.apply(range(2000))
        got = [next(out) for _ in range(10)]
        victim = psutil.Process(got[-1][1][0][1])  # before the kill: it may be reaped at once
        wait_idle([victim])  # it has answered every chunk it was sent
        victim.kill()
        psutil.wait_procs([victim], timeout=2)
        got += list(out)
    assert [x for x, _ in got] == list(range(2000))


def test_idle_dedicated_worker_killed_from_outside(start_method: str) -> None:
    """A stateful stage's state dies with its process: its next input fails, named."""
    # The slow pool stage keeps the dedicated one idle, with nothing queued, when it dies.
    ops = [Sleepy(0.3, stateful=False), Pid("total", stateful=True)]
    with Pipeline(ops, n_cpu=2, start_method=start_method) as p:
        out = p.apply(range(20))
        first = next(out)
        os.kill(first[1][0][1], signal.SIGKILL)
        got, err = drain(out)
    assert first[0] == 0
    assert got == []
    assert isinstance(err, WorkerDied)
    assert "stage 1 (Pid())" in str(err)
    assert "SIGKILL(-9)" in str(err)
    assert "1 (the next input after the death: the stage's state was lost)" in str(err)


def test_a_chunk_sent_to_a_worker_already_dead_is_not_lost(start_method: str) -> None:
    """The input kills every pool worker (idle: all they had is answered) and
    waits for them to die, so the hub sends the next chunks to dead workers
    before it has seen the deaths: those chunks never started, and go elsewhere."""
    seen: list[Any] = []

    def source() -> Iterator[int]:
        yield from range(20)
        victims = [psutil.Process(pid) for pid in {t[0][1] for _, t in seen}]
        assert victims
        wait_idle(victims, quiet=0.1)  # all they had is answered; the hub, in here, sends no more
        for v in victims:
            v.kill()
        psutil.wait_procs(victims, timeout=5)
        yield from range(20, 200)

    with Pipeline([Pid("pool", batch_size=4)], n_cpu=2, start_method=start_method) as p:
        for out in p.apply(source()):
            seen.append(out)
    assert [x for x, _ in seen] == list(range(200))
