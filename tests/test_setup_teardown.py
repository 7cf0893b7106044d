"""``setup()`` and ``teardown()``: once per process that calls the stage, on every placement.

Each hook appends ``"<hook> <pid> <tag>"`` to a log file, and each call
returns the pid it ran in and whether its process had run ``setup()``, so a
test reads who set up where, and that every call came after its setup.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, stage

pytestmark = pytest.mark.timeout(120)


def log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())  # one write: lines from processes never mix
    finally:
        os.close(fd)


def events(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    return [(h, int(pid), tag) for h, pid, tag in
            (line.split() for line in path.read_text().splitlines())]


class Hooked:
    """Logs its hooks; a call returns ``(pid, set up here, x)``. ``fail`` names
    a hook that raises; ``die_on`` an input that kills its process."""

    stateful: Any = True

    def __init__(self, path: Path, tag: str = "s", fail: str | None = None,
                 die_on: int | None = None, **attrs: Any) -> None:
        self.path = str(path)
        self.tag = tag
        self.fail = fail
        self.die_on = die_on
        self.__dict__.update(attrs)

    def setup(self) -> None:
        if self.fail == "setup":
            log(self.path, f"failed {os.getpid()} {self.tag}")
            raise ValueError("no model here")
        self.model = os.getpid()
        log(self.path, f"setup {os.getpid()} {self.tag}")  # last: it is set up

    def teardown(self) -> None:
        log(self.path, f"teardown {os.getpid()} {self.tag}")
        if self.fail == "teardown":
            raise KeyError("the commit failed")

    def __call__(self, x: Any) -> Any:
        if x == self.die_on:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid(), getattr(self, "model", None) == os.getpid(), x


PLACES = {
    "dedicated": {},
    "pool": {"stateful": False, "batch_size": 8},
    "master": {"run_in_master": True},
    "thread": {"stateful": False, "threads": 3, "batch_size": 8},
}


def check_once_each(path: Path, outs: list[Any]) -> None:
    """Each call ran after a setup in its process; each process set up once
    and tore down once."""
    assert all(ready for _, ready, _ in outs), "a call ran before its process's setup()"
    ev = events(path)
    setups = Counter(pid for h, pid, _ in ev if h == "setup")
    teardowns = Counter(pid for h, pid, _ in ev if h == "teardown")
    assert set(setups.values()) <= {1}, ev
    assert teardowns == setups, ev
    assert {pid for pid, _, _ in outs} <= set(setups)


@pytest.mark.parametrize("place", PLACES)
def test_once_per_process(tmp_path: Path, start_method: str, place: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, **PLACES[place])], n_cpu=2, start_method=start_method) as p:
        outs = list(p.apply(range(50)))
        assert p.statistics().setup_seconds > 0
    assert [x for _, _, x in outs] == list(range(50))
    check_once_each(path, outs)
    pids = {pid for h, pid, _ in events(path)}
    if place in ("master", "thread"):
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids
        assert len(pids) == (2 if place == "pool" else 1)


def test_async_stage_sets_up_in_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "log"

    class Fetch(Hooked):
        async def __call__(self, x: Any) -> Any:  # type: ignore[override]
            return os.getpid(), getattr(self, "model", None) == os.getpid(), x

    with Pipeline([Fetch(path, batch_size=8)], n_cpu=1) as p:
        outs = list(p.apply(range(20)))
    check_once_each(path, outs)
    assert {pid for _, pid, _ in events(path)} == {os.getpid()}


def test_sequential_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with SequentialPipeline([Hooked(path), Hooked(path, "t", stateful=False)]) as p:
        outs = list(p.apply(range(5)))
    assert len(outs) == 5
    assert [(h, tag) for h, _, tag in events(path)] == [
        ("setup", "s"), ("setup", "t"), ("teardown", "t"), ("teardown", "s")]


def add_one(x: int) -> int:
    return x + 1


def mark(path: str, hook: str) -> None:
    log(path, f"{hook} {os.getpid()} fn")


def test_a_function_gets_hooks_through_stage(tmp_path: Path, start_method: str) -> None:
    path = str(tmp_path / "log")
    inc = stage(add_one, stateful=False, batch_size=8, setup=partial(mark, path, "setup"),
                teardown=partial(mark, path, "teardown"))
    assert "setup=" in repr(inc)
    with Pipeline([inc], n_cpu=2, start_method=start_method) as p:
        assert list(p.apply(range(10))) == list(range(1, 11))
    ev = events(tmp_path / "log")
    assert Counter(h for h, _, _ in ev) == {"setup": 2, "teardown": 2}
    assert len({pid for _, pid, _ in ev}) == 2


@pytest.mark.parametrize("place", ["dedicated", "pool", "master"])
def test_teardown_after_break_and_after_a_failure_elsewhere(tmp_path: Path, place: str,
                                                           start_method: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, **PLACES[place])], n_cpu=2, start_method=start_method) as p:
        for out in p.apply(range(10_000)):
            if out[2] == 3:
                break
    check_once_each(path, [])
    assert events(path)

    path2 = tmp_path / "log2"

    def boom(x: Any) -> Any:
        if x[2] == 7:
            raise RuntimeError("a later stage failed")
        return x

    with Pipeline([Hooked(path2, **PLACES[place]), stage(boom, run_in_master=True)],
                  n_cpu=2, start_method=start_method) as p:
        seen: list[int] = []
        with pytest.raises(RuntimeError, match="a later stage failed"):
            seen.extend(out[2] for out in p.apply(range(100)))
    assert seen == list(range(7))
    check_once_each(path2, [])
    assert events(path2)


def slow_loop(x: Any) -> Any:
    return x


def test_teardown_after_close_midway_through_a_long_call(tmp_path: Path,
                                                        start_method: str) -> None:
    """A worker busy in a call when the run stops is interrupted, then tears down."""
    path = tmp_path / "log"

    class Slow(Hooked):
        def __call__(self, x: Any) -> Any:
            if x == 1:
                end = time.monotonic() + 60
                while time.monotonic() < end:  # a long pure-Python call
                    pass
            return super().__call__(x)

    p = Pipeline([Slow(path), stage(slow_loop, stateful=False)], n_cpu=2,
                 start_method=start_method)
    it = p.apply(range(10))
    assert next(it)[2] == 0
    t = time.monotonic()
    p.close()
    assert time.monotonic() - t < 5
    assert sorted(h for h, _, _ in events(path)) == ["setup", "teardown"]


def test_a_setup_failure_ends_the_run_before_any_output(tmp_path: Path,
                                                       start_method: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, stateful=False, batch_size=8), Hooked(path, "bad",
                                                                       fail="setup")],
                  n_cpu=2, start_method=start_method) as p:
        it = p.apply(range(100))
        with pytest.raises(ValueError, match="no model here") as info:
            next(it)
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "stage 1 (Hooked()) in setup(), in worker process" in note
    ev = events(path)  # the stages set up were torn down; the one that failed, not
    assert [(h, tag) for h, _, tag in ev if tag == "bad"] == [("failed", "bad")]
    check_once_each(path, [])


class FailsSecond(Hooked):
    def setup(self) -> None:
        try:
            fd = os.open(self.path + ".first", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.close(fd)
        except FileExistsError:
            time.sleep(1.0)  # the other worker has long run calls by now
            raise ValueError("the second worker's setup failed") from None
        super().setup()


def test_no_output_leaves_while_a_setup_may_still_fail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Pipeline([FailsSecond(path, stateful=False, batch_size=4)], n_cpu=2) as p, \
            pytest.raises(ValueError, match="second worker"):
        next(p.apply(range(100)))


@pytest.mark.parametrize("place", ["dedicated", "pool", "master", "thread"])
def test_a_teardown_error_is_raised_after_every_output(tmp_path: Path, place: str) -> None:
    path = tmp_path / "log"
    seen: list[int] = []
    with Pipeline([Hooked(path, fail="teardown", **PLACES[place])], n_cpu=2) as p, \
            pytest.raises(KeyError, match="the commit failed") as info:
        seen.extend(out[2] for out in p.apply(range(30)))
    assert seen == list(range(30))
    assert "teardown()" in " ".join(getattr(info.value, "__notes__", []))


def test_sequential_teardown_error_is_raised(tmp_path: Path) -> None:
    with SequentialPipeline([Hooked(tmp_path / "log", fail="teardown")]) as p:
        it = p.apply(range(3))
        assert [x for _, _, x in (next(it), next(it), next(it))] == [0, 1, 2]
        with pytest.raises(KeyError, match="the commit failed"):
            next(it)


class Flaky(Hooked):
    """Its setup fails on its first try in each process."""

    def setup(self) -> None:
        marker = f"{self.path}.{os.getpid()}"
        if not os.path.exists(marker):
            Path(marker).touch()
            raise ConnectionError("the model server is not up yet")
        super().setup()


@pytest.mark.parametrize("place", ["dedicated", "pool", "master"])
def test_retries_apply_to_setup(tmp_path: Path, place: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Flaky(path, retries=1, **PLACES[place])], n_cpu=2) as p:
        assert len(list(p.apply(range(10)))) == 10
    path2 = tmp_path / "log2"
    with pytest.raises(ConnectionError, match="not up yet"), \
            Pipeline([Flaky(path2, **PLACES[place])], n_cpu=2) as p:
        list(p.apply(range(10)))  # a setup in the calling process fails at __enter__


def test_a_replaced_worker_sets_up_again(tmp_path: Path, start_method: str) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, stateful=False, batch_size=2)], n_cpu=2,
                  start_method=start_method, max_tasks_per_child=5) as p:
        outs = list(p.apply(range(40)))
        assert p.statistics().restarts > 0
    check_once_each(path, outs)
    assert len({pid for h, pid, _ in events(path)}) > 2


@pytest.mark.parametrize("replicas", [None, 2])
def test_a_killed_worker_never_tears_down(tmp_path: Path, start_method: str,
                                          replicas: int | None) -> None:
    path = tmp_path / "log"
    with Pipeline([Hooked(path, stateful=False, batch_size=4, die_on=5, on_error="collect",
                          replicas=replicas)], n_cpu=2, start_method=start_method) as p:
        outs = list(p.apply(range(20)))
        assert [e.input for e in p.errors.records] == ["5"]
    assert [x for _, _, x in outs] == [x for x in range(20) if x != 5]
    ev = events(path)
    setups = {pid for h, pid, _ in ev if h == "setup"}
    torn = {pid for h, pid, _ in ev if h == "teardown"}
    assert len(setups) >= 3  # two, and at least one in place of a killed one
    assert torn < setups  # the killed: set up, never torn down
    assert set(Counter(pid for h, pid, _ in ev if h == "teardown").values()) == {1}


class Connection:
    """A resource that cannot be pickled."""

    def __reduce__(self) -> Any:
        raise TypeError("a connection cannot be pickled")


class Tally(Hooked):
    """Keeps a count; its setup opens a connection, which cannot be pickled."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.count = 0

    def setup(self) -> None:
        super().setup()
        self.conn = Connection()

    def __call__(self, x: Any) -> Any:
        assert isinstance(self.conn, Connection)
        self.count += 1
        return self.count


