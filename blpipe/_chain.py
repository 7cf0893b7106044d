"""Consecutive stages applied item by item in one process.

The same code runs a fused run of pool stages in a worker, a stateful stage in
its dedicated process, master stages in the caller, and the whole of a
``SequentialPipeline``, so they cannot disagree on windows or ``None``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .stages import Stage

# (label for messages, the callable, window size k or None)
Step = tuple[str, Callable[[Any], Any], "int | None"]


class StageFailure(Exception):
    """A stage raised ``exc`` on ``item``; ``label`` names the stage."""

    def __init__(self, label: str, item: Any, exc: Exception) -> None:
        super().__init__(label, exc)
        self.label = label
        self.item = item
        self.exc = exc


def sliding(items: Sequence[Any], k: int) -> list[tuple[Any, ...]]:
    """``[(x0..xk-1), (x1..xk), ...]``; none when fewer than ``k`` items."""
    return [tuple(items[i:i + k]) for i in range(len(items) - k + 1)]


class Chain:
    """Applies steps in order to each item; ``None`` from any step drops the item.

    A step with a window receives tuples of the last ``k`` values that reached
    it, so it keeps that many values between calls.
    """

    __slots__ = ("_steps", "_windows", "_single")

    def __init__(self, steps: Sequence[Step]) -> None:
        # A Stage only delegates: calling what it wraps saves a Python call per item.
        steps = [(label, func.__wrapped__ if isinstance(func, Stage) else func, k)
                 for label, func, k in steps]
        self._steps = [(label, func) for label, func, _ in steps]
        self._windows: list[deque[Any] | None] = [deque(maxlen=k) if k else None
                                                  for _, _, k in steps]
        self._single = steps[0] if len(steps) == 1 and not steps[0][2] else None

    def __call__(self, x: Any) -> Any:
        for (label, func), window in zip(self._steps, self._windows, strict=True):
            if window is not None:
                window.append(x)
                if len(window) < window.maxlen:  # type: ignore[operator]
                    return None
                x = tuple(window)
            try:
                x = func(x)
            except Exception as e:
                raise StageFailure(label, x, e) from None
            if x is None:
                return None
        return x

    def run(self, items: Iterable[Any]) -> tuple[list[Any], StageFailure | None]:
        """Outputs for ``items`` (``None`` where dropped), up to the first failure."""
        out: list[Any] = []
        if self._single is not None:  # the common case, at C speed
            label, func, _ = self._single
            items = items if isinstance(items, list) else list(items)
            try:
                out.extend(map(func, items))  # keeps what it appended before a raise
            except Exception as e:
                return out, StageFailure(label, items[len(out)], e)
            return out, None
        append = out.append
        try:
            for x in items:
                append(self(x))
        except StageFailure as failure:
            return out, failure
        return out, None
