"""What a worker sends back: a chunk's results, or a link's relayed task.

A chunk's outputs leave with its error, the figures of each stage and the
seconds spent (un)pickling. An output that will not pickle does not fail the
chunk as a whole: the outputs before it leave, and a ``SerializationError``
names it, at its input. A linked worker's outputs go to the next worker with
the error and figures so far (a :class:`~blpipe._core.messages.Carry`); the
last one merges them into its result.

Like :mod:`blpipe._core.worker`, this is the child side: it never imports the hub's modules.
"""

from __future__ import annotations

from typing import Any

from ..errors import SerializationError
from .failures import RemoteError, Skipped, StageFailure
from .messages import Carry, Result
from .shm import Slots, mark_large
from .text import short_repr
from .transport import Frame, dumps, dumps_chunk, first_unpicklable


def carried(outputs: list[Any], skipped: list[Skipped]) -> list[Any]:
    """What a result carries of a chunk's outputs (aligned with its inputs):
    ``None`` dropped here rather than in the hub, unless errors were gone
    past, which the hub may have to cut the outputs at."""
    return outputs if skipped else [y for y in outputs if y is not None]


def packed(skipped: list[Skipped]) -> list[Skipped]:
    return [(at, step, local, RemoteError.pack(err) if isinstance(err, StageFailure) else err,
             size) for at, step, local, err, size in skipped]


def merge(failure: StageFailure | None, stats: list[Any], seconds: float,
           carry: Carry | None) -> tuple[RemoteError | None, list[Any], float]:
    """This process's error and figures, after those of the linked workers before it.

    A stage here only saw inputs from before an earlier worker's failure, so
    a failure here is earlier in the stream and is the one reported.
    """
    error = None if failure is None else RemoteError.pack(failure)
    if carry is not None:
        error = error or carry.error
        stats = [*carry.stats, *stats]
        seconds += carry.seconds
    return error, stats, seconds


def encode(outputs: list[Any], result: Result, items: list[Any], label: str,
            slots: Slots | None) -> Frame:
    """``result`` with ``outputs`` (aligned with ``items``) as a frame, large
    buffers through ``slots``. When an output cannot be pickled: the outputs
    before it, and a ``SerializationError`` in its place."""
    sent = carried(outputs, result.skipped)
    for every in (False, True):  # then also memoryviews, and buffers mid-chunk
        try:
            return dumps_chunk((mark_large(sent, every), *result[1:]), slots)[0]
        except Exception:
            pass
    kept, error = until_unpicklable(outputs, items, label, "leave its worker process")
    return dumps((carried(kept, result.skipped), error or result.error, *result[2:]))


def relay(outputs: list[Any], failure: StageFailure | None, items: list[Any], label: str,
           stats: list[Any], seconds: float, carry: Carry | None) -> Frame:
    """The task for the next linked worker: this chunk's outputs, with the error
    and figures so far. It goes through the pipe, not shared memory: the slot
    could not be handed back to this process."""
    error, stats, seconds = merge(failure, stats, seconds, carry)
    sent = carried(outputs, [])
    stats[-1][2] = len(sent)  # the next stage takes them: this one's outputs are counted
    try:
        return dumps((None, sent, [], (error, stats, seconds), 0))
    except Exception:
        pass
    kept, cut = until_unpicklable(outputs, items, label, "reach the next stage's process")
    sent = carried(kept, [])
    stats[-1][2] = len(sent)
    return dumps((None, sent, [], (cut, stats, seconds), 0))


def until_unpicklable(outputs: list[Any], items: list[Any], label: str,
                       where: str) -> tuple[list[Any], RemoteError]:
    """The outputs before the first that cannot be pickled, and the error for
    it, at its input (``outputs`` are aligned with ``items``)."""
    bad = first_unpicklable(outputs)
    if bad is None:  # each pickles, not all together: blame the chunk's first
        j, exc = 0, SerializationError(f"the outputs of {label} cannot {where}")
    else:
        j, why = bad
        exc = SerializationError(f"{label} returned {short_repr(outputs[j])}, which cannot "
                                 f"{where}: {type(why).__name__}: {why}")
    return outputs[:j], RemoteError.pack(StageFailure(label, items[j], exc))
