"""The stall watchdog: while the run goes on, statistics give each stage the age
of its oldest call in flight and that call's input; ``report()`` and the
progress bar flag a call that has run far longer than the stage's usual one.

Each test holds one call (on input 7) until it has read the statistics, then
lets it go: the run ends with every output, and the figures go back to zero.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, stage
from blpipe.statistics import StageStatistics, Statistics
from tests.stages import Attrs, Hang

pytestmark = pytest.mark.timeout(120)

N = 40
PLACES: dict[str, dict[str, Any]] = {
    "pool": {"stateful": False, "batch_size": 8},
    "window": {"stateful": 2, "batch_size": 8},
    "dedicated": {"stateful": True, "batch_size": 8},
    "thread": {"stateful": False, "threads": 2, "batch_size": 8},
    "master": {"run_in_master": True},
}


@pytest.fixture
def release(tmp_path: Path) -> Iterator[str]:
    """A file whose creation ends the held call."""
    path = tmp_path / "release"
    yield str(path)
    path.touch()


def _consume(p: Pipeline, inputs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.extend(p.apply(inputs)))
    t.start()
    return t, out


def _held(p: Pipeline, index: int, age: float = 1.2, within: float = 20.0,
          want: str | None = None, release: str | None = None) -> Statistics:
    """The statistics once stage ``index``'s oldest call has run ``age`` seconds
    (and is named ``want``: a worker asked may take a while to answer). When
    none is seen, the held call is ``release``d first: a call in the caller's
    threads would otherwise hold the pipeline's close until the test times out,
    and hide this failure behind the timeout."""
    deadline = time.monotonic() + within
    seen = None
    while time.monotonic() < deadline:
        st = p.statistics()
        s = st.stages[index]
        seen = s.oldest_call_seconds, s.oldest_call_input
        if s.oldest_call_seconds >= age and s.oldest_call_input and \
                want in (None, s.oldest_call_input):
            return st
        time.sleep(0.05)
    if release is not None:
        Path(release).touch()
    raise AssertionError(f"no call of stage {index} was seen running {age} s on {want}; last "
                         f"seen (seconds, input): {seen}:\n{p.report()}")


def _expected(attrs: dict[str, Any]) -> list[Any]:
    if attrs.get("stateful") == 2:
        return [(x - 1, x) for x in range(1, N)]
    return [2 * x for x in range(N)]


@pytest.mark.parametrize("how", ["sleep", "spin"])
@pytest.mark.parametrize("place", PLACES)
def test_a_held_call_is_seen_with_its_input(place: str, how: str, start_method: str,
                                            release: str) -> None:
    attrs = PLACES[place]
    with Pipeline([Hang({7}, how=how, release=release, **attrs)], n_cpu=2,
                  start_method=start_method) as p:
        t, out = _consume(p, range(N))
        st = _held(p, 0, want="(6, 7)" if attrs.get("stateful") == 2 else "7",
                   release=release)
        s = st.stages[0]
        assert 1.2 <= s.oldest_call_seconds < 20
        assert s.stalled(), s
        assert st.running
        report = st.report()
        assert f"stalled? stage 0 (Hang()) has run a call on {s.oldest_call_input} for" \
            in report, report
        Path(release).touch()
        t.join(30)
        assert out == _expected(attrs)
        after = p.statistics().stages[0]
        assert after.oldest_call_seconds == 0.0
        assert after.oldest_call_input is None
        assert not after.stalled()
        assert "stalled?" not in p.report()


class _Same(Attrs):
    def __call__(self, x: Any) -> Any:
        return x


def test_fused_and_expanding_stages(start_method: str, release: str) -> None:
    """A pool segment of two fused stages, then an expansion feeding a held stage."""
    expand = stage(lambda x: [x, x], stateful=False, expand=True, batch_size=8)
    hang = Hang({7}, release=release, stateful=False, batch_size=8)
    with Pipeline([_Same(stateful=False, batch_size=8), expand, hang], n_cpu=2,
                  start_method=start_method) as p:
        t, out = _consume(p, range(N))
        st = _held(p, 2, want="7", release=release)
        assert st.stages[0].oldest_call_seconds < 1.0
        Path(release).touch()
        t.join(30)
        assert out == [2 * x for x in range(N) for _ in (0, 1)]


class HoldsTheGIL(Attrs):
    """On 7, sleeps 2.5 s in C calls that hold the GIL (``deaf``: with the
    watchdog's signal blocked, as C code that never lets a handler run)."""

    def __init__(self, deaf: bool = False, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.deaf = deaf

    def __call__(self, x: int) -> int:
        if x == 7:
            import ctypes
            import signal

            if self.deaf:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held in the call
            end = time.monotonic() + 2.5
            while (left := end - time.monotonic()) > 0:
                libc.usleep(int(min(left, 0.5) * 1e6))  # cut short by a signal: go on
            if self.deaf:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        return x


def test_a_call_in_c_that_holds_the_gil_is_named(start_method: str) -> None:
    with Pipeline([HoldsTheGIL(stateful=False, batch_size=16)], n_cpu=2,
                  start_method=start_method) as p:
        t, out = _consume(p, range(N))
        s = _held(p, 0, age=1.0, want="7").stages[0]
        assert s.stalled()
        t.join(30)
        assert out == list(range(N))


def test_a_worker_that_cannot_answer_is_told_by_its_chunk(start_method: str) -> None:
    with Pipeline([HoldsTheGIL(deaf=True, stateful=False, batch_size=16)], n_cpu=2,
                  start_method=start_method) as p:
        t, out = _consume(p, range(N))
        s = _held(p, 0, age=1.0).stages[0]
        text = s.oldest_call_input or ""
        assert text == "7" or re.fullmatch(r"one of \d+ inputs from \d+", text), text
        assert s.stalled()
        t.join(30)
        assert out == list(range(N))


async def _held_async(x: int) -> int:
    release = os.environ["BLPIPE_TEST_RELEASE"]
    while x == 7 and not os.path.exists(release):
        await asyncio.sleep(0.02)
    return 2 * x


def test_an_async_call(release: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLPIPE_TEST_RELEASE", release)
    with Pipeline([stage(_held_async, concurrency=4, batch_size=8)]) as p:
        t, out = _consume(p, range(N))
        s = _held(p, 0, release=release).stages[0]
        assert s.oldest_call_input == "7"
        Path(release).touch()
        t.join(30)
        assert out == [2 * x for x in range(N)]


def test_a_task_on_an_executor(release: str) -> None:
    """Known by its task: since it was sent, on its chunk's inputs."""
    with ThreadPoolExecutor(2) as ex, Pipeline([Hang({7}, release=release, batch_size=2)],
                                               executor=ex) as p:
        t, out = _consume(p, range(N))
        s = _held(p, 0, release=release).stages[0]
        assert s.oldest_call_input == "7" or "inputs from" in (s.oldest_call_input or "")
        Path(release).touch()
        t.join(30)
        assert out == [2 * x for x in range(N)]


def test_the_progress_bar_shows_a_stall(release: str) -> None:
    lines: list[str] = []

    class Bar:
        def __call__(self, st: Statistics) -> None:
            stalled = [s for s in st.stages if s.stalled()]
            lines.extend(f"{s.name} {s.oldest_call_input}" for s in stalled)

    with Pipeline([Hang({7}, release=release, stateful=False)], n_cpu=1,
                  progress=Bar()) as p:
        t, out = _consume(p, range(N))
        _held(p, 0, release=release)
        deadline = time.monotonic() + 10.0  # progress is fed while the hub waits on nothing
        while "stage 0 (Hang()) 7" not in lines and time.monotonic() < deadline:
            time.sleep(0.02)
        Path(release).touch()
        t.join(30)
    assert out == [2 * x for x in range(N)]
    assert "stage 0 (Hang()) 7" in lines


def test_the_tqdm_bar_names_the_stall(release: str, capfd: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    auto = pytest.importorskip("tqdm.auto")  # in the [test] extra; never skipped in CI
    monkeypatch.setattr(auto.tqdm, "monitor_interval", 0)  # tqdm's own thread, not ours
    with Pipeline([Hang({7}, release=release, stateful=False)], n_cpu=1, progress=True) as p:
        t, out = _consume(p, range(N))
        _held(p, 0, release=release)
        named, err = re.compile(r"s0=7 stalled: s0 [12]s on 7\]"), ""
        deadline = time.monotonic() + 10.0
        while not named.search(err) and time.monotonic() < deadline:
            time.sleep(0.02)
            err += capfd.readouterr().err
        Path(release).touch()
        t.join(30)
    assert out == [2 * x for x in range(N)]
    err += capfd.readouterr().err
    assert named.search(err), err


@pytest.mark.parametrize(("usual", "age", "flagged"), [
    (0.001, 0.9, False),  # under 1 s, however unusual
    (0.001, 1.1, True),
    (0.5, 4.9, False),  # under 10 x its usual call
    (0.5, 5.1, True),
    (0.0, 9.0, False),  # no call has finished: 10 s
    (0.0, 10.5, True),
])
def test_the_rule(usual: float, age: float, flagged: bool) -> None:
    s = StageStatistics(name="s", placement="pool", window=None, batch_size=1, segment=0,
                        workers=1, items_in=0, items_out=0, busy_seconds=0.0,
                        starved_seconds=0.0, blocked_seconds=0.0, serialize_seconds=0.0,
                        in_flight=1, peak_in_flight=1, throughput=0.0, utilization=0.0,
                        usual_call_seconds=usual, oldest_call_seconds=age,
                        oldest_call_input="x")
    assert s.stalled() is flagged
