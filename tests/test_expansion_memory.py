"""An expansion's outputs are freed as they are consumed, and its speed does not
hang on ``batch_size``.

One input becoming 1,000 outputs of 1 MiB (a video becoming its frames) must
run in the memory of a few frames on every placement that streams, and an
expansion of small items at the default ``batch_size`` must not be held to a
round trip per output.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from blpipe import Pipeline, stage
from tests.helpers import MiB

pytestmark = pytest.mark.timeout(120)

FRAMES = 1000


def frames(x: Any) -> Iterator[bytes]:
    """``FRAMES`` distinct outputs of 1 MiB each."""
    first = x[0] if isinstance(x, tuple) else x  # a window's
    for i in range(FRAMES):
        yield bytes([(first + i) % 256]) * MiB


def tree_pss() -> int:
    """Proportional set size of this process and its descendants: shared memory
    counts once, as RSS would not."""
    total = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # it just ended
            total += proc.memory_full_info().pss
    return total


PLACEMENTS = {
    "pool": {"stateful": False},
    "dedicated": {"stateful": True},
    "window": {"stateful": 2},
    "thread": {"stateful": False, "threads": 1},
}


def consume(p: Pipeline, inputs: list[int], pause: float = 0.0) -> tuple[int, int]:
    """Take every output one at a time, checking each; the outputs, and the most the
    tree's PSS grew over this process's before the run. This process is the test
    runner, which holds whatever the suite has imported so far (150 MiB and more
    late in the suite): under spawn, where workers share none of its pages, its
    size would count whole."""
    before = tree_pss()
    n = peak = 0
    first = inputs[0]
    for y in p.apply(inputs):
        assert len(y) == MiB
        assert y[0] == (first + n) % 256
        n += 1
        if pause:
            time.sleep(pause)
        if n % 25 == 0:
            peak = max(peak, tree_pss() - before)
    return n, peak


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("where", list(PLACEMENTS))
def test_large_expanded_outputs_are_freed(method: str, where: str) -> None:
    st = stage(frames, expand=True, **PLACEMENTS[where])
    inputs = [3, 4] if where == "window" else [3]  # one window: (3, 4)
    with Pipeline([st], start_method=method) as p:
        n, peak = consume(p, inputs)
    assert n == FRAMES
    assert peak < 250 * MiB, f"the tree's PSS grew by {peak / MiB:.0f} MiB"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_byte_budget_bounds_expanded_outputs(method: str) -> None:
    st = stage(frames, stateful=False, expand=True)
    budget = 16 * MiB
    with Pipeline([st], start_method=method, max_bytes_in_flight=budget) as p:
        n, peak = consume(p, [3], pause=0.001)  # a slow consumer: the worker runs ahead
        held = p.statistics().peak_bytes_in_flight
    assert n == FRAMES
    assert peak < 250 * MiB, f"the tree's PSS grew by {peak / MiB:.0f} MiB"
    assert 0 < held <= budget + MiB


def rate(method: str, batch_size: int | None, n: int = 200_000) -> float:
    """Outputs per second of an endless expansion of ints, once it has started."""
    attrs: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    st = stage(itertools.count, stateful=False, expand=True, **attrs)
    with Pipeline([st], start_method=method) as p:
        it = p.apply([0])
        assert next(it) == 0
        start = time.perf_counter()
        last = next(itertools.islice(it, n - 1, None))
        took = time.perf_counter() - start
    assert last == n
    return n / took


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_expansion_speed_does_not_hang_on_batch_size(method: str) -> None:
    # At the default batch_size an expansion used to pass one output per round
    # trip: 3,000 a second, against 480,000 at 1,024. Best of three, for a busy host.
    default = max(rate(method, None) for _ in range(3))
    large = max(rate(method, 1024) for _ in range(3))
    assert default >= large / 2, f"{default:,.0f}/s at the default, {large:,.0f}/s at 1,024"
