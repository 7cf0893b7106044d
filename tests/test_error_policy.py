"""``on_error`` and ``max_errors``: every stage kind, checked against SequentialPipeline."""

from __future__ import annotations

import io
import json
import os
import signal
from typing import Any

import pytest

from blpipe import Pipeline, WorkerDied, stage
from tests.helpers import drain
from tests.oracle import assert_matches_sequential, with_errors
from tests.stages import KINDS, DieAt, FailAt, kind_attrs

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", [{"on_error": "skip"}, {"on_error": "collect"},
                                    {"on_error": "collect", "max_errors": 5},
                                    {"on_error": "skip", "max_errors": 0}])
def test_every_kind_and_policy_matches_sequential(kind: str, policy: dict[str, Any]) -> None:
    def make() -> list[Any]:
        return [stage(abs, stateful=False, batch_size=16),
                FailAt(every=7, **kind_attrs(kind, 8), **policy)]

    data = [None if i % 11 == 5 else i for i in range(1, 400)]
    actual = assert_matches_sequential(make, data, observe=with_errors, n_cpu=2)
    got, failure, records, counts = actual
    errors = 6 if "max_errors" in policy and policy["max_errors"] == 5 else \
        1 if policy.get("max_errors") == 0 else len([x for x in data if x and x % 7 == 0])
    assert counts == [0, errors]
    if failure is not None:  # over budget: the last error, as under "raise"
        assert failure[0] is ValueError
    if policy["on_error"] == "collect" and failure is None:
        # nothing lost that is not recorded: every input is an output or a record
        window = KINDS[kind].get("stateful") == 2  # no output for the first input
        reached = len([x for x in data if x is not None]) - (1 if window else 0)
        assert len(got) + len(records) == reached


def test_budget_is_exact() -> None:
    """max_errors=3: three inputs skipped, the fourth error raised, nothing after it."""
    fail = FailAt(every=10, stateful=False, batch_size=64, on_error="skip", max_errors=3)
    with Pipeline([fail], n_cpu=2) as p:
        got, err = drain(p.apply(range(1, 1000)))
    assert got == [x for x in range(1, 40) if x % 10]
    assert isinstance(err, ValueError)
    assert err.args == ("bad 40", 40)
    assert any("max_errors=3" in n for n in err.__notes__)
    assert p.errors.counts == [4]


def test_records_are_bounded_and_write_as_json_lines() -> None:
    fail = FailAt(every=2, stateful=False, batch_size=16, on_error="collect")
    with Pipeline([fail], n_cpu=2, keep_errors=10) as p:
        got = list(p.apply(range(1, 101)))
    assert got == list(range(1, 101, 2))
    log = p.errors
    assert log.counts == [50]
    assert log.collected == 50
    assert log.dropped == 40
    assert [r.position for r in log.records] == list(range(81, 100, 2))  # the latest ten
    r = log.records[-1]
    assert (r.stage, r.input, r.error_type, r.message) == (
        "stage 0 (FailAt())", "100", "ValueError", "('bad 100', 100)")
    assert "raise ValueError" in r.traceback
    assert isinstance(r.exception, ValueError)
    buf = io.StringIO()
    assert log.write_jsonl(buf) == 10
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[-1]["position"] == 99
    assert set(lines[0]) == {"stage", "position", "size", "input", "error_type", "message",
                             "traceback"}
    assert lines[0]["size"] == 1


def test_statistics_and_report_count_errors() -> None:
    fail = FailAt(every=3, stateful=False, batch_size=8, on_error="skip")
    with Pipeline([fail], n_cpu=2) as p:
        list(p.apply(range(1, 31)))
    assert p.statistics().stages[0].errors == 10
    assert "errors gone past (on_error): stage 0 (FailAt()) 10" in p.report()


def test_a_dedicated_death_is_never_skipped(start_method: str) -> None:
    die = DieAt(50, 3, stateful=True, batch_size=4, on_error="skip")
    with Pipeline([die], n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(200)))
    assert isinstance(err, WorkerDied)
    assert got == list(range(len(got)))
    assert p.errors.counts == [0]


def test_a_pool_death_is_skipped_once_isolated(start_method: str) -> None:
    # a pool worker holds no state: the input that kills it twice is gone past
    die = DieAt(50, 3, stateful=False, batch_size=4, on_error="skip")
    with Pipeline([die], n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(200)))
    assert err is None
    assert got == [x for x in range(200) if x != 50]
    assert p.errors.counts == [1]


def interrupt(x: int) -> int:
    if x == 5:
        os.kill(os.getpid(), signal.SIGINT)
    return x


def test_ctrl_c_is_never_skipped() -> None:
    ctrl_c = stage(interrupt, run_in_master=True, on_error="skip")
    with Pipeline([ctrl_c]) as p:
        got, err = drain(p.apply(range(100)))
    assert isinstance(err, KeyboardInterrupt)
    assert got == list(range(len(got)))


@pytest.mark.parametrize("kind", ["window", "master-window", "thread-window"])
def test_window_errors_are_placed_at_their_newest_input(kind: str) -> None:
    """The first chunk of a window stage completes fewer windows than it has inputs."""
    attrs = {"window": {"batch_size": 16}, "master-window": {"run_in_master": True},
             "thread-window": {"batch_size": 16, "threads": 2}}[kind]

    def make() -> list[Any]:
        return [FailAt(every=3, stateful=3, on_error="collect", **attrs)]

    actual = assert_matches_sequential(make, list(range(1, 40)), observe=with_errors, n_cpu=1)
    assert [r[1] for r in actual[2]][:3] == [2, 5, 8]


def test_errors_can_be_read_while_the_pipeline_runs() -> None:
    import threading

    seen: list[int] = []
    failed: list[BaseException] = []
    stop = threading.Event()
    fail = FailAt(every=3, stateful=False, batch_size=8, on_error="collect")
    with Pipeline([fail], n_cpu=2, keep_errors=50) as p:

        def watch() -> None:
            try:
                while not stop.is_set():
                    seen.append(len(p.errors.records) + p.errors.dropped)
            except BaseException as e:  # raised in a thread, it would not fail the test
                failed.append(e)

        t = threading.Thread(target=watch)
        t.start()
        try:
            got = list(p.apply(range(1, 3001)))
        finally:
            stop.set()
            t.join()
    assert not failed, failed  # reading never fails
    assert len(got) == 2000
    assert p.errors.collected == 1000
    assert any(0 < n < 1000 for n in seen)  # some reads were made while the run went on
    assert seen == sorted(seen)  # the count only grows
