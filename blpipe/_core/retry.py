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

from .failures import add_note
from .spec import BACKOFF_CAP, Retry


def delay(backoff: float, retry: int) -> float:
    """Seconds to sleep before retry ``retry`` (1 for the second try).

    >>> 0.0 <= delay(0.1, 3) <= 0.4
    True
    """
    return random.uniform(0.0, min(BACKOFF_CAP, backoff * 2 ** (retry - 1)))


def after(retry: Retry, error: BaseException, attempt: int) -> float | None:
    """After try ``attempt`` raised ``error``: the seconds to sleep before the
    next try (0.0 for no backoff), or ``None`` when ``error`` is to be raised:
    it is not in ``retry_on``, or it is the last try's, which is then noted.

    The one decision for every loop that retries, blocking or async: only the
    call and the sleep differ between them.
    """
    if not isinstance(error, retry.on):
        return None
    if attempt > retry.retries:
        add_note(error, f"blpipe: the call failed {attempt} times (retries={retry.retries}); "
                        f"this is the last error")
        return None
    return delay(retry.backoff, attempt) if retry.backoff else 0.0


class Retrying:
    """``func``, called up to ``retries + 1`` times per input.

    It counts its retries in ``tally[0]``, which the chain reads for the
    figures; ``restart``, when set, is called before each retry (a clock that
    times each try).
    """

    __slots__ = ("func", "retry", "expand", "tally", "restart")

    def __init__(self, func: Callable[[Any], Any], retry: Retry, expand: bool,
                 tally: list[int]) -> None:
        self.func = func
        self.retry = retry
        self.expand = expand
        self.tally = tally
        self.restart: Callable[[], None] | None = None

    def __call__(self, value: Any) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                if not self.expand:
                    return self.func(value)
                it = iter(self.func(value))
                first = next(it, _END)  # a generator raises only once it is read
                return it if first is _END else _resumed(first, it)
            except Exception as e:  # retry_on holds only Exception subclasses
                pause = after(self.retry, e, attempt)
                if pause is None:
                    raise
                self.tally[0] += 1
                if pause:
                    time.sleep(pause)
                if self.restart is not None:
                    self.restart()


_END = object()


def _resumed(first: Any, it: Iterator[Any]) -> Iterator[Any]:
    try:
        yield first
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
