"""Failures surface after every earlier output, with their type, stage and traceback."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blpipe import (
    BrokenPipeline,
    Pipeline,
    RemoteTraceback,
    SequentialPipeline,
    SerializationError,
    WorkerDied,
)
from tests.helpers import drain
from tests.stages import KINDS, SIGKILL, Add, DieAt, FailAt, RunningSum, kind_attrs, slow_identity


@pytest.mark.parametrize("kind", KINDS)
def test_stage_error_keeps_type_and_earlier_outputs(kind: str, start_method: str) -> None:
    def ops() -> list[Any]:
        return [Add(0, batch_size=8), FailAt(60, **kind_attrs(kind, 8)), Add(1, batch_size=8)]

    got_ref, ref_err = drain(SequentialPipeline(ops()).apply(range(200)))
    with Pipeline(ops(), n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(200)))
        with pytest.raises(RuntimeError):
            p.apply([])  # one-shot, and broken anyway
        p.close()
        p.close()
    assert got == got_ref
    assert got[-1] == 60  # the output of input 59, the last before the failure
    assert type(err) is type(ref_err) is ValueError
    assert err.args == ("bad 60", 60)
    if sys.version_info >= (3, 11):
        (note,) = err.__notes__
        assert "stage 1 (FailAt())" in note
        assert "60" in note
    if kind in ("pool", "window", "dedicated"):  # raised in a worker process
        assert isinstance(err.__cause__, RemoteTraceback)
        assert "tests/stages.py" in str(err.__cause__)
        assert 'raise ValueError(f"bad {value}", value)' in str(err.__cause__)


def test_error_is_not_held_back_by_a_slow_stage() -> None:
    start = time.monotonic()
    with Pipeline([FailAt(0, stateful=False), slow_identity], n_cpu=2) as p:
        _, err = drain(p.apply(range(10_000)))
    assert isinstance(err, ValueError)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("n", [0, 1, 37, 50])  # 37: a partial chunk is left when it raises
def test_input_iterator_error_surfaces_unchanged(n: int, start_method: str) -> None:
    class Broken(Exception):
        pass

    def source() -> Iterator[int]:
        yield from range(n)
        raise Broken("source")

    with Pipeline([Add(1, batch_size=64), RunningSum(batch_size=4), Add(0, batch_size=16)],
                  n_cpu=3, start_method=start_method) as p:
        got, err = drain(p.apply(source()))
    assert got == list(SequentialPipeline([Add(1), RunningSum()]).apply(range(n)))
    assert type(err) is Broken
    assert err.args == ("source",)
    assert err.__cause__ is None


@pytest.mark.parametrize("kind", ["pool", "window", "dedicated"])
@pytest.mark.parametrize(("code", "shown"), [(3, "exit code 3"), (SIGKILL, "SIGKILL(-9)")])
def test_dead_worker_is_named(kind: str, code: int, shown: str, start_method: str) -> None:
    attrs = {"stateful": {"pool": False, "window": 1, "dedicated": True}[kind], "batch_size": 1}
    start = time.monotonic()
    with Pipeline([Add(0, batch_size=4), DieAt(40, code, **attrs)], n_cpu=2,
                  start_method=start_method) as p:
        got, err = drain(p.apply(range(1000)))
    assert time.monotonic() - start < 10
    assert got == list(range(40))
    assert isinstance(err, WorkerDied)
    assert isinstance(err, BrokenPipeline)
    assert err.exitcode == code
    assert "stage 1 (DieAt())" in str(err)
    assert shown in str(err)
    assert "40" in str(err)  # the input it was handling
    assert "stage stage" not in str(err)


class Unpicklable:
    def __init__(self, stateful: bool) -> None:
        self.stateful = stateful

    def __call__(self, x: int) -> Any:
        return (i for i in range(x)) if x == 5 else x


@pytest.mark.parametrize("stateful", [False, True])
def test_unpicklable_result_names_stage_and_input(stateful: bool, start_method: str) -> None:
    with Pipeline([Unpicklable(stateful)], n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(10)))
    assert got == [0, 1, 2, 3, 4]
    assert isinstance(err, SerializationError)
    assert "Unpicklable()" in str(err)
    assert "generator" in str(err)


class OddError(Exception):
    def __init__(self, a: int, b: int) -> None:  # unpickles wrongly: cpython #103061
        super().__init__(f"{a}-{b}")


def raise_odd(x: int) -> int:
    if x == 3:
        raise OddError(1, 2)
    return x


raise_odd.stateful = False  # type: ignore[attr-defined]


def test_exception_that_cannot_unpickle(start_method: str) -> None:
    with Pipeline([raise_odd], n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(10)))
    assert got == [0, 1, 2]
    assert isinstance(err, SerializationError)
    assert "raise_odd" in str(err)
    assert "3" in str(err)
    assert "OddError" in str(err.__cause__)


class StampThenDie:
    """Writes the time to ``path``, then kills its own process, on input 30."""

    def __init__(self, path: str, stateful: bool) -> None:
        self.path = path
        self.stateful = stateful
        self.batch_size = 4

    def __call__(self, x: int) -> int:
        if x == 30:
            with open(self.path, "w") as f:
                f.write(repr(time.monotonic()))
            os.kill(os.getpid(), signal.SIGKILL)
        return x


@pytest.mark.parametrize("stateful", [False, True])
def test_death_surfaces_within_a_second(tmp_path: Path, stateful: bool,
                                        start_method: str) -> None:
    stamp = tmp_path / "died"
    with Pipeline([Add(0, batch_size=8), StampThenDie(str(stamp), stateful)], n_cpu=3,
                  start_method=start_method) as p:
        got, err = drain(p.apply(range(10_000)))
        caught = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
    assert isinstance(err, WorkerDied)
    assert caught - float(stamp.read_text()) < 1.0
    # The death is placed at the first input of the chunk the worker held (chunks
    # adapt, up to batch_size 4): every output before that input is delivered.
    assert got == list(range(len(got)))
    assert 30 - 4 < len(got) <= 30
    assert err.input_repr is not None
    assert err.input_repr.startswith(str(len(got)))


def test_unpicklable_input_to_a_pool_stage() -> None:
    def make(x: int) -> Any:
        return (i for i in range(3)) if x == 7 else x

    make.run_in_master = True  # type: ignore[attr-defined]
    with Pipeline([make, Add(1, batch_size=4)], n_cpu=2) as p:
        got, err = drain(p.apply(range(20)))
    assert got == list(range(1, 8))
    assert isinstance(err, SerializationError)
    assert "generator" in str(err)
