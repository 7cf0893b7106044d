"""Checkpoints: a consistent cut of the stream, written atomically, and resumed from.

A cut goes down the stream behind input N, as a failure does, while the
stream goes on::

    hub: pulls input N ──► Segment.mark(cut)    chunks end at the cut; once all before
                                                it are sent: the window history or open
                                                group is copied, a dedicated worker is
                                                sent Snapshot and answers State
               release() of the chunk before it ──► next.mark(cut): the segment's
                                                error counts are copied
         MasterSegment.mark(cut)                its stages and chain pickled, once its
                                                run in hand is done
         Sink: the cut waits behind the outputs before it ──► when the consumer asks
               for the next output: on_checkpoint(N), then the file is written

The file holds N, every stateful stage (dedicated and ``run_in_master``)
pickled after exactly those N inputs, the open windows and groups, the error
counts, what ``on_checkpoint`` returned, and a fingerprint of the stages. It
is written to a temporary file, synced and renamed over the last one, so a
crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import struct
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._core.spec import Placement, StageSpec
from .._core.state import with_state
from .._core.transport import dumps_stage, loads_stage
from ..errors import SerializationError
from .flow import Cut, Downstream, Flow

MAGIC = b"blpipe checkpoint 1\n"
_HEAD = struct.Struct("<Q32s")  # payload length, its sha256


@dataclass(frozen=True)
class Checkpoint:
    """The last checkpoint written (or resumed from): ``p.checkpointed``."""

    inputs: int
    """Inputs of the stream it covers: every output of these was handed out."""
    token: Any
    """What ``on_checkpoint(inputs)`` returned then: where the consumer's own
    output was committed, to go back to on resume."""
    path: str
    """The file."""


# Its annotations resolved here, where their names are: typing.get_type_hints would
# look for them in the module it names, where it is exported (what pickle and reprs name).
Checkpoint.__annotations__ = typing.get_type_hints(Checkpoint)
Checkpoint.__module__ = "blpipe"


class Cuts:
    """When the hub places a checkpoint's cut: every ``every`` seconds, when
    asked (``checkpoint()``), and at the end of the input; one at a time."""

    def __init__(self, every: float, inputs: int) -> None:
        self.every = every
        self.inputs = inputs  # of the stream, read so far (None items too)
        self.due = time.monotonic() + every
        self.asked = False
        self.last: Downstream | None = None  # the input ended during a cut: where the end's goes

    def pulled(self, n: int, ended: bool, flow: Flow, head: Downstream) -> None:
        """``n`` more inputs went into ``head``: cut after them, if one is due."""
        self.inputs += n
        if flow.cut is not None:
            if ended:  # the end's cut is owed: it follows once this one is written
                self.last = head
        elif self.asked or ended or time.monotonic() >= self.due:
            self.asked = False
            flow.cut = Cut(self.inputs)
            head.mark(flow.cut)

    def done(self, flow: Flow) -> None:
        """The cut under way is written: the next is due a period from now, or
        at once if the input ended while it was under way."""
        flow.cut = None
        self.due = time.monotonic() + self.every
        head, self.last = self.last, None
        if head is not None:
            flow.cut = Cut(self.inputs)
            head.mark(flow.cut)


def fingerprint(stages: Sequence[StageSpec]) -> list[tuple[str, ...]]:
    """What must match to resume: each stage's name, placement and attributes."""
    return [(s.label, s.placement.value, *(f"{k}={getattr(s, k)!r}" for k in _ATTRS))
            for s in stages]


_ATTRS = ("window", "batch_size", "threads", "ordered", "on_error", "max_errors", "expand",
          "group", "group_wait", "retry", "timeout", "concurrency")


def check_fingerprint(path: str, saved: list[tuple[str, ...]],
                      stages: Sequence[StageSpec]) -> None:
    """Raise, naming the first difference, unless ``stages`` match ``saved``."""
    now = fingerprint(stages)
    why = None
    if len(saved) != len(now):
        why = f"it has {len(saved)} stages, this pipeline {len(now)}"
    else:
        for old, new in zip(saved, now, strict=True):
            diff = [f"{a} then, {b} now" for a, b in zip(old[1:], new[1:], strict=True)
                    if a != b]
            if old[0] != new[0]:
                diff.insert(0, f"{old[0]} then")
            if diff:
                why = f"{new[0]}: " + "; ".join(diff)
                break
    if why is not None:
        raise ValueError(f"checkpoint {path} was written by a different pipeline ({why}); "
                         f"resume with the same stages, or move the file away to start over")


