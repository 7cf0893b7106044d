"""``max_bytes_in_flight``: input is withheld, never dropped, and any budget makes progress."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blpipe import Pipeline, SequentialPipeline, stage
from tests.helpers import SLOW_AND_LARGE, Endless, KiB, MiB, payload, take

pytestmark = pytest.mark.timeout(120)

class Tag:
    """Stateful: ``(running count, len)``, so order and completeness both show."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, b: bytes) -> tuple[int, int, int]:
        self.n += 1
        return self.n, len(b), b[0] if b else -1


def pair(w: tuple[Any, Any]) -> tuple[int, int]:
    return w[0][0], w[0][1] + w[1][1]


def make() -> list[Any]:
    return [stage(bytes, stateful=False, batch_size=16), Tag(),
            stage(pair, stateful=2, batch_size=8)]


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(st.lists(st.integers(0, 300 * KiB), max_size=60), st.integers(1, 2 * MiB))
def test_random_sizes_never_deadlock(sizes: list[int], budget: int) -> None:
    data = [payload(i, n) for i, n in enumerate(sizes)]
    with SequentialPipeline(make()) as ref:
        expected = list(ref.apply(data))
    with Pipeline(make(), n_cpu=3, max_bytes_in_flight=budget) as p:
        assert list(p.apply(data)) == expected
        st_ = p.statistics()
    assert st_.bytes_in_flight == 0
    if sizes:  # the last item taken may pass the budget, and one more may be in transit
        assert st_.peak_bytes_in_flight <= budget + 2 * max(sizes) + 64 * KiB


def test_an_item_larger_than_the_budget_goes_alone() -> None:
    data = [payload(i, MiB) for i in range(30)]
    with Pipeline([stage(len, stateful=False, batch_size=8)], n_cpu=2,
                  max_bytes_in_flight=1000) as p:
        assert list(p.apply(data)) == [MiB] * 30
        peak = p.statistics().peak_bytes_in_flight
    assert MiB <= peak < MiB + 64 * KiB  # one at a time


def endless_blobs(size: int) -> Any:
    for i in Endless():
        yield payload(i, size)


@pytest.mark.parametrize("budget", [None, 8 * MiB])
def test_the_budget_bounds_bytes_in_flight(budget: int | None) -> None:
    """64 items of 2 MiB may be in flight by batch_size; the budget allows about 4."""
    with Pipeline([stage(bytes, stateful=False, batch_size=64), stage(len, stateful=False,
                                                                      batch_size=64)],
                  n_cpu=2, max_bytes_in_flight=budget) as p:
        take(p.apply(endless_blobs(2 * MiB)), 301)
        peak = p.statistics().peak_bytes_in_flight
    if budget is None:
        assert peak > 24 * MiB
    else:
        assert peak <= budget + 2 * MiB + 64 * KiB


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-5, ValueError),
                                              (1.5, TypeError), (True, TypeError),
                                              ("1GB", TypeError)])
def test_bad_budget(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_bytes_in_flight="):
        Pipeline([stage(len, stateful=False)], max_bytes_in_flight=value)
