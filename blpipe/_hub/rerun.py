"""Running again the calls a dead pool worker held: crash isolation.

A pool worker holds no state, so when one dies in the middle of a chunk,
nothing of the chunk is lost but time: its calls run again, each in a chunk
of its own, so that an input that kills its worker again takes only itself
down::

    [a b c d] --its worker dies--> [a] [b] [c] [d]   each on the pool, in its place
                                         |
                                  dies again: WorkerDied naming c, placed at c:
                                  raised, or under on_error skipped like any error

A call is made at most ``max(2, retries + 1)`` times. The chunk's inputs are
rebuilt from the frame that was sent, kept for this until its results are in;
an expansion that has passed outputs on, or a chunk whose huge inputs were
already freed, cannot run again, and fails as a whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .._core.messages import Credit, Result, call_failed
from .._core.shm import Views
from .._core.text import short_repr
from .._core.transport import HEADER, loads
from ..errors import StageTimeout, WorkerDied
from .flow import Record, Shown

if TYPE_CHECKING:
    from .procs import Procs
    from .segments import Segment


class Pool(Protocol):
    """What of the pool a rerun needs (:class:`blpipe._hub.pool.Pool`)."""

    procs: Procs  # release_slot(), fail()
    workers: list[Any]
    depth: int

    def pick(self, limit: int) -> Any: ...

    def pack(self, segment: int, payload: list[Any], place: Any,
             credit: Credit | None = None) -> tuple[Any, int | None, int]: ...

    def post(self, place: Any, segment: Segment, rec: Record) -> None: ...


def rerun(pool: Pool, segment: Segment, rec: Record, exitcode: int | None,
          late: int | None = None) -> bool:
    """Run ``rec``'s calls again, a chunk each, or fail the one call it held
    once it has run out of tries. ``late``: the worker was killed because its
    call ``late`` of the chunk ran past the stage's timeout; only that call is
    blamed. ``False`` when it cannot run again."""
    procs = pool.procs
    if rec.outs is not None or rec.frame is None:
        return False
    tries = rec.tries + 1
    if late is None and rec.calls == 1 and tries >= segment.runs:
        _died(pool, segment, rec, exitcode)
        return True
    try:
        payload = _payload(rec.frame)
    except Exception:  # its huge inputs are freed already, or it is not a task
        return False
    procs.release_slot(rec)
    units = _units(segment, rec, payload)
    segment.replace(rec, [unit for unit, _ in units])
    calls = [unit for unit, items in units if items is not None]
    recorder = segment.flow.recorder
    if late is not None:
        recorder.timeouts[segment.first] += 1
    for unit, items in units:
        if items is None:  # inputs that complete no window: nothing to call
            segment.complete(unit, Result([], None, [[0.0, 0, 0, 0, 0]], 0.0, []))
            continue
        if late is None:
            unit.tries = tries
        elif unit is calls[late]:
            unit.tries = rec.tries + 1 if rec.calls == 1 else 1
            if unit.tries > segment.retries:
                _expired(pool, segment, unit)
                continue
            recorder.retries[segment.first] += 1
        worker = pool.pick(pool.depth + 1) or pool.workers[0]
        unit.frame, unit.slot, unit.nbytes = pool.pack(segment.index, items, worker,
                                                       segment.credit)
        segment.flow.meter.add(unit.nbytes)
        pool.post(worker, segment, unit)
    return True


def late_call(segment: Segment, rec: Record, late: int, what: str = "its process was "
              "killed, and the stage's state with it, so the pipeline cannot go on") -> Any:
    """The error for call ``late`` of ``rec``, which ran past the timeout."""
    try:
        calls = [u for u, items in _units(segment, rec, _payload(rec.frame)) if items]
        where = repr(calls[late].first)
    except Exception:  # the chunk cannot be rebuilt: name it as a whole
        where = rec.where()
    assert segment.timeout is not None  # only a timed stage's call runs late
    return StageTimeout(segment.label, where, segment.timeout, what)


def _expired(pool: Pool, segment: Segment, rec: Record) -> None:
    """A call of one input ran past the timeout, with no retry left."""
    what = "its worker was killed and replaced" + (f", on each of its {rec.tries} tries"
                                                    if rec.tries > 1 else "")
    assert segment.timeout is not None  # only a timed stage's call runs late
    _failed(pool, segment, rec, StageTimeout(segment.label, repr(rec.first),
                                             segment.timeout, what))


def _payload(frame: Any) -> list[Any]:
    """The items a task frame carries, rebuilt here from it."""
    header, data = frame
    views = Views()
    try:
        task = loads(HEADER.unpack(header)[0], data, views)
    finally:
        views.close()
    return list(task[1])


def _units(segment: Segment, rec: Record,
           payload: list[Any]) -> list[tuple[Record, list[Any] | None]]:
    """``rec`` as records of one call each, with what each is sent."""
    out: list[tuple[Record, list[Any] | None]] = []
    k, g = segment.window, segment.group
    if k:
        start = rec.start
        if rec.offset:  # the first inputs of the stream: they complete no window
            out.append((_unit(rec.offset, payload[0], start), None))
            start += rec.offset
        for j in range(len(payload) - k + 1):
            window = payload[j:j + k]
            out.append((_unit(1, tuple(window), start + j), window))
        return out
    for j in range(0, len(payload), g or 1):
        items = payload[j:j + (g or 1)]
        out.append((_unit(len(items), items if g else items[0], rec.start + j), items))
    return out


def _unit(n_in: int, call: Any, start: int) -> Record:
    """A record of one call, on ``call`` (an input, a window or a group)."""
    rec = Record(n_in, Shown(short_repr(call)))
    rec.start = start
    rec.calls = 1
    return rec


def _died(pool: Pool, segment: Segment, rec: Record, exitcode: int | None) -> None:
    """The call killed its worker again: it fails, placed at its input, and
    under ``on_error`` it is gone past like any error."""
    _failed(pool, segment, rec, WorkerDied(segment.label, exitcode, repr(rec.first),
                                           rec.tries + 1))


def _failed(pool: Pool, segment: Segment, rec: Record, exc: Exception) -> None:
    """``rec``, a chunk of one call, failed with ``exc``: raised in its place, or
    under ``on_error`` gone past like any error of the stage."""
    if not segment.catch:
        pool.procs.fail(segment, rec, exc)
        return
    pool.procs.release_slot(rec)
    size = rec.n_in if segment.group else 1
    segment.complete(rec, call_failed(segment.label, rec.first, exc, size))
