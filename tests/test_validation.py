"""Every bad attribute is refused at construction, naming the stage, attribute and value."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
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


# A pipeline's own options, refused as a stage's attributes are: the wrong type is a
# TypeError, the right type out of range a ValueError, and the message names the class,
# the option and its value, then what is accepted.

CHECKPOINT = object()  # a checkpoint file in the test's tmp_path

# the options both pipelines take
SHARED_REFUSED = [
    ({"n_cpu": 0}, ValueError, "n_cpu=0); it must be an int >= 1"),
    ({"n_cpu": -2}, ValueError, "n_cpu=-2); it must be an int >= 1"),
    ({"n_cpu": 2.0}, TypeError, "n_cpu=2.0) is a float"),
    ({"n_cpu": -1.0}, TypeError, "n_cpu=-1.0) is a float"),
    ({"n_cpu": "4"}, TypeError, "n_cpu='4') is a str"),
    ({"n_cpu": "all"}, TypeError, "or 'auto'"),
    ({"n_cpu": True}, TypeError, "n_cpu=True) is a bool"),
    ({"start_method": "threads"}, ValueError, "start_method='threads'); it must be one of"),
    ({"start_method": 3}, TypeError, "start_method=3) is an int; it must be one of"),
    ({"progress": "yes"}, TypeError, "progress='yes') is a str; it must be True for a tqdm"),
    ({"progress": 1}, TypeError, "progress=1) is an int"),
    ({"keep_errors": -1}, ValueError, "keep_errors=-1); it must be an int >= 0"),
    ({"keep_errors": 2.5}, TypeError, "keep_errors=2.5) is a float; it must be an int >= 0"),
    ({"keep_errors": True}, TypeError, "keep_errors=True) is a bool"),
    ({"keep_errors": "10"}, TypeError, "keep_errors='10') is a str"),
]

# the options only Pipeline takes
PIPELINE_REFUSED = [
    ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child=0); it must be an int >= 1"),
    ({"max_tasks_per_child": -1}, ValueError, "max_tasks_per_child=-1); it must be"),
    ({"max_tasks_per_child": 2.0}, TypeError, "max_tasks_per_child=2.0) is a float"),
    ({"max_tasks_per_child": True}, TypeError, "max_tasks_per_child=True) is a bool"),
    ({"max_tasks_per_child": "2"}, TypeError, "max_tasks_per_child='2') is a str"),
    ({"max_bytes_in_flight": 0}, ValueError, "max_bytes_in_flight=0); it must be an int >= 1"),
    ({"max_bytes_in_flight": -5}, ValueError, "max_bytes_in_flight=-5); it must be"),
    ({"max_bytes_in_flight": 1.5}, TypeError, "max_bytes_in_flight=1.5) is a float"),
    ({"max_bytes_in_flight": True}, TypeError, "max_bytes_in_flight=True) is a bool"),
    ({"max_bytes_in_flight": "1GB"}, TypeError, "max_bytes_in_flight='1GB') is a str"),
    ({"executor": object()}, TypeError, "is an object; it must be a concurrent.futures.Executor"),
    ({"checkpoint": 3}, TypeError, "checkpoint=3) is an int; it must be a file path"),
    ({"checkpoint": b"c"}, TypeError, "checkpoint=b'c') is a bytes; it must be a file path"),
    ({"checkpoint": CHECKPOINT, "checkpoint_every": 0}, ValueError,
     "checkpoint_every=0); it must be a number of seconds > 0"),
    ({"checkpoint": CHECKPOINT, "checkpoint_every": -1.0}, ValueError, "checkpoint_every=-1.0)"),
    ({"checkpoint": CHECKPOINT, "checkpoint_every": float("nan")}, ValueError,
     "checkpoint_every=nan)"),
    ({"checkpoint": CHECKPOINT, "checkpoint_every": "1"}, TypeError,
     "checkpoint_every='1') is a str; it must be a number of seconds > 0"),
    ({"checkpoint": CHECKPOINT, "checkpoint_every": True}, TypeError,
     "checkpoint_every=True) is a bool"),
    ({"checkpoint": CHECKPOINT, "on_checkpoint": 3}, TypeError,
     "on_checkpoint=3) is an int; it must be a callable"),
]


def assert_option_refused(cls: type, options: dict[str, Any], error: type[Exception],
                          words: str, tmp_path: Path) -> None:
    """``cls`` built with ``options`` fails with ``error``, naming itself and the option."""
    options = {k: tmp_path / "c" if v is CHECKPOINT else v for k, v in options.items()}
    name = list(options)[-1]  # the one refused; a checkpoint file comes before its options
    with pytest.raises(error) as info:
        cls([with_attrs(stateful=False)], **options)
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}({name}="), message
    assert words in message, message
    assert not live_children()


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
@pytest.mark.parametrize(("options", "error", "words"), SHARED_REFUSED)
def test_a_bad_shared_option(cls: type, options: dict[str, Any], error: type[Exception],
                             words: str, tmp_path: Path) -> None:
    assert_option_refused(cls, options, error, words, tmp_path)


@pytest.mark.parametrize(("options", "error", "words"), PIPELINE_REFUSED)
def test_a_bad_pipeline_option(options: dict[str, Any], error: type[Exception], words: str,
                               tmp_path: Path) -> None:
    assert_option_refused(Pipeline, options, error, words, tmp_path)


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_the_edges_of_the_shared_options_are_accepted(cls: type) -> None:
    for options in [{"n_cpu": -1}, {"n_cpu": None}, {"n_cpu": "auto"}, {"n_cpu": np.int64(2)},
                    {"keep_errors": 0}, {"progress": False}, {"start_method": None}]:
        cls([with_attrs(stateful=False)], **options).close()


def test_the_edges_of_the_pipeline_options_are_accepted(tmp_path: Path) -> None:
    for options in [{"max_tasks_per_child": 1}, {"max_bytes_in_flight": 1},
                    {"checkpoint": tmp_path / "c", "checkpoint_every": float("inf")},
                    {"checkpoint": str(tmp_path / "c"), "checkpoint_every": None}]:
        Pipeline([with_attrs(stateful=False)], **options).close()
