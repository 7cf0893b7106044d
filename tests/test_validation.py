"""Every bad attribute is refused at construction, naming the stage, attribute and value."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, SerializationError, stage
from tests.helpers import live_children


def with_attrs(**attrs: Any) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        return x

    vars(f).update(attrs)
    return f


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize(("attrs", "error", "words"), [
    ({"stateful": 0}, ValueError, ["stateful=0", "window"]),
    ({"stateful": -2}, ValueError, ["stateful=-2"]),
    ({"stateful": "yes"}, TypeError, ["stateful='yes'", "str"]),
    ({"stateful": 2.0}, TypeError, ["stateful=2.0", "float"]),
    ({"batch_size": 0}, ValueError, ["batch_size=0"]),
    ({"batch_size": -1}, ValueError, ["batch_size=-1"]),
    ({"batch_size": "8"}, TypeError, ["batch_size='8'", "str"]),
    ({"batch_size": 4.0}, TypeError, ["batch_size=4.0", "float"]),
    ({"batch_size": True}, TypeError, ["batch_size=True", "bool"]),
    ({"run_in_master": False}, ValueError, ["run_in_master=False", "falsy"]),
    ({"run_in_master": 0}, ValueError, ["run_in_master=0", "falsy"]),
    ({"stateful": False, "threads": 0}, ValueError, ["threads=0"]),
    ({"stateful": False, "threads": "4"}, TypeError, ["threads='4'", "str"]),
    ({"stateful": False, "threads": 2.5}, TypeError, ["threads=2.5", "float"]),
    ({"threads": 4}, ValueError, ["threads=4", "stateful=True", "stateful=False"]),
    ({"stateful": False, "threads": 4, "run_in_master": True}, ValueError,
     ["threads=4", "run_in_master"]),
    ({"stateful": False, "ordered": "no"}, TypeError, ["ordered='no'", "str"]),
    ({"stateful": False, "ordered": 0}, TypeError, ["ordered=0", "int"]),
    ({"ordered": False}, ValueError, ["ordered=False", "stateful"]),
    ({"run_in_master": True, "ordered": False}, ValueError, ["ordered=False",
                                                              "run_in_master"]),
    ({"on_error": "ignore"}, ValueError, ["on_error='ignore'", "'skip'", "'collect'"]),
    ({"on_error": None}, ValueError, ["on_error=None"]),
    ({"on_error": "skip", "max_errors": -1}, ValueError, ["max_errors=-1"]),
    ({"on_error": "skip", "max_errors": 2.0}, TypeError, ["max_errors=2.0", "float"]),
    ({"on_error": "skip", "max_errors": True}, TypeError, ["max_errors=True", "bool"]),
    ({"max_errors": 3}, ValueError, ["max_errors=3", "on_error is 'raise'"]),
])
def test_bad_attribute(cls: type, attrs: dict[str, Any], error: type, words: list[str]) -> None:
    good = with_attrs(stateful=False)
    with pytest.raises(error) as info:
        cls([good, with_attrs(**attrs)])
    message = str(info.value)
    for word in ["stage 1", "with_attrs.<locals>.f", *words]:
        assert word in message


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_not_callable(cls: type) -> None:
    with pytest.raises(TypeError, match=r"stage 0 .*42.* is not callable"):
        cls([42])


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_attributes_on_class_and_instance(cls: type) -> None:
    class Bad:
        batch_size = 0

        def __call__(self, x: Any) -> Any:
            return x

    with pytest.raises(ValueError, match="batch_size=0"):
        cls([Bad()])
    ok = Bad()
    ok.batch_size = 3  # the instance wins over the class
    with cls([ok]) as p:
        assert p.stages[0].batch_size == 3


def test_class_attributes_and_defaults() -> None:
    def plain(x: Any) -> Any:
        return x

    (spec,) = SequentialPipeline([plain]).stages
    assert (spec.placement.value, spec.window, spec.batch_size) == ("dedicated", None, 1)


class HoldsGenerator:
    stateful = False

    def __init__(self) -> None:
        self.gen = (i for i in range(3))

    def __call__(self, x: Any) -> Any:
        return x


def test_unpicklable_stage_fails_at_construction() -> None:
    with pytest.raises(TypeError) as info:  # SerializationError is a TypeError
        Pipeline([HoldsGenerator()])
    assert isinstance(info.value, SerializationError)
    assert "stage 0 (HoldsGenerator())" in str(info.value)
    assert "generator" in str(info.value)
    assert not live_children()


def test_unpicklable_stage_is_fine_in_master_and_sequential() -> None:
    s = HoldsGenerator()
    s.run_in_master = True  # type: ignore[attr-defined]
    with Pipeline([s]) as p:
        assert list(p.apply([1, 2])) == [1, 2]
    with SequentialPipeline([HoldsGenerator()]) as q:
        assert list(q.apply([1, 2])) == [1, 2]


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize("n_cpu", [0, -2])
def test_bad_n_cpu(cls: type, n_cpu: int) -> None:
    with pytest.raises(ValueError, match=f"n_cpu={n_cpu}"):
        cls([with_attrs(stateful=False)], n_cpu=n_cpu)


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize("n_cpu", [2.0, -1.0, "4", True])
def test_n_cpu_type(cls: type, n_cpu: Any) -> None:
    with pytest.raises(TypeError, match="n_cpu"):
        cls([with_attrs(stateful=False)], n_cpu=n_cpu)


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_bad_start_method(cls: type) -> None:
    with pytest.raises(ValueError, match="start_method='threads'"):
        cls([with_attrs(stateful=False)], start_method="threads")


def test_sequential_takes_the_same_arguments() -> None:
    ops = [with_attrs(stateful=False), with_attrs()]
    seq = SequentialPipeline(ops, n_cpu=4, start_method="spawn")
    with Pipeline(ops, n_cpu=4, start_method="spawn") as p:
        assert seq.n_cpu == p.n_cpu == 3


def test_operations_must_be_a_sequence() -> None:
    with pytest.raises(TypeError, match="sequence of callables"):
        Pipeline(len)  # type: ignore[arg-type]


def test_stage_helper() -> None:
    n = stage(len, stateful=False, batch_size=64)
    assert (n("abcd"), n.stateful, n.batch_size) == (4, False, 64)
    assert pickle.loads(pickle.dumps(n))("ab") == 2

    @stage(stateful=3)
    def diff2(w: tuple[int, ...]) -> int:
        return w[2] - w[0]

    assert diff2.stateful == 3
    assert diff2.batch_size == 1
    assert diff2.__name__ == "diff2"
    with SequentialPipeline([diff2]) as p:
        assert list(p.apply([1, 4, 9, 16])) == [8, 12]
    assert "diff2" in repr(diff2)
    master = stage(abs, run_in_master=True)
    assert SequentialPipeline([master]).stages[0].placement.value == "master"


def test_stage_helper_validates_at_once() -> None:
    with pytest.raises(ValueError, match=r"stage\(len\): batch_size=0"):
        stage(len, batch_size=0)
    with pytest.raises(TypeError, match="stateful='x'"):
        stage(stateful="x")(len)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run_in_master=False"):
        stage(with_attrs(run_in_master=False), batch_size=2)


def test_stage_helper_keeps_existing_attributes() -> None:
    f = with_attrs(stateful=2, batch_size=5)
    s = stage(f, batch_size=7)
    assert (s.stateful, s.batch_size) == (2, 7)


def test_executor_must_be_an_executor() -> None:
    with pytest.raises(TypeError, match=r"executor=.* is not a concurrent.futures.Executor"):
        Pipeline([with_attrs(stateful=False)], executor=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize("keep", [-1, 2.5, True])
def test_keep_errors(cls: type, keep: Any) -> None:
    with pytest.raises(ValueError, match="keep_errors="):
        cls([with_attrs(stateful=False)], keep_errors=keep)
