"""On an endless stream, the lead of input over output stays under the documented bound."""

from __future__ import annotations

import time

import pytest

from blpipe import Pipeline
from tests.helpers import Endless, take
from tests.stages import Add, MasterScale, RunningSum, Sleepy, Stamp, Weighted


def test_lead_is_bounded(start_method: str) -> None:
    source = Endless()

    ops = [Add(1, batch_size=8), RunningSum(batch_size=4), Weighted(3, batch_size=8),
           Add(2, batch_size=8), MasterScale(1)]
    # process segments' batch sizes (pool 8, dedicated 4, fused window+add 8),
    # plus k - 1 for the window, plus the output buffer (last stage: batch_size 1)
    bound = 8 + 4 + 8 + (3 - 1) + 1
    with Pipeline(ops, n_cpu=3, start_method=start_method) as p:
        out = p.apply(source)
        taken = 0
        for at in (10, 1000, 5000):
            taken += len(take(out, at - taken))
            # Then pause between outputs until every stage in a process holds its batch_size,
            # so that the bounds are what stops the hub pulling more. (Pulls and figures move
            # only inside next(): one long pause alone would change neither.)
            deadline = time.monotonic() + 10.0
            while True:
                assert source.pulled - taken <= bound, (taken, source.pulled)
                if all(s.in_flight == s.batch_size for s in p.statistics().stages
                       if s.placement != "master"):
                    break
                assert time.monotonic() < deadline, p.statistics().stages  # never filled up
                time.sleep(0.01)  # the workers finish what they hold
                taken += len(take(out, 1))
    assert source.pulled - taken <= bound


def test_consumer_overlaps_with_workers() -> None:
    """While the consumer holds an output, each stage computes the work queued to it."""
    with Pipeline([Stamp(stateful=False, batch_size=4), Stamp(batch_size=4)], n_cpu=3) as p:
        out = p.apply(range(400))
        for _ in range(10):  # a slow consumer: each step lets the queues fill
            next(out)
            time.sleep(0.01)
        time.sleep(0.5)
        resumed = time.monotonic()  # system-wide on Linux, so comparable across processes
        got = [next(out) for _ in range(8)]
        assert [x for x, _ in got] == list(range(10, 18))
        # Finished through both stages while the consumer slept: at least the 3 left in
        # the output buffer and 3 of the last stage's 4 in flight (one slot may still be
        # held by a result not yet handed on). Without the top-up only 4 or 5 are.
        assert sum(times[-1] < resumed for _, times in got) >= 6
        assert [x for x, _ in out] == list(range(18, 400))


@pytest.mark.parametrize("attrs", [{"stateful": False, "batch_size": 2}, {"batch_size": 2},
                                   {"stateful": False, "threads": 2}],
                         ids=["pool", "dedicated", "thread"])
def test_the_hub_sleeps_while_it_waits_for_slow_stages(attrs: dict[str, object]) -> None:
    """Waiting for results costs the calling process no CPU: it may poll for a
    few microseconds before it sleeps, never for the length of a stage's call."""
    with Pipeline([Sleepy(0.05, **attrs)], n_cpu=2) as p:
        started, cpu = time.monotonic(), time.process_time()
        assert list(p.apply(range(20))) == list(range(20))
        cpu, took = time.process_time() - cpu, time.monotonic() - started
    assert took >= 0.45  # it did wait
    assert cpu < 0.1 * took, (cpu, took)
