"""``n_cpu="auto"``: how much of the pool to use, from what the stages measure.

The pool is started at every usable CPU, and the hub sends chunks only to
its first ``active`` workers. The busy time of the stages that have a CPU of
their own (dedicated processes, and the caller for ``run_in_master`` stages)
says how many CPUs they take; the pool gets the rest, between 1 and all.
Busy time is wall time inside the callable, so a stage starved of CPU by an
oversized pool looks busy, which is the signal to shrink.

Changes are one worker at a time, at most every ``DWELL`` seconds, and need
the load to cross a threshold three quarters of a CPU away from the current
size on either side, so a load between two sizes does not flip between them.
"""

from __future__ import annotations

from collections.abc import Sequence

PERIOD = 0.05  # seconds between two looks at the load
DWELL = 0.25  # seconds at least between two changes
_BAND = 0.75  # CPUs beyond the current size that the load must call for
_SMOOTH = 0.3  # weight of the newest look in the smoothed load


class Governor:
    """Decides the active pool size; ``update`` is called from the hub's loop."""

    def __init__(self, usable: int, own_cpu: Sequence[int], busy: list[float],
                 now: float) -> None:
        self.usable = usable
        self.active = usable
        self._own = tuple(own_cpu)  # stages with a CPU of their own
        self._busy = busy  # the recorder's busy seconds per stage, updated in place
        self._last = now
        self._changed = now
        self._prev = 0.0
        self.load: float | None = None  # CPUs the stages in ``own_cpu`` take, smoothed

    def update(self, now: float) -> bool:
        """Look at the load if it is time; ``True`` when ``active`` changed."""
        dt = now - self._last
        if dt < PERIOD:
            return False
        busy = sum(self._busy[i] for i in self._own)
        now_load = (busy - self._prev) / dt
        self.load = now_load if self.load is None else \
            self.load + _SMOOTH * (now_load - self.load)
        self._prev, self._last = busy, now
        if now - self._changed < DWELL:
            return False
        want = self.usable - self.load
        if want <= self.active - _BAND and self.active > 1:
            self.active -= 1
        elif want >= self.active + _BAND and self.active < self.usable:
            self.active += 1
        else:
            return False
        self._changed = now
        return True
