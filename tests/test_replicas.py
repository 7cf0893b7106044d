"""``replicas = n`` on a stateless stage: ``n`` processes of its own, each set up once."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from blpipe import Pipeline, SequentialPipeline, StageTimeout, stage
from tests.test_setup_teardown import Hooked, events

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def square(x: int) -> int:
    return x * x


def test_its_own_processes_each_set_up_once(tmp_path: Path, start_method: str) -> None:
    path = tmp_path / "log"
    model = Hooked(path, "model", stateful=False, batch_size=8, replicas=2)
    other = Hooked(path, "other", stateful=False, batch_size=8)
    with Pipeline([model, other], n_cpu=5, start_method=start_method) as p:
        outs = list(p.apply(range(60)))
        st = p.statistics()
    assert [x[2][2] for x in outs] == list(range(60))
    ev = events(path)
    models = Counter(pid for h, pid, tag in ev if h == "setup" and tag == "model")
    others = Counter(pid for h, pid, tag in ev if h == "setup" and tag == "other")
    assert sorted(models.values()) == [1, 1]  # two replicas, each set up once
    assert len(others) == 3  # the shared pool: what n_cpu leaves
    assert not set(models) & set(others)  # the shared pool never loads it
    assert {x[2][0] for x in outs} <= set(models)  # its calls ran in its replicas
    assert st.pool_size == 3
    assert st.stages[0].workers == 2


def test_the_cpu_budget_counts_replicas() -> None:
    s = stage(square, stateful=False, replicas=3)
    with Pipeline([s, stage(square, stateful=False)], n_cpu=5) as p:
        assert p.n_cpu == 2  # the shared pool's: what the 3 replicas leave
    with Pipeline([s, stage(square, stateful=False), stage(sum)], n_cpu=6) as p:
        assert p.n_cpu == 2  # and the dedicated stage


def test_without_a_shared_pool(start_method: str) -> None:
    s = stage(square, stateful=False, batch_size=16, replicas=2)
    with Pipeline([s], n_cpu=2, start_method=start_method) as p:
        assert list(p.apply(range(100))) == [x * x for x in range(100)]


@pytest.mark.parametrize("attrs", [
    {"stateful": 3},  # windows
    {"group": 4, "batch_size": 8},
    {"ordered": False, "batch_size": 8},
    {"expand": True, "batch_size": 4},
])
def test_shapes_run_as_in_the_shared_pool(attrs: dict[str, Any]) -> None:
    def f(x: Any) -> Any:
        return [x, x] if attrs.get("expand") else x

    stages = [stage(f, **{"stateful": False, **attrs, "replicas": 2})]
    with SequentialPipeline([stage(f, **{"stateful": False, **attrs})]) as q:
        want = list(q.apply(range(50)))
    with Pipeline(stages, n_cpu=3) as p:
        got = list(p.apply(range(50)))
    assert (sorted(got, key=repr) if attrs.get("ordered") is False else got) == \
        (sorted(want, key=repr) if attrs.get("ordered") is False else want)


def test_crash_isolation_and_recycling(tmp_path: Path, start_method: str) -> None:
    path = tmp_path / "log"
    s = Hooked(path, stateful=False, batch_size=4, die_on=7, on_error="collect", replicas=2)
    with Pipeline([s], n_cpu=3, start_method=start_method, max_tasks_per_child=10) as p:
        outs = list(p.apply(range(40)))
        assert [e.input for e in p.errors.records] == ["7"]
        assert p.statistics().restarts >= 1
    assert [x for _, _, x in outs] == [x for x in range(40) if x != 7]
    assert len({pid for h, pid, _ in events(path) if h == "setup"}) > 2


def sleepy(x: int) -> int:
    if x == 3:
        time.sleep(30)
    return x


def test_timeouts(start_method: str) -> None:
    s = stage(sleepy, stateful=False, batch_size=4, replicas=2, timeout=0.5,
              on_error="collect")
    with Pipeline([s], n_cpu=2, start_method=start_method) as p:
        assert list(p.apply(range(8))) == [0, 1, 2, 4, 5, 6, 7]
        assert isinstance(p.errors.records[0].exception, StageTimeout)


@pytest.mark.parametrize(("value", "error", "words"), [
    (0, ValueError, "replicas=0"),
    ("2", TypeError, "replicas='2'"),
    (True, TypeError, "replicas=True"),
])
def test_bad_values(value: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=rf"stage\(square\): {words}"):
        stage(square, stateful=False, replicas=value)


@pytest.mark.parametrize("attrs", [{"run_in_master": True},
                                   {"stateful": False, "threads": 2}])
def test_refused_in_the_calling_process(attrs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"replicas=2 .* calling process"):
        stage(square, replicas=2, **attrs)


class Model:
    """A stateless stage whose setup() loads a 100 MiB model."""

    stateful = False
    batch_size = 8

    def __init__(self, replicas: int | None) -> None:
        self.replicas = replicas

    def setup(self) -> None:
        weights = bytearray(100 * MiB)
        weights[::4096] = b"\1" * len(range(0, len(weights), 4096))  # resident
        self.weights = weights

    def __call__(self, x: int) -> int:
        return x + self.weights[4096 * (x % 100)]


def tree_pss() -> int:
    total = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux PSS")
def test_a_model_costs_replicas_times_its_size(start_method: str) -> None:
    before = tree_pss()
    with Pipeline([Model(2), stage(square, stateful=False, batch_size=8)], n_cpu=4,
                  start_method=start_method) as p:
        it = p.apply(range(10_000))
        assert next(it) == 1
        used = tree_pss() - before
        assert sum(1 for _ in it) == 9_999
    assert used < 350 * MiB, f"{used / MiB:.0f} MiB"


# -- replicas of a stateful stage ------------------------------------------------------


class Counting:
    """Counts what it sees; each copy's flush() says how many."""

    batch_size = 8
    replicas = 2

    def __init__(self, die_on: int | None = None) -> None:
        self.n = 0
        self.die_on = die_on

    def __call__(self, x: int) -> int:
        if x == self.die_on:
            os.kill(os.getpid(), 9)
        self.n += 1
        return x

    def flush(self) -> list[Any]:
        return [("seen", self.n)]