def refuse(stages: Sequence[StageSpec]) -> None:
    """Raise for a stage that a cut cannot pass, at construction."""
    for s in stages:
        if not s.ordered:
            raise ValueError(f"{s.label}: ordered=False cannot be checkpointed: outputs of "
                             f"later inputs may pass the cut, so no N has all its outputs "
                             f"out and none after; set ordered = True, or drop checkpoint=")
        if s.expand and s.placement is Placement.DEDICATED:
            raise ValueError(f"{s.label}: a dedicated stage with expand = True cannot be "
                             f"checkpointed: its worker may hold an expansion half done at "
                             f"the cut; run it in the caller (run_in_master = True), or drop "
                             f"checkpoint=")


def write(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: the old file stays whole until
    the new one is complete and synced."""
    data = dumps_stage(payload)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + _HEAD.pack(len(data), hashlib.sha256(data).digest()) + data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def read(path: str) -> dict[str, Any] | None:
    """The checkpoint at ``path``; ``None`` when there is none. A damaged file
    is an error that says so: it is never taken for a fresh start."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    start = len(MAGIC) + _HEAD.size
    if not raw.startswith(MAGIC) or len(raw) < start:
        raise ValueError(f"checkpoint {path} is not a blpipe checkpoint, or is cut short "
                         f"({len(raw)} bytes); move it away to start over")
    length, digest = _HEAD.unpack_from(raw, len(MAGIC))
    data = raw[start:]
    if len(data) != length or hashlib.sha256(data).digest() != digest:
        raise ValueError(f"checkpoint {path} is damaged: {len(data)} bytes of data where "
                         f"it wrote {length}, or they do not match its checksum; move it "
                         f"away to start over")
    payload: dict[str, Any] = loads_stage(data)
    return payload


def restore(segments: Sequence[Restorable], payload: dict[str, Any]) -> None:
    """Put a checkpoint's window histories, open groups and master chains back."""
    for index, items in payload["buffers"].items():
        segments[index].restore(items)
    for index, blob in payload["chains"].items():
        segments[index].restore(blob)


class Restorable(Protocol):
    """A segment, as a checkpoint puts back what it held at the cut."""

    def restore(self, saved: Any) -> None: ...


class Keeper:
    """A pipeline's checkpoints: where they go, how often, and the one resumed from."""

    def __init__(self, path: str | os.PathLike[str], every: float | None,
                 on_checkpoint: Callable[[int], Any] | None,
                 stages: Sequence[StageSpec]) -> None:
        """``every`` and ``on_checkpoint`` are the pipeline's options, checked there."""
        refuse(stages)
        self.path = os.fspath(path)
        self.every = math.inf if every is None else float(every)
        self.on_checkpoint = on_checkpoint
        self.resume = read(self.path)
        self.last: Checkpoint | None = None
        if self.resume is not None:
            check_fingerprint(self.path, self.resume["fingerprint"], stages)
            self.last = Checkpoint(self.resume["inputs"], self.resume["token"], self.path)

    def restored(self, stages: Sequence[StageSpec]) -> tuple[StageSpec, ...]:
        """``stages``, each stateful one with the state the checkpoint holds."""
        states = self.resume["states"] if self.resume is not None else {}
        keyed = self.resume.get("keyed", {}) if self.resume is not None else {}
        out = []
        for s in stages:
            if s.index in states:
                s = dataclasses.replace(s, func=with_state(s.func, loads_stage(states[s.index])))
            elif s.index in keyed:  # every replica's keys, for however many replicas now
                copies: dict[Any, Any] = {}
                for blob in keyed[s.index]:
                    copies.update(loads_stage(blob))
                assert self.resume is not None
                s = dataclasses.replace(s, resumed=(copies, self.resume["books"][s.index]))
            out.append(s)
        return tuple(out)

    def complete(self, cut: Cut, stages: Sequence[StageSpec]) -> Checkpoint:
        """The cut has reached the consumer: let it commit, then write the file."""
        if cut.failed is not None:
            raise SerializationError(
                f"checkpoint {self.path} cannot be written: {cut.failed}; a stateful stage "
                f"must pickle (with dill) to be checkpointed")
        token = self.on_checkpoint(cut.inputs) if self.on_checkpoint is not None else None
        write(self.path, {"fingerprint": fingerprint(stages), "inputs": cut.inputs,
                          "token": token, "states": cut.states, "chains": cut.chains,
                          "buffers": cut.buffers, "keyed": cut.keyed, "books": cut.books,
                          "errors": [cut.errors.get(s.index, 0) for s in stages]})
        self.last = Checkpoint(cut.inputs, token, self.path)
        return self.last
