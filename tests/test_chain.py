"""``Chain.run``, the one runner of stages: windows, ``None``, failures, errors gone past."""

from __future__ import annotations

from typing import Any

import pytest

from blpipe._core.chain import Chain, sliding
from blpipe._core.failures import StageFailure
from blpipe._core.run import Step


def fail_on(bad: int) -> Any:
    def f(x: Any) -> Any:
        if x == bad:
            raise ValueError(x)
        return x
    return f


def test_steps_in_order_and_none_drops() -> None:
    chain = Chain([Step("inc", lambda x: x + 1, None, False),
                   Step("odd", lambda x: x if x % 2 else None, None, False),
                   Step("neg", lambda x: -x, None, False)])
    outputs, failure, stats, skipped = chain.run([0, 1, 2, 3, 4])
    # aligned with the inputs: None where an item was dropped
    assert outputs == [-1, None, -3, None, -5]
    assert failure is None
    assert skipped == []
    assert [s[1:3] for s in stats] == [[5, 5], [5, 3], [3, -1]]  # [in, out]; the caller counts last


def test_a_window_keeps_its_values_between_chunks() -> None:
    chain = Chain([Step("w", lambda w: w, 3, False)])
    assert chain.run([1, 2])[0] == [None, None]  # no full window yet
    assert chain.run([3, 4])[0] == [(1, 2, 3), (2, 3, 4)]
    assert chain.run([5])[0] == [(3, 4, 5)]


def test_a_window_after_a_filter_sees_only_what_passed() -> None:
    chain = Chain([Step("keep-even", lambda x: x if x % 2 == 0 else None, None, False),
                   Step("pairs", lambda w: w, 2, False)])
    outputs, failure, _, _ = chain.run([0, 1, 2, 3, 4])
    assert failure is None
    assert outputs == [None, None, (0, 2), None, (2, 4)]


def test_a_failure_stops_the_chunk_at_its_item() -> None:
    chain = Chain([Step("a", lambda x: x * 10, None, False), Step("b", fail_on(30), None, False)])
    outputs, failure, _, _ = chain.run([1, 2, 3, 4])
    assert outputs == [10, 20]  # the outputs before the failing item
    assert isinstance(failure, StageFailure)
    assert (failure.label, failure.item) == ("b", 30)
    assert isinstance(failure.exc, ValueError)


def test_a_later_steps_failure_is_earlier_in_the_stream() -> None:
    # step a fails on its 3rd item; step b only sees the first two, and fails on the 1st
    chain = Chain([Step("a", fail_on(3), None, False), Step("b", fail_on(1), None, False)])
    outputs, failure, _, _ = chain.run([1, 2, 3])
    assert outputs == []
    assert failure is not None
    assert failure.label == "b"


def test_errors_gone_past_are_listed_in_stream_order() -> None:
    chain = Chain([Step("a", fail_on(2), None, True), Step("w", lambda w: w[-1], 2, False),
                   Step("b", fail_on(4), None, True)])
    outputs, failure, _, skipped = chain.run([1, 2, 3, 4, 5])
    assert failure is None
    # a drops 2; the window gives 3 (1,3), 4 (3,4), 5 (4,5); b drops 4
    assert outputs == [None, None, 3, None, 5]
    # (index in the chunk, step, index among the step's inputs, error)
    assert [(at, step, local) for at, step, local, _, _ in skipped] == [(1, 0, 1), (3, 2, 1)]
    assert [e.item for *_, e, _ in skipped] == [2, 4]


def test_single_step_fast_path_matches() -> None:
    chain = Chain([Step("f", fail_on(3), None, False)])
    outputs, failure, stats, _ = chain.run([1, 2, 3, 4])
    assert outputs == [1, 2]
    assert failure is not None
    assert failure.item == 3
    assert stats[0][1:] == [4, -1, 0, 0]  # in, out (the caller counts it), retries, timeouts


@pytest.mark.parametrize(("items", "k", "expected"), [
    ([1, 2, 3], 2, [(1, 2), (2, 3)]), ([1], 2, []), ([1, 2], 1, [(1,), (2,)])])
def test_sliding(items: list[int], k: int, expected: list[tuple[int, ...]]) -> None:
    assert sliding(items, k) == expected


def test_errors_gone_past_are_sorted_across_steps() -> None:
    # step a drops input 4 (index 3); step b then drops input 2 (index 1): earlier
    chain = Chain([Step("a", fail_on(4), None, True), Step("b", fail_on(2), None, True)])
    _, _, _, skipped = chain.run([1, 2, 3, 4])
    assert [(at, step) for at, step, *_ in skipped] == [(1, 1), (3, 0)]


def test_errors_gone_past_after_a_failure_are_dropped() -> None:
    chain = Chain([Step("a", fail_on(3), None, True), Step("b", fail_on(2), None, False)])
    outputs, failure, _, skipped = chain.run([1, 2, 3, 4])
    # b fails on 2: input 3's error (step a, later in the stream) is not reported
    assert failure is not None
    assert failure.item == 2
    assert skipped == []
    assert outputs == [1]
