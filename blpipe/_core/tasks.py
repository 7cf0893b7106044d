"""An executor's task, and a thread stage's: a chunk run where a task returns a result.

An executor runs :func:`run_chunk` in its own processes, with the stages
loaded once per process and pipeline; a thread stage runs :func:`run_local`
in the caller's process. Both return the ``Result`` a worker process sends,
all at once, so an expansion there is capped (``EXPANSION_CAP`` outputs,
``EXPANSION_BYTES``), except in a thread stage, whose expansion streams:
:func:`stream_local` hands the hub its outputs in parts through a
:class:`Tap` and waits while the hub holds all its credit allows::

    thread:  chain.stream(items) --parts--> Tap.send --> the hub's waker pipe
                    ^                                         |
                    +---------- Tap.wait() <-- credit --------+  (Segment.release)

Like :mod:`blpipe._core.worker`, this is the child side: it never imports the hub's modules.
"""

from __future__ import annotations

import os
import time
import traceback
from sys import getsizeof
from typing import Any, Protocol

from ..errors import BrokenPipeline
from .chain import Chain, formed
from .failures import RemoteError, StageFailure
from .hooks import HookFailure, Lifecycle, hook
from .messages import Broken, HookFailed, LoadFailed, Part, Result
from .results import carried, packed
from .run import Outcome
from .text import short_repr
from .worker import PART_DELAY, Segments, load_segments, part_size

_LOADED: dict[bytes, Segments] = {}


def run_chunk(key: bytes, blob: bytes, seg: int,
              payload: list[Any]) -> Result | Broken | LoadFailed | HookFailed:
    """An executor's task: run segment ``seg`` over one chunk.

    The executor does the pickling. The stages are unpickled, and set up,
    once per process and pipeline (``key``), not per chunk; the executor owns
    its processes' lifetimes, so they are never torn down.
    """
    start = time.perf_counter()
    segments = _LOADED.get(key)
    if segments is None:
        if len(_LOADED) >= 8:  # pipelines come and go; an executor's workers stay
            _LOADED.clear()
        try:
            segments = load_segments(blob)
        except Exception:
            return LoadFailed(traceback.format_exc())
        where = f"process {os.getpid()} of the executor"
        try:
            Lifecycle((hook(step.label, step.func) for s in segments.values()
                       for step in s.chain.steps), process=where).set_up()
        except HookFailure as e:
            return e.message(where)
        _LOADED[key] = segments
    try:
        segment = segments[seg]
        chain = segment.chain
        items = segment.items(payload)
        loaded = time.perf_counter()
        outputs, failure, stats, skipped = _capped(chain, items, "an executor")
        return Result(carried(outputs, skipped),
                      None if failure is None else RemoteError.pack(failure), stats,
                      loaded - start, packed(skipped))
    except Exception:  # a stage's are caught in Chain.run: this is blpipe's own
        return Broken(traceback.format_exc())


EXPANSION_CAP = 100_000  # outputs of one chunk an executor's or a thread's task may hold
EXPANSION_BYTES = 64 << 20  # and bytes of them, by their size in memory
STREAM_ELSEWHERE = ("run it in blpipe's own pool, in a thread stage or in a process of its "
                    "own, where an expansion streams in bounded memory")


def too_many(label: str, where: str, advice: str = STREAM_ELSEWHERE) -> BrokenPipeline:
    """Why a chunk's expansion was stopped at ``EXPANSION_CAP`` outputs."""
    return BrokenPipeline(f"{label} expanded a chunk into more than {EXPANSION_CAP:,} outputs "
                          f"or {EXPANSION_BYTES >> 20} MiB on {where}, whose tasks return "
                          f"their outputs at once: blpipe stops it rather than hold more; "
                          f"{advice}")


def _capped(chain: Chain, items: list[Any], where: str,
            advice: str = STREAM_ELSEWHERE) -> Outcome:
    """``chain.run(items)``, but an expansion that passes ``EXPANSION_CAP``
    outputs or ``EXPANSION_BYTES`` fails: a task returns its outputs all at
    once, so they must fit."""
    if not chain.expands:
        return chain.run(items)
    run = chain.stream(items)
    outputs: list[Any] = []
    nbytes = 0
    for piece in run.pieces:
        outputs += piece
        nbytes += sum(map(getsizeof, piece))
        if len(outputs) > EXPANSION_CAP or nbytes > EXPANSION_BYTES:
            run.close()
            label = next(s.label for s in chain.steps if s.expand)
            run.failure = StageFailure(label, run.item, too_many(label, where, advice))
            outputs = outputs[:EXPANSION_CAP]
            break
    return outputs, run.failure, run.stats, run.skipped


def run_local(chain: Chain, window: int | None, group: int | None,
              payload: list[Any]) -> Result | Broken:
    """A thread stage's task: like :func:`run_chunk`, with nothing to unpickle."""
    try:
        return local_result(chain, formed(payload, window, group), "a thread stage")
    except Exception:
        return Broken(traceback.format_exc())


class Tap(Protocol):
    """How a thread stage's expansion reaches the hub: parts, and the credit to go on."""

    def send(self, part: Part) -> None:
        """Hand a part to the hub, which passes its outputs on."""

    def wait(self) -> tuple[int, int] | None:
        """Block until the hub has room again: the new credit, or ``None`` when
        the pipeline closes meanwhile."""


def stream_local(chain: Chain, window: int | None, group: int | None, payload: list[Any],
                 credit: tuple[int, int], tap: Tap) -> Result | Broken:
    """A thread stage's task when it expands: its outputs in parts through
    ``tap``, as a worker process sends them (:func:`_stream`), pausing the
    thread when the hub holds all its credit allows; the rest in the result."""
    try:
        run = chain.stream(formed(payload, window, group))
        clock = time.perf_counter
        outputs, nbytes = credit
        buf: list[Any] = []
        first = clock()
        for piece in run.pieces:
            if not buf:
                first = clock()
            buf += piece
            while buf:
                k = part_size(buf, outputs, nbytes)
                full = k < len(buf) or k == outputs
                if not full and clock() - first < PART_DELAY:
                    break
                part, buf = buf[:k], buf[k:]
                outputs -= k
                nbytes -= k * getsizeof(part[-1])
                full = full or outputs <= 0 or nbytes <= 0
                tap.send(Part(part, run.skipped[run.told:], id(tap) if full else None,
                              short_repr(run.item)))
                run.told = len(run.skipped)
                first = clock()
                if full:
                    more = tap.wait()
                    if more is None:  # the pipeline is closing
                        run.close()
                        return Result([], None, run.stats, 0.0, [])
                    outputs, nbytes = more
        return Result(buf, run.failure, run.stats, 0.0, run.skipped[run.told:])
    except Exception:
        return Broken(traceback.format_exc())


def local_result(chain: Chain, items: list[Any], where: str,
                 advice: str = STREAM_ELSEWHERE) -> Result:
    """``chain`` over ``items`` in the calling process, as a task's ``Result``:
    its outputs all at once, and so capped."""
    outputs, failure, stats, skipped = _capped(chain, items, where, advice)
    return Result(carried(outputs, skipped), failure, stats, 0.0, skipped)
