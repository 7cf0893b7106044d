"""One-shot apply, closing, and that every process is gone whichever way the run ends."""

from __future__ import annotations

import gc
import itertools
import pickle
import warnings

import pytest

from blpipe import Pipeline, SequentialPipeline
from tests.helpers import live_children, take, wait_no_children
from tests.stages import Add, RunningSum


def fresh() -> list[object]:
    return [Add(1, batch_size=8), RunningSum(batch_size=4), Add(2, batch_size=8)]


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_second_apply_raises(cls: type) -> None:
    with cls(fresh()) as p:
        assert list(p.apply(range(3))) == [3, 5, 8]
        with pytest.raises(RuntimeError, match="already called"):
            p.apply(range(3))


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_use_after_close_raises(cls: type) -> None:
    p = cls(fresh())
    p.close()
    p.close()  # any number of times
    with pytest.raises(RuntimeError, match="closed"):
        p.apply(range(3))
    with pytest.raises(RuntimeError, match="closed"), p:
        pass


def test_close_while_reading_raises() -> None:
    with Pipeline(fresh()) as p:
        out = p.apply(range(100))
        next(out)
        p.close()
        with pytest.raises(RuntimeError, match="closed"):
            list(out)
    assert not wait_no_children()


def test_break_then_exit_over_endless_input(start_method: str) -> None:
    with Pipeline(fresh(), start_method=start_method) as p:
        out = p.apply(itertools.count())  # held, so only leaving 'with' can stop it
        take(out, 100)
        assert live_children()
    assert not wait_no_children(1.0)
    del out


def consume_and_raise(p: Pipeline) -> None:
    with p:
        for _ in p.apply(itertools.count()):
            raise KeyError("consumer")


def test_exception_in_loop_body() -> None:
    with pytest.raises(KeyError):
        consume_and_raise(Pipeline(fresh()))
    assert not wait_no_children(1.0)


def test_exhausted_generator_stops_processes() -> None:
    p = Pipeline(fresh())
    assert list(p.apply(range(50))) == list(SequentialPipeline(fresh()).apply(range(50)))
    assert not wait_no_children(1.0)
    p.close()


@pytest.mark.parametrize("how", ["closed", "collected"])
def test_a_generator_that_goes_away_stops_processes(how: str) -> None:
    p = Pipeline(fresh())
    out = p.apply(itertools.count())
    next(out)
    assert live_children()
    if how == "closed":
        out.close()
    else:
        del out
        gc.collect()
    assert not wait_no_children(1.0)
    p.close()


def test_unclosed_pipeline_warns() -> None:
    p = Pipeline(fresh())
    assert list(p.apply(range(3))) == [3, 5, 8]
    with pytest.warns(ResourceWarning, match="never closed"):
        p.__del__()


def test_unstarted_pipeline_warns_too() -> None:
    p = Pipeline(fresh())
    with pytest.warns(ResourceWarning, match="never closed"):
        p.__del__()


def test_failed_construction_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="batch_size"):
            Pipeline([Add(1, batch_size=0)])
        gc.collect()


@pytest.mark.parametrize("cls", [Pipeline, SequentialPipeline])
def test_pipelines_do_not_pickle(cls: type) -> None:
    with cls(fresh()) as p, pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(p)


def test_apply_needs_an_iterable() -> None:
    with Pipeline(fresh()) as p, pytest.raises(TypeError):
        p.apply(5)  # type: ignore[arg-type]
