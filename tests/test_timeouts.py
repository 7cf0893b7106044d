"""``timeout``: a call that never returns, on every placement, under every start method.

A call sleeps forever, or spins in pure Python forever. Each run ends within the
timeout plus 1 s (counted once the workers are up), nothing else is lost, and
under ``on_error = "skip"`` the stream goes on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, StageTimeout, stage
from tests.helpers import assert_refused, drain
from tests.stages import Flaky, Hang

pytestmark = pytest.mark.timeout(120)

LIMIT = 0.5
N = 40
PLACES: dict[str, dict[str, Any]] = {
    "pool": {"stateful": False, "batch_size": 8},
    "window": {"stateful": 2, "batch_size": 8},
    "thread": {"stateful": False, "threads": 2, "batch_size": 8},
}


@pytest.fixture
def release(tmp_path: Path) -> Iterator[str]:
    """A file whose creation lets a call abandoned in a thread of this process
    end, once the test is done."""
    path = tmp_path / "release"
    yield str(path)
    path.touch()
    for t in threading.enumerate():
        if t.name.endswith(" call") or t.name.startswith("ThreadPoolExecutor"):
            t.join(5)


def _expected(attrs: dict[str, Any], bad: set[int]) -> list[Any]:
    if attrs.get("stateful") == 2:
        return [(x - 1, x) for x in range(1, N) if x not in bad]
    return [2 * x for x in range(N) if x not in bad]


@pytest.mark.parametrize("how", ["sleep", "spin"])
@pytest.mark.parametrize("place", PLACES)
def test_a_call_that_never_returns_is_skipped_in_time(place: str, how: str, start_method: str,
                                                      release: str) -> None:
    attrs = PLACES[place]
    hang = Hang({7}, how=how, release=release, timeout=LIMIT, on_error="skip", **attrs)
    with Pipeline([hang], n_cpu=2, start_method=start_method) as p:
        start = time.monotonic()
        out = list(p.apply(range(N)))
        took = time.monotonic() - start
        stats = p.statistics().stages[0]
    assert out == _expected(attrs, {7})  # nothing else lost, in order
    assert took < LIMIT + 1.0
    assert (stats.timeouts, stats.errors) == (1, 1)


@pytest.mark.parametrize("place", PLACES)
def test_under_raise_the_error_names_stage_input_and_limit(place: str, start_method: str,
                                                           release: str) -> None:
    attrs = PLACES[place]
    hang = Hang({7}, how="spin", release=release, timeout=LIMIT, **attrs)
    with Pipeline([hang], n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(N)))
    assert isinstance(err, StageTimeout)
    assert isinstance(err, TimeoutError)
    assert got == _expected(attrs, set())[:len(got)]
    assert len(got) == (6 if "stateful" in attrs and attrs["stateful"] == 2 else 7)
    assert err.stage == "stage 0 (Hang())"
    assert err.input_repr == ("(6, 7)" if attrs.get("stateful") == 2 else "7")
    assert err.limit == LIMIT
    assert f"ran past its timeout of {LIMIT:g} s on input" in str(err)


@pytest.mark.parametrize("how", ["sleep", "spin"])
def test_a_dedicated_stage_fails_even_under_skip(how: str, start_method: str) -> None:
    hang = Hang({7}, how=how, stateful=True, batch_size=4, timeout=LIMIT, on_error="skip")
    with Pipeline([hang], start_method=start_method) as p:
        start = time.monotonic()
        got, err = drain(p.apply(range(N)))
        took = time.monotonic() - start
    assert isinstance(err, StageTimeout)
    assert err.input_repr == "7"
    assert "state" in str(err)
    assert took < LIMIT + 1.0
    assert got == [2 * x for x in range(len(got))]


def test_a_pool_call_that_hangs_once_is_retried(tmp_path: Path) -> None:
    class Once(Flaky):  # hangs on its first call for each of 3 and 20, then answers
        def __call__(self, x: Any) -> Any:
            if x in (3, 20) and self._tries(x) == 1:
                while True:
                    pass
            return x * 10

    once = Once(str(tmp_path), stateful=False, batch_size=8, timeout=LIMIT, retries=1)
    with Pipeline([once], n_cpu=2) as p:
        assert list(p.apply(range(N))) == [x * 10 for x in range(N)]
        stats = p.statistics().stages[0]
    assert (stats.timeouts, stats.retries) == (2, 2)


def test_a_thread_stage_keeps_its_throughput(release: str) -> None:
    switch = sys.getswitchinterval()
    hang = Hang({0, 1}, release=release, stateful=False, threads=1, batch_size=4,
                timeout=LIMIT, on_error="skip")
    with Pipeline([hang]) as p:
        start = time.monotonic()
        assert list(p.apply(range(N))) == [2 * x for x in range(2, N)]
        assert time.monotonic() - start < 2 * LIMIT + 1.0
        assert p.statistics().stages[0].timeouts == 2  # abandoned, each in its thread
    assert sys.getswitchinterval() == switch  # lowered only while timed calls ran


def test_a_thread_stage_retries_a_late_call(release: str) -> None:
    calls: list[int] = []

    def slow_once(x: int) -> int:
        calls.append(x)
        if x == 2 and calls.count(2) == 1:
            while not os.path.exists(release):
                time.sleep(0.05)
        return x

    s = stage(slow_once, stateful=False, threads=2, batch_size=4, timeout=LIMIT, retries=1)
    with Pipeline([s]) as p:
        assert list(p.apply(range(6))) == list(range(6))
        stats = p.statistics().stages[0]
    assert (stats.timeouts, stats.retries) == (1, 1)


def test_on_an_executor_the_result_is_given_up_on(release: str) -> None:
    hang = Hang({7}, release=release, stateful=False, batch_size=8, timeout=LIMIT,
                on_error="collect")
    with ThreadPoolExecutor(3) as ex:
        with Pipeline([hang], executor=ex) as p:
            start = time.monotonic()
            assert list(p.apply(range(N))) == [2 * x for x in range(N) if x != 7]
            assert time.monotonic() - start < LIMIT + 1.0
        [record] = p.errors.records
        assert (record.input, record.error_type) == ("7", "StageTimeout")
        Path(release).touch()  # before the executor's shutdown waits for its thread


@pytest.mark.parametrize("attrs", [{"stateful": False}, {"stateful": False, "threads": 2},
                                   {"stateful": True}])
def test_sequential_pipeline_does_not_time_calls(attrs: dict[str, Any]) -> None:
    slow = stage(lambda x: time.sleep(0.05) or x, timeout=0.01, **attrs)
    p = SequentialPipeline([slow])
    assert list(p.apply(range(3))) == [0, 1, 2]
    assert p.statistics().stages[0].timeouts == 0


@pytest.mark.parametrize(("value", "error", "words"), [
    (0, ValueError, "timeout=0; it must be a number of seconds > 0"),
    (-1.0, ValueError, "timeout=-1.0"),
    (float("inf"), ValueError, "timeout=inf"),
    ("1", TypeError, "timeout='1' is a str"),
    (True, TypeError, "timeout=True is a bool"),
])
def test_bad_timeouts_fail_at_construction(value: Any, error: type[Exception],
                                           words: str) -> None:
    assert_refused({"timeout": value}, error, words)


def test_run_in_master_refuses_a_timeout() -> None:
    with pytest.raises(ValueError, match="cannot safely interrupt the calling process"):
        stage(len, run_in_master=True, timeout=1.0)


def test_stage_sets_it() -> None:
    s = stage(len, stateful=False, timeout=2)
    assert s.timeout == 2
    assert "timeout=2" in repr(s)


@pytest.mark.parametrize("how", ["sleep", "spin"])
def test_an_async_call_past_its_timeout_is_cancelled(how: str) -> None:
    import asyncio

    @stage(batch_size=16, concurrency=8, timeout=LIMIT, on_error="collect")
    async def call(x: int) -> int:
        if x == 7:
            while True:  # "spin": it never returns, but it awaits, so it can be cancelled
                await asyncio.sleep(3600 if how == "sleep" else 0)
        return 2 * x

    with Pipeline([call]) as p:
        start = time.monotonic()
        assert list(p.apply(range(N))) == [2 * x for x in range(N) if x != 7]
        assert time.monotonic() - start < LIMIT + 1.0
        [record] = p.errors.records
        assert (record.input, record.error_type) == ("7", "StageTimeout")
        assert "its task was cancelled" in record.message
        assert p.statistics().stages[0].timeouts == 1


def test_an_async_call_is_retried() -> None:
    tries: dict[int, int] = {}

    @stage(batch_size=16, concurrency=8, retries=2, retry_on=ConnectionError)
    async def call(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] < 3:
            raise ConnectionError(x)
        return x

    with Pipeline([call]) as p:
        assert list(p.apply(range(N))) == list(range(N))
        assert p.statistics().stages[0].retries == 2 * N
