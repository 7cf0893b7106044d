"""The plan: stages cut into segments, and what their workers load.

A segment is a run of stages that runs as one, so an item crosses a
process boundary once per segment, not once per stage:

* pool stages in a row with one ``batch_size`` and ``ordered``, a window
  or a group only on the first, none going on past errors: fused, one task
  each chunk;
* stateful stages in a row with one ``batch_size``, none going on past
  errors, a group only on the first, none expanding: linked, each worker
  feeding the next;
* master stages in a row: run together in the caller;
* a thread stage, and any stage with ``on_error``: alone, so its errors are
  placed in its own stream; a stage with a ``timeout``: alone, so each call
  of a chunk is a call of that stage, which a timed-out call is named by.

The stages are pickled here, at construction, so a stage that cannot be sent
to a worker is reported before any process starts, whatever the start method.

>>> from blpipe import stage
>>> from blpipe._core.spec import read_stages
>>> inc = stage(lambda x: x + 1, stateful=False, batch_size=8)
>>> [(s.kind.value, [st.index for st in s.stages]) for s in
...  plan(read_stages([inc, inc, stage(sum, stateful=True), inc])).segments]
[('pool', [0, 1]), ('dedicated', [2]), ('pool', [3])]
"""

from __future__ import annotations

import pickle
from typing import NamedTuple

from .._core.chain import callable_of
from .._core.spec import Placement, StageSpec
from .._core.transport import PROTOCOL, dumps_stage
from ..errors import SerializationError


class SegmentPlan(NamedTuple):
    kind: Placement
    stages: list[StageSpec]
    # what each of its workers loads: a dedicated segment's, one per stage; a
    # replicated pool stage's, one for its replicas; else None (the shared pool's)
    blobs: list[bytes] | None

    @property
    def label(self) -> str:
        return " + ".join(s.label for s in self.stages)


class Plan(NamedTuple):
    segments: list[SegmentPlan]  # a segment's id is its index here
    pool_blob: bytes | None  # what each pool worker loads: every pool segment's stages
    pool_label: str  # how messages name the pool


def plan(stages: tuple[StageSpec, ...] | list[StageSpec], pool: str = "the pool") -> Plan:
    """Cut ``stages`` into segments; ``pool`` names where pool stages run."""
    groups: list[list[StageSpec]] = []
    for s in stages:
        prev = groups[-1][0] if groups else None
        if prev is not None and s.placement is prev.placement and _joins(groups[-1], s):
            groups[-1].append(s)
        else:
            groups.append([s])
    segments: list[SegmentPlan] = []
    pool_steps: dict[int, tuple[list[Pickled], int | None, int | None]] = {}
    for index, specs in enumerate(groups):
        kind = specs[0].placement
        blobs = None
        if kind is Placement.POOL and specs[0].replicas:  # its own workers load only it
            blobs = [pickle.dumps({index: ([_pickled(s) for s in specs], specs[0].window,
                                           specs[0].group)}, PROTOCOL)]
        elif kind is Placement.POOL:
            pool_steps[index] = ([_pickled(s) for s in specs], specs[0].window, specs[0].group)
        elif kind is Placement.DEDICATED:  # one process per stage
            blobs = [pickle.dumps({index: ([_pickled(s)], None, s.group)}, PROTOCOL)
                     for s in specs]
        segments.append(SegmentPlan(kind, specs, blobs))
    pool_blob = pickle.dumps(pool_steps, PROTOCOL) if pool_steps else None
    pool_label = f"{pool} (" + ", ".join(
        s.label for seg in segments if seg.kind is Placement.POOL and not seg.blobs
        for s in seg.stages) + ")"
    return Plan(segments, pool_blob, pool_label)


def _joins(run: list[StageSpec], s: StageSpec) -> bool:
    """Whether ``s`` runs in the segment of ``run`` (same placement)."""
    if s.placement is Placement.MASTER:
        return True
    first, last = run[0], run[-1]
    same = (s.batch_size == first.batch_size and s.on_error == first.on_error == "raise"
            and s.group is None  # the hub cuts the groups: only a segment's first groups
            and s.timeout is None and first.timeout is None
            and s.replicas is None and first.replicas is None  # processes of its own
            and s.key is None and first.key is None)
    if s.placement is Placement.POOL:
        return same and s.window is None and s.ordered == first.ordered
    # A linked worker relays whole chunks: an expansion streams only to the hub; a
    # flush() is answered by its worker alone.
    return same and s.placement is Placement.DEDICATED and not (
        s.expand or last.expand or s.flush or last.flush)


# What a worker loads of a stage: its label, the pickled callable, whether it
# goes on past errors, whether it expands, and its index.
Pickled = tuple[str, bytes, bool, bool, int]


def _pickled(s: StageSpec) -> Pickled:
    try:
        return s.label, dumps_stage(callable_of(s)), s.on_error != "raise", s.expand, s.index
    except Exception as e:
        raise SerializationError(
            f"{s.label} cannot be sent to its worker process: {type(e).__name__}: {e}. "
            f"Stages that run outside the calling process must pickle (with dill): keep "
            f"generators, open files and sockets out of the object (make them in its "
            f"setup() method, which runs in the worker), or set run_in_master = True") from e
