"""Random pipelines of every stage kind give exactly what SequentialPipeline gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blpipe import Pipeline
from tests.helpers import SLOW_AND_LARGE
from tests.oracle import (
    assert_matches_sequential,
    batch,
    build,
    inputs,
    recipes,
    with_errors,
)
from tests.stages import KINDS, Add, FailAt, Weighted, kind_attrs


def check(recipe: list[tuple[str, int, Any]], data: list[int | None], n_cpu: int,
          start_method: str) -> None:
    assert_matches_sequential(lambda: build(recipe), data, n_cpu=n_cpu,
                              start_method=start_method)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(recipes, inputs, st.integers(1, 4))
def test_matches_sequential_fork(recipe: list[Any], data: list[Any], n_cpu: int) -> None:
    check(recipe, data, n_cpu, "fork")


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(recipes, inputs, st.integers(1, 3))
def test_matches_sequential_spawn(recipe: list[Any], data: list[Any], n_cpu: int) -> None:
    check(recipe, data, n_cpu, "spawn")


def test_long_stream_every_kind(start_method: str) -> None:
    recipe: list[tuple[str, int, Any]] = [
        ("add", 1, 64), ("drop", 3, 64), ("sum", 0, 32), ("window", 3, 64),
        ("add", 2, 64), ("master", 2, 2), ("window", 1, 8)]
    data = [None if i % 11 == 0 else i for i in range(20_000)]
    check(recipe, data, 2, start_method)


def test_empty_input_and_no_stages() -> None:
    with Pipeline([Add(1)]) as p:
        assert list(p.apply([])) == []
    with Pipeline([]) as q:
        assert list(q.apply([1, None, 2])) == [1, 2]


def test_short_input_gives_no_partial_window() -> None:
    with Pipeline([Weighted(4, batch_size=8)], n_cpu=2) as p:
        assert list(p.apply([1, 2, 3])) == []


class Broken(Exception):
    pass


def failing_source(data: list[int | None], raise_after: int | None) -> Any:
    yield from data[:raise_after] if raise_after is not None else data
    if raise_after is not None:
        raise Broken("input", raise_after)


# Each start method the oracle runs under, with its number of examples: spawn starts
# every worker afresh, so it gets fewer; the long run is for -m slow.
RUNS = [pytest.param("fork", 60, id="fork"), pytest.param("spawn", 10, id="spawn"),
        pytest.param("fork", 300, marks=pytest.mark.slow, id="fork-long")]


@pytest.mark.parametrize(("start_method", "examples"), RUNS)
def test_failures_match_sequential(start_method: str, examples: int) -> None:
    """A stage failing anywhere, under each on_error policy, or the input raising:
    the same outputs first, the same error, the same error records and counts."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=SLOW_AND_LARGE)
    @given(recipes, inputs, st.integers(1, 4), st.integers(0, 6), st.sampled_from(sorted(KINDS)),
           batch, st.sampled_from(["raise", "skip", "collect"]), st.integers(0, 1000),
           st.integers(2, 9), st.one_of(st.none(), st.integers(0, 8)),
           st.one_of(st.none(), st.integers(0, 300)))
    def check(recipe: list[Any], data: list[Any], n_cpu: int, position: int, kind: str,
              size: int, on_error: str, at: int, every: int, max_errors: int | None,
              raise_after: int | None) -> None:
        fail: dict[str, Any]
        if on_error == "raise":  # the first error ends the run: it fails on `at` alone
            fail = {"on_error": on_error}
        else:  # errors go past: on every multiple of `every` too, up to max_errors
            fail = {"every": every, "on_error": on_error, "max_errors": max_errors}

        def ops() -> list[Any]:
            stages = build(recipe)
            stages.insert(min(position, len(stages)),
                          FailAt(at, **fail, **kind_attrs(kind, size)))
            return stages

        assert_matches_sequential(
            ops, lambda: failing_source(data, raise_after),
            observe=lambda p, it: with_errors(p, it, raises=(ValueError, Broken)),
            n_cpu=n_cpu, start_method=start_method)

    check()
