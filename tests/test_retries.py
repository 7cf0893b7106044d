"""Retries: ``retries``, ``retry_on`` and ``retry_backoff``, on every placement."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, stage
from blpipe._core.retry import delay
from blpipe._core.spec import BACKOFF_CAP
from tests.helpers import assert_refused
from tests.stages import Flaky

pytestmark = pytest.mark.timeout(90)

PLACES: dict[str, dict[str, Any]] = {
    "pool": {"stateful": False, "batch_size": 8},
    "window": {"stateful": 1, "batch_size": 8},
    "dedicated": {"batch_size": 8},
    "master": {"run_in_master": True},
    "thread": {"stateful": False, "threads": 2, "batch_size": 8},
}
N = 24


@pytest.fixture
def tally(tmp_path: Path) -> str:
    return str(tmp_path)


def _run(stages: list[Any], start_method: str, **kw: Any) -> tuple[list[Any], Any]:
    with Pipeline(stages, n_cpu=2, start_method=start_method, **kw) as p:
        out = list(p.apply(range(N)))
        return out, p.statistics()


def _expected(attrs: dict[str, Any]) -> list[int]:
    if attrs.get("stateful") == 1:  # a window of one: the stage gets 1-tuples
        return [(x,) * 10 for x in range(N)]  # type: ignore[misc]
    return [x * 10 for x in range(N)]


@pytest.mark.parametrize("place", PLACES)
def test_a_call_that_fails_twice_gives_exact_output_with_two_retries(
        place: str, start_method: str, tally: str) -> None:
    attrs = PLACES[place]
    flaky = Flaky(tally, fails=2, retries=2, **attrs)
    out, stats = _run([flaky], start_method)
    assert out == _expected(attrs)
    assert stats.stages[0].retries == 2 * N
    assert stats.stages[0].errors == 0


@pytest.mark.parametrize("place", PLACES)
def test_one_retry_too_few_fails_naming_the_attempts(place: str, start_method: str,
                                                     tally: str) -> None:
    flaky = Flaky(tally, fails=2, retries=1, **PLACES[place])
    with pytest.raises(ConnectionError, match="try 2 on") as info:
        _run([flaky], start_method)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "failed 2 times (retries=1)" in notes
    assert "stage 0 (Flaky" in notes


def test_on_an_executor(tally: str) -> None:
    for ex in (ThreadPoolExecutor(3), ProcessPoolExecutor(2)):
        with ex, Pipeline([Flaky(tally + f"/{type(ex).__name__}", retries=2, stateful=False,
                                 batch_size=8)], executor=ex) as p:
            Path(tally, type(ex).__name__).mkdir()
            assert list(p.apply(range(N))) == [x * 10 for x in range(N)]
            assert p.statistics().stages[0].retries == 2 * N


def test_sequential_pipeline_retries(tally: str) -> None:
    p = SequentialPipeline([Flaky(tally, retries=2)])
    assert list(p.apply(range(N))) == [x * 10 for x in range(N)]
    assert p.statistics().stages[0].retries == 2 * N


def test_only_the_errors_in_retry_on_are_retried(tally: str) -> None:
    flaky = Flaky(tally, fails=1, error=KeyError, retries=3, retry_on=(ConnectionError,),
                  stateful=False, batch_size=4)
    with pytest.raises(KeyError):
        _run([flaky], "fork")
    assert flaky.calls(0) == 1  # one try: KeyError is not retried
    flaky = Flaky(tally + "/b", fails=1, error=ConnectionResetError, retries=1,
                  retry_on=OSError, run_in_master=True)
    Path(tally, "b").mkdir()
    assert _run([flaky], "fork")[0] == [x * 10 for x in range(N)]  # a subclass is retried


@pytest.mark.parametrize("place", ["pool", "dedicated"])
def test_the_policy_applies_to_the_last_error(place: str, tally: str) -> None:
    flaky = Flaky(tally, fails=2, retries=1, on_error="collect", **PLACES[place])
    with Pipeline([flaky], n_cpu=2) as p:
        assert list(p.apply(range(N))) == []
        records = p.errors.records
        assert [e.input for e in records] == [repr(x) for x in range(N)]
        assert {e.error_type for e in records} == {"ConnectionError"}
        assert "failed 2 times (retries=1)" in records[0].traceback
    assert [flaky.calls(x) for x in range(N)] == [2] * N  # no input tried more than twice


@pytest.mark.parametrize("place", ["pool", "dedicated", "thread"])
def test_an_expansion_is_retried_until_its_first_output(place: str, tally: str) -> None:
    flaky = Flaky(tally, fails=2, expand=True, retries=2, **PLACES[place])
    with Pipeline([flaky], n_cpu=2) as p:
        assert list(p.apply(range(N))) == [y for x in range(N) for y in (x, x * 10)]
        assert p.statistics().stages[0].retries == 2 * N
    # after an output went on, a retry would give it twice: the error goes on instead
    late = Flaky(tally + "/late", fails=1, expand=True, late=True, retries=3,
                 on_error="collect", **PLACES[place])
    Path(tally, "late").mkdir()
    with Pipeline([late], n_cpu=2) as p:
        assert list(p.apply(range(N))) == list(range(N))
        assert len(p.errors.records) == N
    assert {late.calls(x) for x in range(N)} == {1}


def test_a_stateful_stage_keeps_the_state_a_failed_call_left() -> None:
    class Count:
        def __init__(self) -> None:
            self.n = 0
            self.retries = 1

        def __call__(self, x: int) -> int:
            self.n += 1
            if self.n % 2:  # every first try fails, after counting
                raise ConnectionError("once")
            return self.n

    assert list(SequentialPipeline([Count()]).apply(range(4))) == [2, 4, 6, 8]
    with Pipeline([Count()]) as p:
        assert list(p.apply(range(4))) == [2, 4, 6, 8]


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    for retry in (1, 2, 5):
        draws = [delay(0.1, retry) for _ in range(200)]
        assert all(0.0 <= d <= 0.1 * 2 ** (retry - 1) for d in draws)
        assert len(set(draws)) > 100  # drawn, not fixed
    assert max(delay(10.0, 30) for _ in range(50)) <= BACKOFF_CAP


def test_backoff_sleeps_between_tries(tally: str, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("blpipe._core.retry.time.sleep", slept.append)
    p = SequentialPipeline([Flaky(tally, fails=2, retries=2, retry_backoff=0.5)])
    assert list(p.apply(range(3))) == [0, 10, 20]
    assert len(slept) == 6
    assert all(0 <= s <= 1.0 for s in slept)
    assert max(slept[0::2]) <= 0.5  # the first retry waits at most the base


@pytest.mark.parametrize(("attrs", "error", "words"), [
    ({"retries": -1}, ValueError, "retries=-1; it must be an int >= 0"),
    ({"retries": "2"}, TypeError, "retries='2' is a str"),
    ({"retries": True}, TypeError, "retries=True is a bool"),
    ({"retries": 2, "retry_on": (int,)}, TypeError, "retry_on=(<class 'int'>,); it must be an "
                                                    "exception class"),
    ({"retries": 2, "retry_on": "ConnectionError"}, TypeError, "retry_on='ConnectionError'"),
    ({"retries": 2, "retry_on": (KeyboardInterrupt,)}, TypeError, "subclasses of Exception"),
    ({"retries": 2, "retry_on": ()}, ValueError, "retry_on=() retries no error"),
    ({"retries": 2, "retry_backoff": -1}, ValueError, "retry_backoff=-1; it must be"),
    ({"retries": 2, "retry_backoff": "1"}, TypeError, "retry_backoff='1' is a str"),
    ({"retries": 2, "retry_backoff": 1e9}, ValueError, "<= 60"),
    ({"retry_on": (OSError,)}, ValueError, "retry_on=(<class 'OSError'>,) says how to retry, "
                                           "but retries is 0"),
    ({"retries": 0, "retry_backoff": 1.0}, ValueError, "retry_backoff=1.0 says how to retry"),
])
def test_bad_retry_attributes_fail_at_construction(attrs: dict[str, Any],
                                                   error: type[Exception], words: str) -> None:
    assert_refused(attrs, error, words)


def test_stage_sets_the_retry_attributes() -> None:
    s = stage(len, stateful=False, retries=3, retry_on=OSError, retry_backoff=0.25)
    assert (s.retries, s.retry_on, s.retry_backoff) == (3, OSError, 0.25)
    assert "retries=3" in repr(s)


def test_the_report_counts_the_retries(tally: str) -> None:
    p = SequentialPipeline([Flaky(tally, fails=1, retries=1)])
    list(p.apply(range(3)))
    line = next(x for x in p.report().splitlines() if x.startswith("calls retried"))
    assert line.startswith("calls retried (retries): stage 0 (Flaky")
    assert line.endswith(" 3")


def test_sequential_pipeline_retries_an_async_stage() -> None:
    tries: dict[int, int] = {}

    @stage(retries=2, retry_on=ConnectionError)
    async def call(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] < 3:
            raise ConnectionError(x)
        return x

    p = SequentialPipeline([call])
    assert list(p.apply(range(5))) == list(range(5))
    assert p.statistics().stages[0].retries == 10
