"""The oracle: random recipes of every stage kind, and runs compared with SequentialPipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import strategies as st

from blpipe import Pipeline, SequentialPipeline
from tests.stages import (
    Add,
    DropMultiples,
    Expand,
    GroupEach,
    GroupSum,
    MasterScale,
    RunningSum,
    Weighted,
)

batch = st.integers(1, 16)
kinds = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 9), batch),
    st.tuples(st.just("drop"), st.integers(2, 5), batch),
    st.tuples(st.just("sum"), st.just(0), batch),
    st.tuples(st.just("window"), st.integers(1, 5), batch),
    st.tuples(st.just("master"), st.integers(1, 3), st.one_of(st.none(), st.integers(1, 4))),
    st.tuples(st.just("thread"), st.integers(1, 9), batch),
    st.tuples(st.just("thread-window"), st.integers(1, 4), batch),
    # the shapes: expansions and groups, on each placement
    st.tuples(st.sampled_from(["expand", "expand-dedicated", "expand-master", "expand-thread",
                               "expand-window"]), st.integers(2, 5), batch),
    st.tuples(st.sampled_from(["group", "group-dedicated", "group-master", "group-thread",
                               "infer", "infer-dedicated"]), st.integers(1, 5), batch),
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
        "expand": lambda k, b: Expand(k, stateful=False, batch_size=b),
        "expand-dedicated": lambda k, b: Expand(k, batch_size=b),
        "expand-master": lambda k, _: Expand(k, run_in_master=True),
        "expand-thread": lambda k, b: Expand(k, stateful=False, threads=2, batch_size=b),
        "expand-window": lambda k, b: Expand(k, stateful=2, batch_size=b),
        # a group needs batch_size >= its size
        "group": lambda n, b: GroupSum(n, stateful=False, batch_size=max(n, b)),
        "group-dedicated": lambda n, b: GroupSum(n, batch_size=max(n, b)),
        "group-master": lambda n, _: GroupSum(n, run_in_master=True, batch_size=n),
        "group-thread": lambda n, b: GroupSum(n, stateful=False, threads=2,
                                              batch_size=max(n, b)),
        "infer": lambda n, b: GroupEach(n, stateful=False, batch_size=max(n, b)),
        "infer-dedicated": lambda n, b: GroupEach(n, batch_size=max(n, b)),
    }
    return [make[kind](a, b) for kind, a, b in recipe]


def threaded(stage: Any, n: int) -> Any:
    stage.threads = n
    return stage


Outcome = tuple[list[Any], tuple[type[BaseException], tuple[Any, ...]] | None]


def outcome(p: Any, data: Iterable[Any],
            raises: tuple[type[BaseException], ...] = ()) -> Outcome:
    """A run's outputs, then the type and args of the exception that ended it if it is
    one of ``raises``; any other exception propagates."""
    got = []
    try:
        for x in p.apply(data):
            got.append(x)
    except raises as e:
        return got, (type(e), e.args)
    return got, None


def with_errors(p: Any, data: Iterable[Any],
                raises: tuple[type[BaseException], ...] = (ValueError,)) -> tuple[Any, ...]:
    """A run's :func:`outcome`, then the error records and counts it left."""
    got, failure = outcome(p, data, raises)
    records = [(r.stage, r.position, r.input, r.error_type, r.message) for r in p.errors.records]
    return got, failure, records, list(p.errors.counts)


def assert_matches_sequential(make: Callable[[], list[Any]],
                              data: Iterable[Any] | Callable[[], Iterable[Any]], *,
                              raises: tuple[type[BaseException], ...] = (),
                              observe: Callable[[Any, Iterable[Any]], Any] | None = None,
                              **kw: Any) -> Any:
    """Fresh stages from ``make()`` run in SequentialPipeline, then in ``Pipeline(**kw)``,
    and both runs must give the same.

    ``data`` is the input, or a function that makes it afresh for each run (an
    iterator is read once). What a run gives is ``observe(pipeline, data)``, by
    default its :func:`outcome`. Returns what the Pipeline's run gave.
    """
    def source() -> Iterable[Any]:
        return data() if callable(data) else data

    def see(p: Any, it: Iterable[Any]) -> Any:
        return observe(p, it) if observe is not None else outcome(p, it, raises)

    with SequentialPipeline(make()) as ref:
        expected = see(ref, source())
    with Pipeline(make(), **kw) as p:
        actual = see(p, source())
    assert actual == expected
    return actual
