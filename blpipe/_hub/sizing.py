"""How many inputs go in a chunk: about ``work`` seconds of stage work each.

The hub's cost is per chunk, so cheap items want large chunks; costly ones
want small chunks, spread over every worker. So a segment's chunk follows
the stage's smoothed seconds per input, within its bounds, in whole groups::

   a result: seconds of work per input ──► chunk = work / per input, within [least, most]
   a send: bytes per input over BIG    ──► one input per chunk, so few huge copies coexist
"""

from __future__ import annotations

import math

from .._core.shm import BIG


def smooth(old: float | None, new: float) -> float:
    """An exponential moving average, where each new figure weighs 0.3."""
    return new if old is None else 0.7 * old + 0.3 * new


class Sizing:
    """A segment's chunk size, from what its chunks cost."""

    __slots__ = ("group", "least", "most", "chunk", "per_item", "item_bytes", "huge")

    def __init__(self, group: int | None, least: int, most: int) -> None:
        self.group = group  # chunks hold whole groups of this many inputs, but the last
        self.least = self.whole(least)
        self.most = self.whole(most)
        self.chunk = self.least
        self.per_item: float | None = None  # seconds of stage work per input, smoothed
        self.item_bytes: float | None = None  # serialized bytes per input, smoothed
        self.huge = False  # items of over BIG bytes: one per chunk

    def whole(self, n: int) -> int:
        """``n`` inputs, rounded down to whole groups (at least one)."""
        g = self.group
        return n if g is None else max(g, n - n % g)

    def worked(self, seconds: float, n_in: int, work: float) -> None:
        """A chunk of ``n_in`` inputs took ``seconds`` of stage work; chunks aim at ``work``."""
        per = self.per_item = smooth(self.per_item, seconds / n_in)
        want = work / per if per > 1e-9 else 1e9
        self.chunk = 1 if self.huge else self.whole(max(self.least,
                                                        min(self.most, math.ceil(want))))

    def sent(self, nbytes: int, n_in: int) -> None:
        """A chunk of ``n_in`` inputs was ``nbytes`` serialized."""
        self.item_bytes = smooth(self.item_bytes, nbytes / n_in)
        if (self.item_bytes > BIG) is not self.huge and self.group is None:
            self.huge = not self.huge
            self.chunk = 1 if self.huge else self.least
