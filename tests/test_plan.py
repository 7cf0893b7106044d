"""The plan: which stages run together, and what workers load. Pure: no process starts."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from blpipe import SerializationError, stage
from blpipe._core.spec import Placement, read_stages
from blpipe._hub.plan import plan


def pool(bs: int = 8, **attrs: Any) -> Any:
    return stage(abs, **{"stateful": False, "batch_size": bs, **attrs})


def dedicated(bs: int = 8, **attrs: Any) -> Any:
    return stage(abs, **{"stateful": True, "batch_size": bs, **attrs})


def shape(ops: list[Any]) -> list[tuple[str, list[int]]]:
    return [(s.kind.value, [x.index for x in s.stages]) for s in plan(read_stages(ops)).segments]


@pytest.mark.parametrize(("ops", "expected"), [
    # pool stages fuse while batch_size and ordered agree
    ([pool(), pool(), pool()], [("pool", [0, 1, 2])]),
    ([pool(8), pool(16)], [("pool", [0]), ("pool", [1])]),
    ([pool(), pool(ordered=False)], [("pool", [0]), ("pool", [1])]),
    # a window only on a run's first stage
    ([pool(stateful=3), pool()], [("pool", [0, 1])]),
    ([pool(), pool(stateful=3)], [("pool", [0]), ("pool", [1])]),
    # a stage that goes on past errors runs alone
    ([pool(), pool(on_error="skip"), pool()], [("pool", [0]), ("pool", [1]), ("pool", [2])]),
    # stateful stages link while batch_size agrees
    ([dedicated(), dedicated(), dedicated(4)], [("dedicated", [0, 1]), ("dedicated", [2])]),
    ([dedicated(), dedicated(on_error="collect")], [("dedicated", [0]), ("dedicated", [1])]),
    # master stages run together, whatever their attributes
    ([stage(abs, run_in_master=True), stage(abs, run_in_master=True, stateful=2)],
     [("master", [0, 1])]),
    # a thread stage is always alone
    ([pool(threads=2), pool(threads=2)], [("thread", [0]), ("thread", [1])]),
    # placements never mix
    ([pool(), dedicated(), pool()], [("pool", [0]), ("dedicated", [1]), ("pool", [2])]),
    ([], []),
])
def test_segments(ops: list[Any], expected: list[tuple[str, list[int]]]) -> None:
    assert shape(ops) == expected


def test_what_workers_load() -> None:
    p = plan(read_stages([pool(), pool(stateful=2), dedicated(), dedicated(), pool()]))
    kinds = [s.kind for s in p.segments]
    assert kinds == [Placement.POOL, Placement.POOL, Placement.DEDICATED, Placement.POOL]
    # one blob for the pool: every pool segment's stages, keyed by segment id
    steps = pickle.loads(p.pool_blob)  # type: ignore[arg-type]
    assert sorted(steps) == [0, 1, 3]
    assert steps[1][1] == 2  # the window
    assert [label for label, *_ in steps[0][0]] == ["stage 0 (abs)"]
    # one blob per linked dedicated stage, each keyed by the segment's id
    blobs = p.segments[2].blobs
    assert blobs is not None
    assert len(blobs) == 2
    assert [sorted(pickle.loads(b)) for b in blobs] == [[2], [2]]
    assert p.pool_label == "the pool (stage 0 (abs), stage 1 (abs), stage 4 (abs))"
    assert p.segments[2].label == "stage 2 (abs) + stage 3 (abs)"


def test_no_pool_no_blob() -> None:
    p = plan(read_stages([dedicated(), stage(abs, run_in_master=True)]))
    assert p.pool_blob is None


def test_an_unpicklable_stage_fails_at_planning() -> None:
    gen = (i for i in range(3))

    class Holds:
        stateful = False

        def __init__(self) -> None:
            self.source = gen

        def __call__(self, x: Any) -> Any:
            return x

    with pytest.raises(SerializationError, match=r"stage 1 \(.*Holds.*\) cannot be sent"):
        plan(read_stages([pool(), Holds()]))
    plan(read_stages([pool(), stage(Holds(), run_in_master=True)]))  # stays in the caller
