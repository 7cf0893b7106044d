"""Stages of every shape: expansion (many outputs per input), groups, batch inference."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from blpipe import BrokenPipeline, Pipeline, SequentialPipeline, WorkerDied, stage
from tests.helpers import Endless, assert_refused, drain, live_children, wait_idle
from tests.oracle import assert_matches_sequential, outcome
from tests.stages import (
    Add,
    BreaksMidway,
    DiesExpanding,
    DiesInGroup,
    Expand,
    FailAt,
    Forever,
    GroupEach,
    GroupFails,
    GroupSum,
    Long,
    Tally,
    triple_each,
)

pytestmark = pytest.mark.timeout(90)

# Where a shaped stage runs, as its attributes.
PLACES: dict[str, dict[str, Any]] = {
    "pool": {"stateful": False, "batch_size": 8},
    "dedicated": {"batch_size": 8},
    "master": {"run_in_master": True, "batch_size": 8},
    "thread": {"stateful": False, "threads": 2, "batch_size": 8},
}
DATA = [None if i % 13 == 7 else i for i in range(300)]


def places(*extra: str) -> list[str]:
    return [*PLACES, *extra]


# -- attributes ------------------------------------------------------------------

@pytest.mark.parametrize(("attrs", "error", "words"), [
    ({"expand": 1}, TypeError, "expand=1 is a int; use True"),
    ({"group": 0, "batch_size": 4}, ValueError, "group=0; it must be an int >= 1"),
    ({"group": 2.0}, TypeError, "group=2.0 is a float"),
    ({"group": 4, "stateful": 2, "batch_size": 8}, ValueError,
     "group=4 calls the stage with lists of 4 consecutive inputs, and stateful=2"),
    ({"group": 8, "batch_size": 4}, ValueError, "group=8 is larger than batch_size=4"),
    ({"group_wait": 0.1}, ValueError, "group_wait=0.1 bounds how long a partial group waits, "
                                      "but the stage has no group"),
    ({"group": 2, "batch_size": 2, "group_wait": "1"}, TypeError, "group_wait='1' is a str"),
    ({"group": 2, "batch_size": 2, "group_wait": 0}, ValueError, "group_wait=0; it must be"),
    ({"group": 2, "batch_size": 2, "group_wait": True}, TypeError, "group_wait=True is a bool"),
])
def test_bad_shapes_fail_at_construction(attrs: dict[str, Any], error: type[Exception],
                                         words: str) -> None:
    assert_refused(attrs, error, words)


def test_stage_sets_the_shapes() -> None:
    s = stage(len, stateful=False, batch_size=64, group=16, expand=True, group_wait=0.5)
    assert (s.group, s.expand, s.group_wait) == (16, True, 0.5)
    assert repr(s) == ("stage(len, stateful=False, batch_size=64, expand=True, group=16, "
                       "group_wait=0.5)")
    assert SequentialPipeline([s]).stages[0].shape == "16:n"


# -- every placement matches SequentialPipeline ----------------------------------

@pytest.mark.parametrize("place", places("window"))
def test_expansion(place: str) -> None:
    attrs = {"stateful": 2, "batch_size": 8} if place == "window" else PLACES[place]
    got = assert_matches_sequential(lambda: [Expand(4, **attrs), Add(1, batch_size=16)],
                                    DATA, n_cpu=2)
    assert len(got[0]) > len(DATA)  # it did expand; None and empty expansions dropped


@pytest.mark.parametrize("place", places())
def test_groups(place: str) -> None:
    got = assert_matches_sequential(lambda: [GroupSum(5, **PLACES[place]), Add(1)], DATA,
                                    n_cpu=2)
    assert len(got[0]) == -(-len([x for x in DATA if x is not None]) // 5)  # the last short


@pytest.mark.parametrize("place", places())
def test_batch_inference(place: str) -> None:
    """A group in, one output per member out: the same outputs as one call per item."""
    got = assert_matches_sequential(lambda: [Add(1, batch_size=8),
                                             GroupEach(4, **PLACES[place])], DATA, n_cpu=2)
    assert len(got[0]) > 200


def test_a_stateful_expansion_sees_its_inputs_in_order(start_method: str) -> None:
    """Its chunks pause midway (12 outputs each, room for 4): the next one waits."""
    assert_matches_sequential(lambda: [Tally(batch_size=8)], range(200), n_cpu=2,
                              start_method=start_method)


def test_shapes_under_every_start_method(start_method: str) -> None:
    assert_matches_sequential(
        lambda: [Expand(3, stateful=False, batch_size=8), GroupSum(4, batch_size=8),
                 Expand(5, batch_size=4), GroupEach(3, stateful=False, batch_size=9),
                 GroupSum(2, run_in_master=True, batch_size=2)],
        DATA, n_cpu=2, start_method=start_method)


def test_on_an_executor() -> None:
    with ThreadPoolExecutor(2) as ex:
        assert_matches_sequential(
            lambda: [Expand(4, stateful=False, batch_size=8), GroupSum(3, stateful=False,
                                                                       batch_size=9),
                     GroupEach(2, stateful=False, batch_size=4)], DATA, executor=ex)


@pytest.mark.parametrize("threads", [None, 2])
def test_unordered(threads: int | None) -> None:
    def ops() -> list[Any]:
        # what comes out of a group must not depend on which items it holds: the
        # order they come in is free
        return [Expand(4, stateful=False, batch_size=8, ordered=False, threads=threads),
                stage(triple_each, stateful=False, group=3, expand=True, batch_size=9,
                      ordered=False, threads=threads)]

    with SequentialPipeline(ops()) as ref:
        expected = Counter(ref.apply(DATA))
    with Pipeline(ops(), n_cpu=2) as p:
        assert Counter(p.apply(DATA)) == expected


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("place", places())
def test_an_expansion_that_raises_gives_what_it_made_first(place: str) -> None:
    got, err = assert_matches_sequential(lambda: [BreaksMidway(20, **PLACES[place])],
                                         range(50), raises=(ValueError,), n_cpu=2)
    assert got[-2:] == [200, 201]  # what input 20 gave before it raised went on
    assert err == (ValueError, ("bad 20", 20))


@pytest.mark.parametrize("policy", ["skip", "collect"])
@pytest.mark.parametrize("place", places())
def test_an_expansion_that_raises_under_a_policy(place: str, policy: str) -> None:
    def run(p: Any, data: Any) -> Any:
        got = list(p.apply(data))
        return got, [(r.position, r.size, r.input) for r in p.errors.records], p.errors.counts

    got, records, counts = assert_matches_sequential(
        lambda: [Add(0, batch_size=4), BreaksMidway(20, on_error=policy, **PLACES[place])],
        range(50), observe=run, n_cpu=2)
    assert 200 in got
    assert 201 in got
    assert 202 not in got
    assert counts == [0, 1]
    assert records == ([(20, 1, "20")] if policy == "collect" else [])


@pytest.mark.parametrize("place", places())
def test_a_stage_after_a_long_expansion_fails_in_place(place: str) -> None:
    """A worker reads a fast expansion in blocks and maps the stages after it
    over each: a failure there still comes after every output before it."""
    got, err = assert_matches_sequential(
        lambda: [Long(3000, **PLACES[place]), FailAt(21_500, stateful=False, batch_size=8)],
        range(5), raises=(ValueError,), n_cpu=2)
    assert err == (ValueError, ("bad 21500", 21_500))
    assert got[-1] == 21_499
    assert len(got) == 2 * (3000 - 31) + 1500 - 16


@pytest.mark.parametrize("place", places())
def test_a_long_expansion_that_raises_over_the_budget(place: str) -> None:
    got, err = assert_matches_sequential(
        lambda: [Long(3000, at=2, on_error="skip", max_errors=0, **PLACES[place]),
                 Add(1, batch_size=8)],
        range(5), raises=(Exception,), n_cpu=2)
    assert err is not None
    assert got[-1] == 22_999 + 1  # all that input 2 made, then the error


@pytest.mark.parametrize("place", places())
@pytest.mark.parametrize("failing", ["master", "dedicated"])
def test_an_error_over_budget_lets_the_partial_groups_after_it_go_first(
        place: str, failing: str) -> None:
    """Input 4 fails over the budget: the partial group of 3 and 5 after it
    holds earlier inputs, so its output comes before the error."""
    got, err = assert_matches_sequential(
        lambda: [FailAt(4, on_error="skip", max_errors=0, **PLACES[failing]),
                 GroupSum(4, **PLACES[place])],
        [0, 1, 2, 3, 5, 4, 6], raises=(ValueError,), n_cpu=2)
    assert got == [GroupSum(4)([0, 1, 2, 3]), GroupSum(4)([5])]
    assert err == (ValueError, ("bad 4", 4))


@pytest.mark.parametrize("place", places())
def test_a_group_that_raises_is_skipped_whole(place: str) -> None:
    def run(p: Any, data: Any) -> Any:
        got = list(p.apply(data))
        return got, [(r.position, r.size) for r in p.errors.records]

    got, records = assert_matches_sequential(
        lambda: [Add(0, batch_size=4), GroupFails(4, 10, on_error="collect", **PLACES[place])],
        range(30), observe=run, n_cpu=2)
    assert got == [sum(range(i, min(i + 4, 30))) for i in range(0, 30, 4) if i != 8]
    assert records == [(8, 4)]  # the group's first input, and its size


@pytest.mark.parametrize("place", ["pool", "dedicated"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_worker_dying_in_an_expansion(place: str, batch_size: int) -> None:
    """It dies during input 7's expansion: WorkerDied names input 7, or with
    several inputs to a chunk, the input whose expansion it last sent."""
    with Pipeline([DiesExpanding(7, **{**PLACES[place], "batch_size": batch_size})],
                  n_cpu=2) as p:
        got, err = drain(p.apply(range(20)))
    assert isinstance(err, WorkerDied)
    assert err.input_repr is not None
    named = int(err.input_repr.split()[0])
    assert named == 7 if batch_size == 1 else 4 <= named <= 7
    before = [x * 10 + j for x in range(7) for j in range(3)] + [70]
    if batch_size == 1:  # each input a chunk of its own: all before 7 came through whole
        assert got[:7 * 3] == before[:7 * 3]
    assert got == before[:len(got)]  # what its chunk had not sent died with it


@pytest.mark.parametrize("place", ["pool", "dedicated"])
def test_a_worker_dying_in_a_group(place: str) -> None:
    with Pipeline([DiesInGroup(4, 9, **PLACES[place])], n_cpu=2) as p:
        got, err = drain(p.apply(range(20)))
    assert isinstance(err, WorkerDied)
    assert err.input_repr is not None
    assert "8" in err.input_repr
    assert got == [6, 22][:len(got)]


def test_an_expansion_on_an_executor_is_capped() -> None:
    import blpipe._core.tasks

    with (ThreadPoolExecutor(2) as ex,
          Pipeline([Forever(stateful=False, batch_size=2)], executor=ex) as p):
        got, err = drain(p.apply([1]))
    assert len(got) == blpipe._core.tasks.EXPANSION_CAP
    assert isinstance(err, BrokenPipeline)
    assert "expanded a chunk into more than 100,000 outputs or 64 MiB on an executor" in str(err)


# -- bounds ------------------------------------------------------------------------

def tree_rss() -> int:
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])


@pytest.mark.parametrize("place", ["pool", "dedicated", "master"])
def test_an_endless_expansion_runs_in_bounded_memory(place: str) -> None:
    """One input expands without end into 8 KiB items: 40,000 of them (320 MB)
    go through while input and memory stay put."""
    source = Endless()
    attrs = {**PLACES[place], "batch_size": 64}
    with Pipeline([Forever(8192, **attrs), stage(len, stateful=False, batch_size=64)],
                  n_cpu=2) as p:
        out = p.apply(source)
        for n, _ in enumerate(out, 1):
            if n == 5_000:
                before = tree_rss()
            if n == 40_000:
                break
        grew = tree_rss() - before
        assert source.pulled <= 64 + 8  # the first input never ends: nothing more is needed
    assert grew < 64 * 2**20, f"the process tree grew by {grew / 2**20:.0f} MB"


def test_expansions_waiting_for_the_consumer_hold_at_most_batch_size_outputs() -> None:
    """Each input expands into 200 items of 64 KiB: while the consumer sleeps,
    the chunks in flight hold at most batch_size (64) outputs, 4 MiB, where
    one chunk per input in flight would hold 64 MiB."""
    @stage(stateful=False, expand=True, batch_size=64)
    def big(x: int) -> Iterator[bytes]:
        for _ in range(200):
            yield bytes(65536)

    with Pipeline([big], n_cpu=2) as p:
        it = p.apply(range(100))
        next(it)
        # While the consumer is away, the workers go as far as the bound lets them; nothing
        # new reaches them meanwhile, so a short quiet spell is proof enough.
        wait_idle(live_children(), quiet=0.1)
        assert sum(1 for _ in it) == 100 * 200 - 1
    assert p.statistics().peak_bytes_in_flight < 8 * 2**20


def test_an_expansion_flows_before_it_ends() -> None:
    """The first outputs of a slow expansion arrive long before its end."""
    @stage(stateful=False, expand=True, batch_size=4)
    def slow(x: int) -> Iterator[int]:
        for j in range(10):
            time.sleep(0.05)
            yield x + j

    started = time.monotonic()
    with Pipeline([slow], n_cpu=2) as p:
        first = next(iter(p.apply([100])))
        took = time.monotonic() - started
    assert first == 100
    assert took < 0.4  # the whole expansion takes 0.5 s


def test_bytes_in_flight_count_expanded_items() -> None:
    with Pipeline([stage(lambda x: [bytes(100_000)] * 20, stateful=False, expand=True,
                         batch_size=4)], n_cpu=2) as p:
        assert sum(map(len, p.apply(range(10)))) == 10 * 20 * 100_000
    assert p.statistics().peak_bytes_in_flight > 100_000


# -- groups by time --------------------------------------------------------------

def live(first: int, then: float) -> Iterator[int]:
    """``first`` items at once, then ``then`` seconds of silence, then one more."""
    yield from range(first)
    time.sleep(then)
    yield first


@pytest.mark.parametrize("place", places())
def test_a_partial_group_goes_on_after_its_wait(place: str) -> None:
    """A live source yields 5 items, then blocks for 2 s: the 5 go through the
    group stage within its group_wait (0.2 s) plus 0.1 s, and some slack."""
    batch = stage(list, group=64, group_wait=0.2, **{**PLACES[place], "batch_size": 64})
    started = time.monotonic()
    with Pipeline([batch], n_cpu=2) as p:
        it = p.apply(live(5, 2.0))
        first = next(it)
        took = time.monotonic() - started
        rest = list(it)
    assert first == [0, 1, 2, 3, 4]
    assert rest == [[5]]
    assert 0.2 <= took < 0.2 + 0.1 + 0.4, took


def test_sequential_groups_by_count_only() -> None:
    batch = stage(list, group=3, group_wait=0.01, stateful=False, batch_size=3)
    with SequentialPipeline([batch]) as p:
        assert list(p.apply(live(5, 0.1))) == [[0, 1, 2], [3, 4, 5]]


# -- statistics --------------------------------------------------------------------

@pytest.mark.parametrize("make", [SequentialPipeline, Pipeline])
def test_statistics_count_shapes(make: Callable[..., Any]) -> None:
    with make([Expand(4, stateful=False, batch_size=8), GroupSum(5, batch_size=10),
               GroupEach(3, run_in_master=True, batch_size=3)], n_cpu=2) as p:
        out = list(p.apply(range(100)))
    st = p.statistics().stages
    expanded = sum(x % 4 for x in range(100))  # the None among them dropped
    assert [(s.items_in, s.items_out) for s in st] == [
        (100, expanded), (expanded, -(-expanded // 5)), (-(-expanded // 5), len(out))]
    assert [s.shape for s in st] == ["1:n", "5:1", "3:n"]
    report = p.report()
    assert "shape" in report
    assert "1:n" in report
    assert "5:1" in report


def test_advice_for_a_group_that_starves_the_pool() -> None:
    def work(g: list[int]) -> int:
        end = time.thread_time() + 0.005
        while time.thread_time() < end:
            pass
        return len(g)

    with Pipeline([stage(work, stateful=False, group=8, batch_size=8)], n_cpu=2) as p:
        list(p.apply(range(400)))
    assert any("group=8 and batch_size=8" in a and "batch_size = 16" in a
               for a in p.statistics().advice()), p.report()


def test_outcome_helper_sees_the_same_on_shapes() -> None:
    assert outcome(SequentialPipeline([Expand(3, stateful=False)]), [4, 5]) == (
        [28, 35, 36], None)