def test_stateful_copies_each_flush_at_the_end(start_method: str) -> None:
    with Pipeline([stage(square, stateful=False, batch_size=8), Counting()], n_cpu=4,
                  start_method=start_method) as p:
        outs = list(p.apply(range(200)))
        assert p.statistics().stages[1].workers == 2
    assert outs[:200] == [x * x for x in range(200)]  # in input order
    seen = outs[200:]
    assert len(seen) == 2  # one flush() per copy, after every other output
    assert sum(n for _, n in seen) == 200  # each input went to one copy


def test_stateful_copies_set_up_once_each(tmp_path: Path, start_method: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, batch_size=8, replicas=2)], n_cpu=3,
                  start_method=start_method) as p:
        outs = list(p.apply(range(50)))
    ev = events(path)
    assert sorted(Counter(pid for h, pid, _ in ev if h == "setup").values()) == [1, 1]
    assert Counter(h for h, _, _ in ev) == {"setup": 2, "teardown": 2}
    assert {pid for pid, _, _ in outs} <= {pid for _, pid, _ in ev}


def test_sequential_runs_the_copies_in_turn() -> None:
    with SequentialPipeline([Counting()]) as p:
        assert list(p.apply(range(9)))[9:] == [("seen", 5), ("seen", 4)]


def test_a_copy_that_dies_fails_the_stage(start_method: str) -> None:
    from blpipe import WorkerDied

    got: list[int] = []
    with Pipeline([Counting(die_on=40)], n_cpu=2, start_method=start_method) as p, \
            pytest.raises(WorkerDied, match=r"stage 0 \(Counting\(\)\), replica [01]"):
        got.extend(p.apply(range(100)))
    assert got == list(range(len(got)))
    assert len(got) <= 40


def test_stateful_copies_refuse_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be checkpointed yet"):
        Pipeline([Counting()], checkpoint=tmp_path / "c")


# -- where setup() runs --------------------------------------------------------------


class Placed:
    """Logs what blpipe.where() says in its setup()."""

    stateful = False
    batch_size = 8

    def __init__(self, path: Path, **attrs: Any) -> None:
        self.path = str(path)
        self.__dict__.update(attrs)

    def setup(self) -> None:
        import blpipe

        w = blpipe.where()
        with open(self.path, "a") as f:
            f.write(f"{w.stage}|{w.replica}|{w.replicas}|{w.process}\n")

    def __call__(self, x: int) -> int:
        return x


@pytest.mark.parametrize(("attrs", "n"), [({"replicas": 3}, 3), ({}, 2),
                                          ({"stateful": True, "replicas": 2}, 2),
                                          ({"run_in_master": True, "stateful": True}, 1)])
def test_setup_knows_where_it_runs(tmp_path: Path, start_method: str, attrs: dict[str, Any],
                                   n: int) -> None:
    path = tmp_path / "log"
    with Pipeline([Placed(path, **attrs)], n_cpu=2, start_method=start_method) as p:
        assert list(p.apply(range(10))) == list(range(10))
    lines = [line.split("|") for line in path.read_text().splitlines()]
    assert sorted(int(r) for _, r, _, _ in lines) == list(range(n))
    assert {(s, int(k)) for s, _, k, _ in lines} == {("stage 0 (Placed())", n)}
    where = {w for *_, w in lines}
    assert where == ({"the calling process"} if "run_in_master" in attrs
                     else {w for w in where if w.startswith("worker process ")})


def test_where_outside_setup_says_what_it_is_for() -> None:
    import blpipe

    with pytest.raises(RuntimeError, match=r"blpipe.where\(\) tells a stage's setup"):
        blpipe.where()


class SlowStart:
    stateful = False
    batch_size = 4

    def setup(self) -> None:
        time.sleep(0.6)

    def __call__(self, x: int) -> int:
        return x


def test_the_report_names_a_setup_that_dominates_a_short_run() -> None:
    with Pipeline([SlowStart()], n_cpu=2) as p:
        assert list(p.apply(range(10))) == list(range(10))
        st = p.statistics()
    assert st.setups == 2
    assert st.setup_seconds >= 1.2
    assert any(a.startswith("setup() took") for a in st.advice())
    with Pipeline([stage(square, stateful=False)], n_cpu=2) as p:
        list(p.apply(range(10)))
        assert not any("setup()" in a for a in p.statistics().advice())
