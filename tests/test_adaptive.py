"""``n_cpu="auto"``: the pool in use follows the load of the dedicated stages."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from blpipe import Pipeline, usable_cpu_count
from blpipe._hub import adaptive as _adaptive
from blpipe._hub.adaptive import Governor
from tests.oracle import assert_matches_sequential
from tests.stages import Add, RunningSum, Spin, Weighted

pytestmark = pytest.mark.timeout(120)


def drive(gov: Governor, busy: list[float], loads: list[float], step: float = 0.05) -> list[int]:
    """Feed ``gov`` a dedicated stage busy ``loads[i]`` of each step; the sizes it picks."""
    sizes = []
    for load in loads:
        busy[-1] += step  # the clock, kept with the busy figures
        busy[0] += load * step
        gov.update(busy[-1])
        sizes.append(gov.active)
    return sizes


def test_shrinks_under_a_busy_dedicated_stage_and_grows_back() -> None:
    busy = [0.0, 0.0]
    gov = Governor(4, [0], busy, 0.0)
    sizes = drive(gov, busy, [2.0] * 100)  # two CPUs' worth of dedicated work
    assert sizes[-1] == 2
    assert sizes == sorted(sizes, reverse=True)  # one way, one worker at a time
    sizes = drive(gov, busy, [0.0] * 100)
    assert sizes[-1] == 4


def test_a_load_between_two_sizes_does_not_flip_between_them() -> None:
    """0.5 CPU busy, with noise, leaves 1.5 CPUs: between the sizes 1 and 2. The
    governor stays at either size, whether it comes from above or from below."""
    busy = [0.0, 0.0]
    gov = Governor(2, [0], busy, 0.0)
    noisy_half = [0.2, 0.8] * 200
    assert set(drive(gov, busy, noisy_half)) == {2}
    assert drive(gov, busy, [2.0] * 100)[-1] == 1  # it does move, under a heavier load
    assert set(drive(gov, busy, noisy_half)) == {1}


def test_changes_wait_for_the_dwell_time() -> None:
    busy = [0.0, 0.0]
    gov = Governor(8, [0], busy, 0.0)
    sizes = drive(gov, busy, [8.0] * 40)  # 2 s
    changes = [i for i, (a, b) in enumerate(itertools.pairwise(sizes)) if a != b]
    assert len(changes) >= 2  # else there is no gap between changes to check
    assert all(b - a >= _adaptive.DWELL / 0.05 - 1 for a, b in itertools.pairwise(changes))


needs_two = pytest.mark.skipif(usable_cpu_count() < 2, reason="needs 2 usable CPUs")


@needs_two
def test_a_heavy_stateful_stage_takes_a_cpu_from_the_pool() -> None:
    ops = [Spin(0.002, stateful=False, batch_size=16), Spin(0.003, batch_size=16)]
    with Pipeline(ops, n_cpu="auto") as p:
        assert list(p.apply(range(400))) == list(range(400))
        st = p.statistics()
    assert st.pool_size == usable_cpu_count()
    assert st.pool_active == usable_cpu_count() - 1


@needs_two
def test_a_light_stateful_stage_leaves_the_pool_whole() -> None:
    ops = [Spin(0.002, stateful=False, batch_size=16), RunningSum(batch_size=16)]
    with Pipeline(ops, n_cpu="auto") as p:
        assert len(list(p.apply(range(400)))) == 400
        assert p.statistics().pool_active == usable_cpu_count()


def test_resizing_loses_and_reorders_nothing(monkeypatch: pytest.MonkeyPatch,
                                             start_method: str) -> None:
    """A governor that resizes at every look, against the sequential result."""
    flips = [0]

    def update(self: Governor, now: float) -> bool:
        flips[0] += 1
        self.active = 1 + flips[0] % self.usable
        return True

    monkeypatch.setattr(Governor, "update", update)

    def ops() -> list[Any]:
        return [Add(1, batch_size=16), RunningSum(batch_size=8), Weighted(3, batch_size=16),
                Add(2, batch_size=4)]

    data = [None if i % 9 == 0 else i for i in range(5000)]
    assert_matches_sequential(ops, data, n_cpu="auto", start_method=start_method)
    assert flips[0] > 3


def test_auto_is_validated() -> None:
    with pytest.raises(TypeError, match="'auto'"):
        Pipeline([Add(1)], n_cpu="all")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="n_cpu='auto'"):
        Pipeline([Add(1)], n_cpu="auto", executor=ex)
