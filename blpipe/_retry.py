"""Calling a stage again after an error it may not raise twice: ``retries``.

A stage with ``retries = n`` has its callable wrapped in :class:`Retrying`
where it runs, so every placement repeats a call the same way, in place::

    call --ok--> value
      |
      +-- an error in retry_on, tries left: sleep, call again
      +-- any other error, or the last try's: raised, with a note

The sleep before try ``k + 1`` is drawn uniformly from ``[0, min(cap,
retry_backoff * 2**(k-1))]`` ("full jitter"), so that the callers failing
together do not retry in step. An expansion is retried until it has given its
first output, since what went on cannot be taken back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._failures import add_note
from ._spec import BACKOFF_CAP, Retry, StageSpec
from .stages import Stage


def callable_of(spec: StageSpec) -> Callable[[Any], Any]:
    """What runs ``spec``: its callable, wrapped when it has retries."""
    return spec.func if spec.retry is None else Retrying(spec.func, spec.retry, spec.expand)


def delay(backoff: float, retry: int) -> float:
    """Seconds to sleep before retry ``retry`` (1 for the second try).

    >>> 0.0 <= delay(0.1, 3) <= 0.4
    True
    """
    return random.uniform(0.0, min(BACKOFF_CAP, backoff * 2 ** (retry - 1)))


class Retrying:
    """``func``, called up to ``retries + 1`` times per input; counts its retries."""

    __slots__ = ("func", "retry", "expand", "retries")

    def __init__(self, func: Callable[[Any], Any], retry: Retry, expand: bool) -> None:
        # a Stage only delegates: calling what it wraps saves a call per try
        self.func = func.__wrapped__ if isinstance(func, Stage) else func
        self.retry = retry
        self.expand = expand
        self.retries = 0  # since the last take()

    def take(self) -> int:
        """The retries counted since the last call, for the figures."""
        n, self.retries = self.retries, 0
        return n

    def __call__(self, value: Any) -> Any:
        retries, on, backoff = self.retry
        for attempt in range(1, retries + 2):
            try:
                if not self.expand:
                    return self.func(value)
                it = iter(self.func(value))
                first = next(it, _END)  # a generator raises only once it is read
                return it if first is _END else _resumed(first, it)
            except on as e:
                if attempt > retries:
                    add_note(e, f"blpipe: the call failed {attempt} times (retries="
                                f"{retries}); this is the last error")
                    raise
                self.retries += 1
                if backoff:
                    time.sleep(delay(backoff, attempt))
        raise AssertionError("unreachable")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled to workers with its stage
        return Retrying, (self.func, self.retry, self.expand)


_END = object()


def _resumed(first: Any, it: Iterator[Any]) -> Iterator[Any]:
    try:
        yield first
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
