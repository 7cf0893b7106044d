"""Random pipelines of every stage kind give exactly what SequentialPipeline gives."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blpipe import Pipeline, SequentialPipeline
from tests.stages import Add, DropMultiples, MasterScale, RunningSum, Weighted

batch = st.integers(1, 16)
kinds = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 9), batch),
    st.tuples(st.just("drop"), st.integers(2, 5), batch),
    st.tuples(st.just("sum"), st.just(0), batch),
    st.tuples(st.just("window"), st.integers(1, 5), batch),
    st.tuples(st.just("master"), st.integers(1, 3), st.one_of(st.none(), st.integers(1, 4))),
    st.tuples(st.just("thread"), st.integers(1, 9), batch),
    st.tuples(st.just("thread-window"), st.integers(1, 4), batch),
)
recipes = st.lists(kinds, min_size=1, max_size=6)
inputs = st.lists(st.one_of(st.none(), st.integers(0, 1000)), max_size=300)


def build(recipe: list[tuple[str, int, Any]]) -> list[Any]:
    """Fresh stage objects: stateful ones must not share state between the two runs."""
    make = {
        "add": lambda k, b: Add(k, batch_size=b),
        "drop": lambda m, b: DropMultiples(m, batch_size=b),
        "sum": lambda _, b: RunningSum(batch_size=b),
        "window": lambda k, b: Weighted(k, batch_size=b),
        "master": lambda k, w: MasterScale(k, window=w),
        "thread": lambda k, b: threaded(Add(k, batch_size=b), k),
        "thread-window": lambda k, b: threaded(Weighted(k, batch_size=b), 2),
    }
    return [make[kind](a, b) for kind, a, b in recipe]


def threaded(stage: Any, n: int) -> Any:
    stage.threads = n
    return stage


def check(recipe: list[tuple[str, int, Any]], data: list[int | None], n_cpu: int,
          start_method: str) -> None:
    with SequentialPipeline(build(recipe)) as ref:
        expected = list(ref.apply(data))
    with Pipeline(build(recipe), n_cpu=n_cpu, start_method=start_method) as p:
        assert list(p.apply(data)) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipes, inputs, st.integers(1, 4))
def test_matches_sequential_fork(recipe: list[Any], data: list[Any], n_cpu: int) -> None:
    check(recipe, data, n_cpu, "fork")


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
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


fail_kinds = st.sampled_from([
    {"stateful": False}, {"stateful": 2}, {"stateful": True}, {"run_in_master": True},
    {"stateful": False, "threads": 3}, {"stateful": 2, "threads": 2}])


def outcome(p: Any, source: Any) -> tuple[list[Any], Any]:
    got = []
    try:
        for x in p.apply(source):
            got.append(x)
    except (ValueError, Broken) as e:
        return got, (type(e), e.args)
    return got, None


faults = (recipes, inputs, st.integers(1, 4), st.integers(0, 6), fail_kinds,
          st.integers(0, 1000), batch, st.one_of(st.none(), st.integers(0, 300)))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(*faults)
def test_faults_match_sequential(recipe: list[Any], data: list[Any], n_cpu: int,
                                 position: int, kind: dict[str, Any], at: int, size: int,
                                 raise_after: int | None) -> None:
    """A stage failing anywhere, or the input raising: same outputs first, same error."""
    check_fault(recipe, data, n_cpu, position, kind, at, size, raise_after, "fork")


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(*faults)
def test_faults_match_sequential_spawn(recipe: list[Any], data: list[Any], n_cpu: int,
                                       position: int, kind: dict[str, Any], at: int,
                                       size: int, raise_after: int | None) -> None:
    check_fault(recipe, data, n_cpu, position, kind, at, size, raise_after, "spawn")


def check_fault(recipe: list[Any], data: list[Any], n_cpu: int, position: int,
                kind: dict[str, Any], at: int, size: int, raise_after: int | None,
                start_method: str) -> None:
    from tests.stages import FailAt

    def ops() -> list[Any]:
        stages = build(recipe)
        attrs = dict(kind, **({} if "run_in_master" in kind else {"batch_size": size}))
        stages.insert(min(position, len(stages)), FailAt(at, **attrs))
        return stages

    with SequentialPipeline(ops()) as ref:
        expected = outcome(ref, failing_source(data, raise_after))
    with Pipeline(ops(), n_cpu=n_cpu, start_method=start_method) as p:
        assert outcome(p, failing_source(data, raise_after)) == expected
