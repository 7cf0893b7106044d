"""Helpers shared by the tests: child processes, endless input, draining a stream."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import multiprocess
import psutil
import pytest
from hypothesis import HealthCheck

from blpipe import Pipeline, stage

START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocess.get_all_start_methods()]

# The health checks that the property tests turn off: generation is timed by the wall
# clock, which a busy machine stretches, and inputs of hundreds of items are large.
SLOW_AND_LARGE = [HealthCheck.too_slow, HealthCheck.data_too_large]

KiB = 1 << 10
MiB = 1 << 20


def payload(i: int, size: int) -> bytes:
    """``size`` bytes that all read ``i % 251``: each item's content is its own."""
    return bytes([i % 251]) * size


def _helpers(proc: psutil.Process) -> bool:
    """multiprocess's own long-lived helpers, which are not blpipe's to stop.

    The fork server is a direct child; the workers it forks share its command
    line but are its children, so they still count.
    """
    try:
        cmdline = " ".join(proc.cmdline())
        direct = proc.ppid() == os.getpid()
    except psutil.Error:
        return True
    return direct and ("resource_tracker" in cmdline or "forkserver" in cmdline)


def live_children() -> list[psutil.Process]:
    """Children of this process that are running, less multiprocess's helpers."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and not _helpers(child):
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_no_children(timeout: float = 3.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := live_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def wait_idle(procs: Iterable[psutil.Process], quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until every one of ``procs`` is asleep and has used no CPU for ``quiet``
    seconds: it has done all it can with what it was sent (a loaded machine may take
    a while to run it)."""
    procs = list(procs)
    deadline = time.monotonic() + limit
    last = [sum(proc.cpu_times()[:2]) for proc in procs]
    while time.monotonic() < deadline:
        time.sleep(quiet)  # the quiet spell itself: nothing may run in it
        now = [sum(proc.cpu_times()[:2]) for proc in procs]
        if now == last and all(proc.status() == psutil.STATUS_SLEEPING for proc in procs):
            return
        last = now
    raise AssertionError(f"{procs} never went idle")


class Endless:
    """``0, 1, 2, ...`` forever, counting how many items were pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        self.pulled += 1
        return self.pulled - 1


def take(it: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` items of a stream that should not end: fails if it ends sooner,
    rather than let a check of what was pulled pass on a short run."""
    got = list(itertools.islice(it, n))
    assert len(got) == n, f"the stream ended after {len(got)} of {n} items"
    return got


def drain(it: Iterator[Any]) -> tuple[list[Any], BaseException | None]:
    """The outputs until the stream ends, and the exception that ended it, if any."""
    got = []
    try:
        for x in it:
            got.append(x)
    except BaseException as e:
        return got, e
    return got, None


def assert_refused(attrs: dict[str, Any], error: type[Exception], words: str) -> None:
    """A stage with ``attrs`` fails at construction with ``error``, naming the stage
    and saying ``words``; ``stage()`` makes the same checks at once."""
    def f(x: Any) -> Any:
        return x

    for k, v in attrs.items():
        setattr(f, k, v)
    with pytest.raises(error, match=r"stage 0 \(.*f\)") as info:
        Pipeline([f])
    assert words in str(info.value)
    with pytest.raises(error):
        stage(len, **attrs)
