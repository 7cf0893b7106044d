"""Random pipelines of every stage kind give exactly what SequentialPipeline gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blpipe import Pipeline
from tests.helpers import SLOW_AND_LARGE
from tests.oracle import assert_matches_sequential, batch, build, inputs, recipes
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


faults = (recipes, inputs, st.integers(1, 4), st.integers(0, 6), st.sampled_from(sorted(KINDS)),
          st.integers(0, 1000), batch, st.one_of(st.none(), st.integers(0, 300)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(*faults)
def test_faults_match_sequential(recipe: list[Any], data: list[Any], n_cpu: int,
                                 position: int, kind: str, at: int, size: int,
                                 raise_after: int | None) -> None:
    """A stage failing anywhere, or the input raising: same outputs first, same error."""
    check_fault(recipe, data, n_cpu, position, kind, at, size, raise_after, "fork")


@settings(max_examples=10, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(*faults)
def test_faults_match_sequential_spawn(recipe: list[Any], data: list[Any], n_cpu: int,
                                       position: int, kind: str, at: int,
                                       size: int, raise_after: int | None) -> None:
    check_fault(recipe, data, n_cpu, position, kind, at, size, raise_after, "spawn")


def check_fault(recipe: list[Any], data: list[Any], n_cpu: int, position: int,
                kind: str, at: int, size: int, raise_after: int | None,
                start_method: str) -> None:
    def ops() -> list[Any]:
        stages = build(recipe)
        stages.insert(min(position, len(stages)), FailAt(at, **kind_attrs(kind, size)))
        return stages

    assert_matches_sequential(ops, lambda: failing_source(data, raise_after),
                              raises=(ValueError, Broken), n_cpu=n_cpu,
                              start_method=start_method)
