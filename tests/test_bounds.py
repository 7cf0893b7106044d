"""On an endless stream, the lead of input over output stays under the documented bound."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from blpipe import Pipeline
from tests.stages import Add, MasterScale, RunningSum, Weighted


def test_lead_is_bounded(start_method: str) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    ops = [Add(1, batch_size=8), RunningSum(batch_size=4), Weighted(3, batch_size=8),
           Add(2, batch_size=8), MasterScale(1)]
    # process segments' batch sizes (pool 8, dedicated 4, fused window+add 8),
    # plus k - 1 for the window, plus the output buffer (last stage: batch_size 1)
    bound = 8 + 4 + 8 + (3 - 1) + 1
    with Pipeline(ops, n_cpu=3, start_method=start_method) as p:
        out = p.apply(endless())
        for n, _ in enumerate(out, 1):
            if n in (10, 1000, 5000):
                time.sleep(0.2)  # let every stage fill up to its bound
                assert pulled - n <= bound, (n, pulled)
            if n == 5000:
                break
    assert pulled - 5000 <= bound


def test_consumer_overlaps_with_workers() -> None:
    """While the consumer sleeps on one output, the next ones are being computed."""
    from tests.stages import slow_identity  # 1 ms per item, batch_size 4

    with Pipeline([slow_identity], n_cpu=2) as p:
        out = p.apply(range(400))
        next(out)
        time.sleep(0.3)
        start = time.perf_counter()
        got = [next(out) for _ in range(3)]  # were computed during the sleep
        assert time.perf_counter() - start < 0.05
        assert got == [1, 2, 3]
        assert list(out) == list(range(4, 400))
