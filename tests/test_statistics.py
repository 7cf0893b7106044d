"""statistics(), report() and progress=: the figures are right and the advice is specific."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, stage
from blpipe.statistics import Statistics
from tests.helpers import MiB
from tests.stages import Add, DropMultiples, Echo, RunningSum, Sleepy, Spin, Weighted


def run(p: Any, inputs: Any, consumer_sleep: float = 0.0) -> list[Any]:
    out = []
    with p:
        for y in p.apply(inputs):
            out.append(y)
            if consumer_sleep:
                time.sleep(consumer_sleep)
    return out


@pytest.mark.parametrize("placement", ["pool", "dedicated"])
def test_busy_time_and_bottleneck(start_method: str, placement: str) -> None:
    """5 ms x 200 items is 1.0 s of busy time, and that stage is the bottleneck."""
    slow = Sleepy(0.005, stateful=placement == "dedicated")
    p = Pipeline([Add(1, batch_size=16), slow, Add(2, batch_size=16)], n_cpu=3,
                 start_method=start_method)
    assert len(run(p, range(200))) == 200
    st = p.statistics()
    assert 0.8 <= st.stages[1].busy_seconds <= 1.2
    assert st.bottleneck() == st.stages[1].name
    assert st.stages[0].busy_seconds < 0.1
    assert st.stages[2].busy_seconds < 0.1
    report = p.report()
    assert f"bottleneck: {st.stages[1].name}" in report
    assert "stage 0 (Add" not in report.split("bottleneck:")[1]


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_items_in_and_out_are_exact(cls: type) -> None:
    """Filters count what they drop; a window of k over n inputs gives n - k + 1."""
    ops = [Add(0, batch_size=8), DropMultiples(3, batch_size=8), Weighted(3, batch_size=8),
           RunningSum(), stage(lambda x: x, run_in_master=True)]
    p = cls(ops, n_cpu=2)
    inputs = [None if i == 7 else i for i in range(1, 301)]
    out = run(p, inputs)
    st = p.statistics()
    kept = len([i for i in range(1, 301) if i != 7 and i % 3])
    assert [(s.items_in, s.items_out) for s in st.stages] == [
        (299, 299), (299, kept), (kept, kept - 2), (kept - 2, kept - 2), (kept - 2, kept - 2)]
    assert st.items_yielded == len(out) == kept - 2
    assert not st.running
    assert st.elapsed_seconds > 0


def test_window_first_counts_short_chunks() -> None:
    """A window stage that gets fewer than k inputs in all still counts them in."""
    p = Pipeline([Weighted(5, batch_size=8)], n_cpu=2)
    assert run(p, [1, 2, 3]) == []
    s = p.statistics().stages[0]
    assert (s.items_in, s.items_out) == (3, 0)


def test_consistent_from_another_thread() -> None:
    """Snapshots taken while the stream runs: never more out than in, nothing negative."""
    ops = [Add(1, batch_size=16), DropMultiples(5, batch_size=16), RunningSum(batch_size=4),
           Weighted(2, batch_size=16)]
    p = Pipeline(ops, n_cpu=3)
    snaps: list[Statistics] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def watch() -> None:
        try:
            while not done.wait(0.001):
                snaps.append(p.statistics())
                p.report()
        except BaseException as e:  # raised in a thread, it would not fail the test
            failed.append(e)

    watcher = threading.Thread(target=watch)
    with p:
        watcher.start()
        try:
            for _ in p.apply(range(20_000)):
                pass
        finally:
            done.set()
            watcher.join(10)
    assert not failed, failed
    assert len(snaps) > 10
    assert any(s.running and 0 < s.stages[0].items_in < 20_000 for s in snaps)
    for snap in snaps:
        for s in snap.stages:
            assert s.items_out <= s.items_in
            for name in ("items_in", "items_out", "busy_seconds", "starved_seconds",
                         "blocked_seconds", "serialize_seconds", "in_flight", "peak_in_flight",
                         "throughput", "utilization"):
                assert getattr(s, name) >= 0, (name, s)
            assert s.in_flight <= s.peak_in_flight or s.placement == "master"


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize("inputs", [[], range(50)], ids=["empty", "fifty"])
def test_report_renders_for_every_stage_kind(cls: type, inputs: Any) -> None:
    ops = [Add(1, batch_size=4), RunningSum(), Weighted(2, batch_size=4),
           stage(abs, run_in_master=True)]
    rows = [("stage 0 (Add())", "pool"), ("stage 1 (RunningSum())", "dedicated"),
            ("stage 2 (Weighted())", "pool"), ("stage 3 (abs)", "master")]

    def check(text: str) -> None:
        lines = text.splitlines()
        assert lines[0].startswith("blpipe:"), text
        for name, where in rows:  # a row for each stage, with its placement
            assert any(line.startswith(name) and where in line.split() for line in lines), \
                (name, text)
        assert len(lines) >= 3 + len(ops)

    p = cls(ops, n_cpu=2)
    before = p.report()
    check(before)
    assert "not started" in before.splitlines()[0]
    run(p, inputs)
    check(p.report())


# -- advice: each builds its situation ------------------------------------------

def advice(p: Any) -> str:
    return "\n".join(p.statistics().advice())


def test_advice_batch_size_for_a_pool_stage() -> None:
    p = Pipeline([Sleepy(0.005, stateful=False)], n_cpu=2)
    run(p, range(100))
    assert "has batch_size=1" in advice(p)
    assert "set batch_size = 8" in advice(p)


def test_advice_busy_stateful_stage() -> None:
    p = Pipeline([Add(1, batch_size=16), Sleepy(0.005)], n_cpu=2)
    run(p, range(100))
    text = advice(p)
    assert "stage 1 (Sleepy())" in text
    assert "caps the pipeline at about" in text
    assert "make it a window (stateful = k)" in text


def test_advice_idle_pool() -> None:
    p = Pipeline([Add(1, batch_size=16), Sleepy(0.005)], n_cpu=3)
    run(p, range(100))
    assert "the pool's 2 workers were busy 0%" in advice(p)


def test_advice_oversubscribed() -> None:
    """The default pool takes every CPU; a busy stateful stage then competes with it."""
    p = Pipeline([Spin(0.002, stateful=False, batch_size=64), Spin(0.002)])
    # long enough that the start-up's share of the run leaves the CPUs over the
    # rule's 75 % busy: with 200 inputs it came to 1.5 of 2, on the line
    run(p, range(max(600, 300 * p.n_cpu)))
    st = p.statistics()
    assert f"compete for {st.usable_cpus} usable CPUs" in advice(p)


def test_advice_slow_consumer() -> None:
    p = Pipeline([Add(1, batch_size=8)], n_cpu=2)
    run(p, range(100), consumer_sleep=0.005)
    assert p.statistics().bottleneck() == "the consumer"
    assert "the consumer held the pipeline" in advice(p)


def test_advice_large_items() -> None:
    p = Pipeline([stage(len, stateful=False, batch_size=8)], n_cpu=2)
    run(p, (bytes(4 * MiB) for _ in range(150)))
    assert "its items are large" in advice(p)


def test_no_advice_for_a_balanced_run() -> None:
    p = Pipeline([Spin(0.001, stateful=False, batch_size=32)], n_cpu=2)
    run(p, range(300))
    assert advice(p) == ""


# -- progress ---------------------------------------------------------------------

def test_progress_callable_at_a_bounded_rate() -> None:
    calls: list[Statistics] = []
    p = Pipeline([Sleepy(0.002, stateful=False, batch_size=4)], n_cpu=2, progress=calls.append)
    started = time.monotonic()
    run(p, range(300))
    took = time.monotonic() - started
    assert 2 <= len(calls) <= took / 0.1 + 3
    assert calls[-1].items_yielded == 300
    assert not calls[-1].running
    assert any(c.running for c in calls[:-1])


def test_progress_bar(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    auto = pytest.importorskip("tqdm.auto")  # in the [test] extra; never skipped in CI
    monkeypatch.setattr(auto.tqdm, "monitor_interval", 0)  # tqdm's own thread, not ours
    run(Pipeline([Add(1, batch_size=8)], n_cpu=2, progress=True), range(1000))
    err = capfd.readouterr().err
    assert "1000" in err
    assert "s0=1,000" in err


def test_progress_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"pip install 'blpipe\[progress\]'"):
        Pipeline([Echo()], progress=True)


def test_progress_must_be_callable() -> None:
    with pytest.raises(TypeError, match="progress='yes'"):
        SequentialPipeline([Echo()], progress="yes")