def test_a_checkpoint_leaves_resources_out_and_resume_sets_up_again(tmp_path: Path) -> None:
    path, ckpt = tmp_path / "log", tmp_path / "ckpt"
    with Pipeline([Tally(path)], checkpoint=ckpt, checkpoint_every=None) as p:
        it = p.apply(range(10))
        first = [next(it) for _ in range(4)]
        p.checkpoint()
        first += [next(it) for _ in range(3)]
        assert p.checkpointed is not None
    assert first == list(range(1, 8))
    n = p.checkpointed.inputs
    with Pipeline([Tally(path)], checkpoint=ckpt) as p:
        rest = list(p.apply(range(10)))
    assert rest == list(range(n + 1, 11))  # the count came back; the connection was made again
    assert Counter(h for h, _, _ in events(path)) == {"setup": 2, "teardown": 2}


def test_an_executor_sets_up_once_per_process_and_never_tears_down(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with ProcessPoolExecutor(2) as ex, \
            Pipeline([Hooked(path, stateful=False, batch_size=8)], executor=ex) as p:
        outs = list(p.apply(range(40)))
    assert all(ready for _, ready, _ in outs)
    ev = events(path)
    assert {h for h, _, _ in ev} == {"setup"}
    assert set(Counter(pid for _, pid, _ in ev).values()) == {1}
    with ThreadPoolExecutor(2) as ex, \
            Pipeline([Hooked(path, "thr", stateful=False, fail="setup")], executor=ex) as p, \
            pytest.raises(ValueError, match="no model here") as info:
        list(p.apply(range(5)))
    assert "of the executor" in " ".join(getattr(info.value, "__notes__", []))


def test_setup_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"stage\(add_one\): setup=3 is not callable"):
        stage(add_one, setup=3)  # type: ignore[arg-type]

    class Odd:
        teardown = "later"

        def __call__(self, x: Any) -> Any:
            return x

    with pytest.raises(TypeError, match=r"stage 0 \(.*Odd\(\)\): teardown='later'"):
        Pipeline([Odd()])

