"""Crash isolation: a pool worker dies holding a chunk, and its calls run again alone.

Each row of the table is a stage, a policy, and what the consumer must see: the exact
outputs, and for each input that kills its worker every time, one error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, WorkerDied
from tests.helpers import drain
from tests.stages import Add, Poison

pytestmark = pytest.mark.timeout(120)

BAD = frozenset({17, 500, 501, 1200, 1999})


def test_five_poison_inputs_in_two_thousand_cost_five_records(start_method: str) -> None:
    poison = Poison(BAD, batch_size=64, on_error="collect")
    with Pipeline([poison], n_cpu=2, start_method=start_method) as p:
        out = list(p.apply(range(2000)))
        stats = p.statistics()
    assert out == [2 * x for x in range(2000) if x not in BAD]
    records = p.errors.records
    assert [(r.input, r.position, r.error_type) for r in records] == \
        [(repr(x), x, "WorkerDied") for x in sorted(BAD)]
    assert all(isinstance(r.exception, WorkerDied) and r.exception.exitcode == -11
               for r in records)
    assert stats.stages[0].errors == 5
    assert stats.restarts >= 5  # a new worker for each death


# kind: the stage's attributes, and the most times a call runs. An input that kills
# its worker runs that many times, or one less if its chunk died before reaching it.
CRASHES: dict[str, tuple[dict[str, Any], int]] = {
    "pool": ({"batch_size": 16}, 2),
    "pool, chunks of one": ({"batch_size": 1}, 2),
    "pool, retries=2": ({"batch_size": 16, "retries": 2}, 3),
    "window": ({"stateful": 3, "batch_size": 16}, 2),
    "unordered": ({"batch_size": 16, "ordered": False}, 2),
}


@pytest.mark.parametrize("kind", CRASHES)
def test_crash_table_collect(kind: str, tmp_path: Path) -> None:
    attrs, runs = CRASHES[kind]
    bad = {5, 6, 40}
    poison = Poison(bad, tally=str(tmp_path), on_error="collect", **attrs)
    with Pipeline([poison], n_cpu=2) as p:
        out = list(p.apply(range(60)))
    first = 2 if "stateful" in attrs else 0  # a window's first inputs complete none
    if "stateful" in attrs:
        want = [(x - 2, x - 1, x) for x in range(first, 60) if x not in bad]
    else:
        want = [2 * x for x in range(60) if x not in bad]
    assert (out if attrs.get("ordered", True) else sorted(out)) == want
    assert sorted((r.input, r.position) for r in p.errors.records) == sorted(
        (repr((x - 2, x - 1, x)) if "stateful" in attrs else repr(x), x) for x in bad)
    assert {poison.runs(x) for x in bad} <= {runs - 1, runs}
    assert poison.runs(40) == runs  # alone in its chunk, which ran it
    assert max(poison.runs(x) for x in range(first, 60)) <= runs  # no input runs more


def test_a_group_that_kills_its_worker_is_one_record(tmp_path: Path) -> None:
    poison = Poison({8}, tally=str(tmp_path), group=4, batch_size=16, on_error="collect")
    with Pipeline([poison], n_cpu=2) as p:
        out = list(p.apply(range(40)))
    assert out == [list(range(i, i + 4)) for i in range(0, 40, 4) if i != 8]
    [record] = p.errors.records
    assert (record.input, record.position, record.size) == ("[8, 9, 10, 11]", 8, 4)
    assert poison.runs(8) == 2


@pytest.mark.parametrize("fused", [False, True])
def test_under_raise_the_error_names_the_exact_input(start_method: str, fused: bool) -> None:
    stages: list[Any] = [Poison({37, 50}, batch_size=16)]
    if fused:  # the crash is in the second of two fused stages
        stages = [Add(0, batch_size=16), *stages]
    with Pipeline(stages, n_cpu=2, start_method=start_method) as p:
        got, err = drain(p.apply(range(100)))
    assert got == [2 * x for x in range(37)]  # every output before it, then the error
    assert isinstance(err, WorkerDied)
    assert (err.input_repr, err.exitcode, err.runs) == ("37", -11, 2)
    assert "while handling input 37, on each of the 2 times it ran" in str(err)


def test_a_crash_that_does_not_come_back_costs_nothing(start_method: str,
                                                      tmp_path: Path) -> None:
    # far enough apart that no chunk of 8 holds two: each ran, and killed its chunk
    once = Poison({3, 30, 45}, tally=str(tmp_path), once=True, batch_size=16)
    with Pipeline([once], n_cpu=2, start_method=start_method) as p:
        assert list(p.apply(range(60))) == [2 * x for x in range(60)]
        assert p.statistics().restarts >= 2


def test_max_errors_counts_the_deaths() -> None:
    poison = Poison(BAD, batch_size=32, on_error="skip", max_errors=2)
    with Pipeline([poison], n_cpu=2) as p:
        got, err = drain(p.apply(range(2000)))
    assert isinstance(err, WorkerDied)
    assert err.input_repr == "501"  # the third
    assert got == [2 * x for x in range(501) if x not in BAD]


def test_a_pool_of_one_recovers(tmp_path: Path) -> None:
    poison = Poison({0, 1, 2}, tally=str(tmp_path), batch_size=8, on_error="collect")
    with Pipeline([poison], n_cpu=1) as p:
        assert list(p.apply(range(20))) == [2 * x for x in range(3, 20)]
    assert len(p.errors.records) == 3
    assert os.path.exists(tmp_path / "19")
