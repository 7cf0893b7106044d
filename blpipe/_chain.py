"""Consecutive stages applied to a chunk in one process.

The same code runs a fused run of pool stages in a worker, a stateful stage in
its dedicated process, master stages in the caller, and the whole of a
``SequentialPipeline``, so they cannot disagree on windows or ``None``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from typing import Any

from ._failures import Skipped, StageFailure
from .stages import Stage

# (label for messages, the callable, window size k or None, whether to go on
# past its errors: on_error 'skip' or 'collect')
Step = tuple[str, Callable[[Any], Any], "int | None", bool]


def sliding(items: Sequence[Any], k: int) -> list[tuple[Any, ...]]:
    """``[(x0..xk-1), (x1..xk), ...]``; none when fewer than ``k`` items."""
    return [tuple(items[i:i + k]) for i in range(len(items) - k + 1)]


class Chain:
    """Applies steps in order; ``None`` from any step drops the item.

    A step with a window receives tuples of the last ``k`` values that reached
    it, so it keeps that many values between chunks.
    """

    __slots__ = ("_steps", "_windows", "_single", "_catch")

    def __init__(self, steps: Sequence[Step]) -> None:
        # A Stage only delegates: calling what it wraps saves a Python call per item.
        self._steps = [(label, func.__wrapped__ if isinstance(func, Stage) else func)
                       for label, func, _, _ in steps]
        self._windows: list[deque[Any] | None] = [deque(maxlen=k) if k else None
                                                  for _, _, k, _ in steps]
        self._catch = [catch for *_, catch in steps]
        self._single = (self._steps[0] if len(steps) == 1 and not steps[0][2]
                        and not steps[0][3] else None)

    def run(self, items: Iterable[Any]) -> tuple[list[Any], StageFailure | None, list[Any],
                                                 list[Skipped]]:
        """Run the steps over a chunk, one step at a time over all of it.

        Returns the outputs, aligned with ``items`` up to the first failure in
        stream order (``None`` where an item was dropped), that failure, and
        ``[seconds, inputs, outputs]`` for each step. The last step's output
        count is ``-1``: its outputs are counted by the caller, which drops
        the ``None`` anyway. Running step by step calls each stage at C speed
        (``map``) and times it with two clock reads per chunk; a step that
        fails stops the chunk at the failing item, so later steps see only
        what came before it, and a later step's failure is earlier in the
        stream than an earlier step's. A step that goes on past its errors
        gives ``None`` for the inputs it raised on, and they are listed last,
        in stream order.
        """
        items = items if isinstance(items, list) else list(items)
        if self._single is not None:  # one step, no window: the common case, kept short
            label, func = self._single
            done: list[Any] = []
            start = perf_counter()
            try:
                done.extend(map(func, items))
            except Exception as e:
                return done, StageFailure(label, items[len(done)], e), [
                    [perf_counter() - start, len(items), -1]], []
            return done, None, [[perf_counter() - start, len(items), -1]], []
        vals = items
        pos: list[int] | None = None  # where each of vals came from in items; None: in place
        limit = len(items)
        failure = None
        stats: list[Any] = []
        skipped: list[Skipped] = []
        last = len(self._steps) - 1
        for i, ((label, func), window, catch) in enumerate(zip(self._steps, self._windows,
                                                               self._catch, strict=True)):
            n_in = len(vals)
            shift = 0  # a window's index among this step's inputs: its newest one's
            if window is not None:
                vals, pos = _windows(window, vals, pos)
                shift = n_in - len(vals)
            out: list[Any] = []
            start = perf_counter()
            if catch:
                for j, v in enumerate(vals):
                    try:
                        out.append(func(v))
                    except Exception as e:
                        out.append(None)
                        skipped.append((j if pos is None else pos[j], i, j + shift,
                                        StageFailure(label, v, e)))
            else:
                try:
                    out.extend(map(func, vals))  # keeps what it appended before a raise
                except Exception as e:
                    k = len(out)
                    failure = StageFailure(label, vals[k], e)
                    limit = k if pos is None else pos[k]
                    if pos is not None:
                        pos = pos[:k]
            seconds = perf_counter() - start
            if i == last:
                stats.append([seconds, n_in, -1])
                vals = out
                break
            # By identity only: `None in out` would compare items with ==, which
            # an array answers elementwise and any object may refuse.
            vals = [y for y in out if y is not None]
            if len(vals) < len(out):
                keep = [j for j, y in enumerate(out) if y is not None]
                pos = keep if pos is None else [pos[j] for j in keep]
            stats.append([seconds, n_in, len(vals)])
        if skipped:  # in stream order, and none after a failure
            skipped = sorted((e for e in skipped if e[0] < limit), key=lambda e: (e[0], e[1]))
        if pos is None:
            return vals, failure, stats, skipped
        aligned = [None] * limit
        for j, y in zip(pos, vals, strict=True):
            aligned[j] = y
        return aligned, failure, stats, skipped


def _windows(window: deque[Any], vals: list[Any],
             pos: list[int] | None) -> tuple[list[Any], list[int] | None]:
    """The windows that ``vals`` complete, after the values ``window`` holds, and
    where each came from; ``window`` then holds the newest values."""
    k = window.maxlen
    assert k is not None
    seq = [*window, *vals]
    held = len(window)
    first = max(0, k - 1 - held)  # the first of vals that completes a window
    wins = [tuple(seq[held + j - k + 1:held + j + 1]) for j in range(first, len(vals))]
    window.extend(vals)
    if first:
        pos = list(range(first, len(vals))) if pos is None else pos[first:]
    return wins, pos
