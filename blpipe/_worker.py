"""The loop each worker process runs, pool and dedicated alike.

A worker reads ``(segment, items, freed)`` chunks from its task pipe, runs
the segment's chain over them and writes ``("ok", outputs, error, stats,
seconds, skipped)`` back, in order: ``skipped`` lists the errors a stage
went on past (``on_error``), ``stats`` holds each stage's busy seconds and item
counts, ``seconds`` the time spent unpickling this chunk and pickling the
previous result, and ``freed`` names the shared memory slots of earlier
results that the parent has read. The figures ride on the results: no
message is sent for them alone. End of file on
the task pipe means stop. A stateful stage keeps its state simply because its
process lives as long as the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from typing import Any

from ._chain import Chain, Skipped, StageFailure, sliding
from ._shm import AVAILABLE, BIG, Slots, Views, mark_large, tune_malloc
from ._transport import (
    HEADER,
    Frame,
    dumps,
    dumps_chunk,
    loads,
    loads_stage,
    read_frame,
    write_frame,
)
from .errors import SerializationError, formatted
from .stages import short_repr

# label, input repr, pickled exception (or None), formatted traceback, why it could not be pickled
RemoteError = tuple[str, str, "Frame | None", str, "str | None"]


def remote_error(label: str, item: Any, exc: BaseException) -> RemoteError:
    """Package an exception for the parent, checking that it survives the trip.

    An exception can pickle yet fail to unpickle (an ``__init__`` that takes
    other arguments than ``args``, cpython #103061), so the round trip is tried
    here, where the failure can still be reported with the stage and input.
    """
    tb = formatted(exc)
    frame: Frame | None
    try:
        frame = dumps(exc)
        loads(HEADER.unpack(frame[0])[0], frame[1])
        reason = None
    except Exception as why:
        frame, reason = None, f"{type(why).__name__}: {why}"
    return label, short_repr(item), frame, tb, reason


def skipped_errors(chain: Chain, skipped: list[Skipped]) -> list[Any]:
    """What a worker sends of the errors its stages went on past."""
    return [(at, step, local, remote_error(chain.label(step), item, exc))
            for at, step, local, item, exc in skipped]


Carry = tuple["RemoteError | None", list[Any], float]


def _merge(failure: StageFailure | None, stats: list[Any], seconds: float,
           carry: Carry | None) -> tuple[RemoteError | None, list[Any], float]:
    """This process's error and figures, after those of the linked workers before it.

    A stage here only saw inputs from before an earlier worker's failure, so
    a failure here is earlier in the stream and is the one reported.
    """
    error = None if failure is None else remote_error(failure.label, failure.item, failure.exc)
    if carry is not None:
        error = error or carry[0]
        stats = [*carry[1], *stats]
        seconds += carry[2]
    return error, stats, seconds


def _relay(outputs: list[Any], failure: StageFailure | None, items: list[Any], label: str,
           stats: list[Any], seconds: float, carry: Carry | None) -> Frame:
    """The task for the next linked worker: this chunk's outputs, with the error
    and figures so far. It goes through the pipe, not shared memory: the slot
    could not be handed back to this process."""
    error, stats, seconds = _merge(failure, stats, seconds, carry)
    outs = [y for y in outputs if y is not None]
    stats[-1][2] = len(outs)  # the next stage takes them: this one's outputs are counted
    try:
        return dumps((None, outs, [], (error, stats, seconds)))
    except Exception:
        pass
    kept = 0
    for i, out in enumerate(outputs):
        if out is None:
            continue
        try:
            dumps(out)
        except Exception as why:
            exc = SerializationError(f"{label} returned {short_repr(out)}, which cannot reach "
                                     f"the next stage's process: {type(why).__name__}: {why}")
            return dumps((None, outs[:kept], [], (remote_error(label, items[i], exc), stats,
                                                  seconds)))
        kept += 1
    exc = SerializationError(f"the outputs of {label} cannot reach the next stage's process")
    return dumps((None, [], [], (remote_error(label, items[0], exc), stats, seconds)))


def _encode(outputs: list[Any], failure: StageFailure | None, items: list[Any],
            last_label: str, stats: Any, slots: Slots | None,
            carry: Carry | None = None) -> Frame:
    error, merged, seconds = _merge(failure, stats[0], stats[1], carry)
    stats = (merged, seconds, *stats[2:])
    for every in (False, True):  # then also memoryviews, and buffers mid-chunk
        try:
            return dumps_chunk(("ok", mark_large(outputs, every), error, *stats), slots)[0]
        except Exception:
            pass
    # Some output cannot be pickled: send the ones before it, then say which.
    for j, out in enumerate(outputs):
        try:
            dumps(out)
        except Exception as why:
            exc = SerializationError(f"{last_label} returned {short_repr(out)}, which cannot "
                                     f"leave its worker process: {type(why).__name__}: {why}")
            return dumps(("ok", outputs[:j], remote_error(last_label, items[j], exc), *stats))
    exc = SerializationError(f"the outputs of {last_label} cannot leave its worker process")
    return dumps(("ok", outputs, remote_error(last_label, items[len(outputs) - 1], exc),
                  *stats))


_LOADED: dict[bytes, dict[int, tuple[Chain, int | None, str]]] = {}


def load_segments(blob: bytes) -> dict[int, tuple[Chain, int | None, str]]:
    """``{segment: (chain, window, last stage's label)}`` from a pipeline's blob."""
    return {seg: (Chain([(label, loads_stage(data), None, catch)
                         for label, data, catch in steps]), window, steps[-1][0])
            for seg, (steps, window) in loads(0, blob).items()}


def run_chunk(key: bytes, blob: bytes, seg: int, payload: list[Any]) -> tuple[Any, ...]:
    """An executor's task: run segment ``seg`` over one chunk.

    It returns ``(outputs, error, stats, seconds, skipped)`` like a worker's result;
    the executor does the pickling. The stages are unpickled once per
    process and pipeline (``key``), not per chunk.
    """
    start = time.perf_counter()
    segments = _LOADED.get(key)
    if segments is None:
        if len(_LOADED) >= 8:  # pipelines come and go; an executor's workers stay
            _LOADED.clear()
        segments = _LOADED[key] = load_segments(blob)
    try:
        chain, window, _ = segments[seg]
        items = sliding(payload, window) if window else payload
        loaded = time.perf_counter()
        outputs, failure, stats, skipped = chain.run(items)
        error = None if failure is None else remote_error(failure.label, failure.item,
                                                          failure.exc)
        return outputs, error, stats, loaded - start, skipped_errors(chain, skipped)
    except Exception:  # not the stage's: Chain.run catches those
        return "broken", traceback.format_exc()


def worker_main(task_conn: Any, result_conn: Any, blob: bytes, close_fds: tuple[int, ...],
                relay_conn: Any = None, linked: bool = False) -> None:
    """Run chunks until the task pipe closes.

    ``blob`` maps segment ids to ``([(label, pickled stage), ...], window)``;
    ``close_fds`` are the parent's ends of other workers' pipes, inherited
    under fork: holding them would keep those pipes open after the parent dies.

    In a run of linked stateful stages, each worker but the last writes its
    outputs to ``relay_conn``, the next worker's task pipe, with the error
    and figures so far; the last one sends the results to the parent. A
    ``linked`` worker sends nothing through shared memory, since the parent
    could not hand its slots back.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited under fork
    tune_malloc()
    if close_fds:
        # dup2 over them rather than close, so a stale object closing its
        # inherited fd later cannot close a descriptor the stage opened.
        null = os.open(os.devnull, os.O_RDONLY)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)
    task_fd, result_fd = task_conn.fileno(), result_conn.fileno()
    relay_fd = None if relay_conn is None else relay_conn.fileno()
    try:
        segments = load_segments(blob)
    except BaseException:
        write_frame(result_fd, dumps(("init", traceback.format_exc())))
        return
    try:
        _serve(task_fd, result_fd, relay_fd, segments, linked)
    except Exception:
        # Stages' exceptions are caught in Chain.run, so this is blpipe's own
        # failure: say so, rather than exit as if the stage had killed us.
        with contextlib.suppress(OSError):
            write_frame(result_fd, dumps(("broken", traceback.format_exc())))


def _serve(task_fd: int, result_fd: int, relay_fd: int | None,
           segments: dict[int, tuple[Chain, int | None, str]], linked: bool) -> None:
    slots = Slots() if AVAILABLE and not linked else None
    views = Views()
    only = next(iter(segments.values()))  # a linked worker's: relayed tasks name none
    pid = os.getpid()
    clock = time.perf_counter
    pickling = 0.0  # of the previous result
    while (frame := read_frame(task_fd)) is not None:
        start = clock()
        views.last = None
        msg = loads(*frame, views)
        del frame
        seg, payload, freed = msg[0], msg[1], msg[2]
        carry = msg[3] if len(msg) > 3 else None
        del msg
        if views.last is not None and views.nbytes > BIG:
            # its slot can go now: the parent frees it
            write_frame(result_fd, dumps(("loaded", views.last[1])))
        for owner, ident in freed:
            if owner == pid and slots is not None:  # a resent chunk may carry another's
                slots.release(ident)
        chain, window, label = only if seg is None else segments[seg]
        items = sliding(payload, window) if window else payload
        loaded = clock()
        outputs, failure, stats, skipped = chain.run(items)
        done = clock()
        if relay_fd is not None:
            result = _relay(outputs, failure, items, label, stats, loaded - start + pickling,
                            carry)
            pickling = clock() - done
            try:
                write_frame(relay_fd, result)
            except BrokenPipeError:
                return  # the next worker is gone: the parent reports its death
            del payload, items, outputs, result
            continue
        result = _encode(outputs, failure, items, label,
                         (stats, loaded - start + pickling,
                          skipped and skipped_errors(chain, skipped)),
                         slots, carry)
        pickling = clock() - done
        write_frame(result_fd, result)
        del payload, items, outputs, result  # not kept alive while idle
