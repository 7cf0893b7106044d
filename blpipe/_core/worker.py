"""Where chunks run outside the caller's loop: a worker process, an executor, a thread.

A worker process runs :func:`worker_main`: it reads :class:`~blpipe._core.messages.Task`
frames from its task pipe, runs the segment's ``Chain`` over each and writes a
:class:`~blpipe._core.messages.Result` back, in order, until end of file, its
stages set up before and torn down after (:mod:`blpipe._core.hooks`). A
stateful stage keeps its state simply because its process lives as long as
the pipeline. The figures (each stage's busy time and counts, the time spent
unpickling and pickling) ride on the results: no message is sent for them
alone. An executor runs :func:`run_chunk` and a thread stage
:func:`run_local`; both return the same ``Result``.

This is the child side: it never imports the hub's modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from sys import getsizeof
from typing import Any, NamedTuple

from ..errors import SerializationError
from .chain import Chain, formed
from .deathsig import die_with_parent
from .failures import RemoteError, StageFailure
from .hooks import Lifecycle, Stop, bare, hook, set_up, stop_on_sigterm, tear_down
from .keyed import Keyed
from .messages import (
    Adopt,
    Broken,
    Carry,
    Flush,
    Loaded,
    LoadFailed,
    Part,
    Result,
    Resume,
    Role,
    Setup,
    Snapshot,
    State,
    Task,
    Unloadable,
    new,
)
from .results import encode, merge, packed, relay
from .run import AT_END, Run, Step
from .shm import AVAILABLE, BIG, Slots, Views, mark_large, tune_malloc
from .stall import answer_probes
from .state import states
from .text import short_repr
from .timeout import position, set_clock, start_task
from .transport import (
    Inbox,
    dumps,
    dumps_chunk,
    first_unpicklable,
    loads,
    loads_stage,
)
from .transport import write_frame as _write


class Segment(NamedTuple):
    """What a worker runs for one segment id."""

    chain: Chain
    window: int | None  # the hub sends a window's k-1 earlier inputs too
    group: int | None  # the hub sends whole groups
    label: str  # its last stage's

    def items(self, payload: list[Any]) -> list[Any]:
        """What the chain is called with: windows or groups of the payload, or it."""
        return formed(payload, self.window, self.group)


Segments = dict[int, Segment]


def load_segments(blob: bytes) -> Segments:
    """The segments a pipeline's blob holds: ``{id: ([(label, stage, catch, expand,
    index)], window, group)}``, its first stage's groups formed by the hub."""
    return {seg: Segment(Chain([Step(label, loads_stage(data), None, catch, expand,
                                     group if i == 0 else None, bool(group) and i == 0,
                                     None, index)
                                for i, (label, data, catch, expand, index) in enumerate(steps)],
                               ahead=True),
                         window, group, steps[-1][0])
            for seg, (steps, window, group) in loads(0, blob).items()}


# -- a worker process --------------------------------------------------------

def worker_main(task_conn: Any, result_conn: Any, relay_conn: Any, setup: Setup) -> None:
    """Run chunks until the task pipe closes.

    ``setup.close_fds`` are the parent's ends of other workers' pipes,
    inherited under fork: holding them would keep those pipes open after the
    parent dies. In a link of dedicated stages (``setup.role``), each worker
    but the last writes its outputs to ``relay_conn``, the next worker's task
    pipe, with the error and figures so far; the last one sends the results
    to the parent. A linked worker sends nothing through shared memory, since
    the parent could not hand its slots back. ``setup.parent`` is for
    :func:`die_with_parent`. ``setup.clock``, for a worker of stages with a
    ``timeout``, is where it shows which call runs since when
    (:mod:`blpipe._core.timeout`); ``setup.board`` is where it shows the call in
    hand when the hub asks (:mod:`blpipe._core.stall`).
    """
    blob, role, close_fds, parent, clock, board, replica = setup
    die_with_parent(parent)  # first: until then, the caller's death would orphan it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited under fork
    tune_malloc()
    set_clock(clock)
    if close_fds:
        # dup2 over them rather than close, so a stale object closing its
        # inherited fd later cannot close a descriptor the stage opened.
        null = os.open(os.devnull, os.O_RDONLY)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)
    result_fd = result_conn.fileno()
    try:
        segments = load_segments(blob)
    except BaseException:
        _write(result_fd, dumps(LoadFailed(traceback.format_exc())))
        return
    if board is not None:
        answer_probes(board, [s.chain for s in segments.values()], lambda: position()[0])
    relay_fd = None if relay_conn is None else relay_conn.fileno()
    where = f"worker process {os.getpid()}"
    life = Lifecycle((hook(t.label, t.func) for s in segments.values() for t in s.chain.steps),
                     replica, where)
    stop_on_sigterm(life)  # stopped midway, it still tears down
    try:
        try:
            if life and not set_up(life, result_fd, where):
                return
            _serve(Inbox(task_conn.fileno()), result_fd, relay_fd, segments,
                   role is not Role.ALONE, replica[0])
        except Exception:  # blpipe's own (Chain.run catches the stage's): say so, rather
            with contextlib.suppress(OSError):  # than exit as if the stage had killed it
                _write(result_fd, dumps(Broken(traceback.format_exc())))
        finally:
            tear_down(life, result_fd, where)
    except Stop:
        pass
    finally:  # again, should the one Stop have cut the first short
        tear_down(life, result_fd, where)


def _serve(inbox: Inbox, result_fd: int, relay_fd: int | None, segments: Segments,
           linked: bool, replica: int) -> None:
    slots = Slots() if AVAILABLE and not linked else None
    views = Views()
    only = next(iter(segments.values()))  # a linked worker's: relayed tasks name none
    pid = os.getpid()
    clock = time.perf_counter
    pickling = 0.0  # of the previous result
    paused: dict[int, Expanding] = {}  # expansions waiting for the hub to make room
    tasks = 0  # read so far: the hub numbers them the same way, for the clock

    while (frame := inbox.next()) is not None:
        start = clock()
        views.last = None
        try:
            msg = loads(*frame, views)
        except Exception:  # the items' fault, not the stage's: their class is missing here
            _write(result_fd, dumps(Unloadable(traceback.format_exc())))
            continue
        del frame
        if views.last is not None and views.nbytes > BIG:
            _write(result_fd, dumps(Loaded(views.last[1])))  # the hub frees the slot now
        if type(msg) is Snapshot:  # a checkpoint's cut: after the chunks before it
            _snapshot(segments.get(msg.segment, only).chain, result_fd, replica)
            if relay_fd is not None:
                _write(relay_fd, dumps(msg))
            continue
        if type(msg) is Adopt:  # a key's copy from the checkpoint resumed from
            for step in segments.get(msg.segment, only).chain.steps:
                keyed = bare(step.func)
                if isinstance(keyed, Keyed):
                    keyed.adopt(msg.key, loads_stage(msg.blob))
            continue
        if type(msg) is Flush:  # the input ended: the stage's last outputs
            start_task(tasks)
            tasks += 1
            pickling = _finish(segments.get(msg.segment, only), msg.keys, result_fd, slots)
            continue
        if type(msg) is Resume:  # an expansion the hub has room for again
            _release(slots, msg.freed, pid)
            exp = paused.pop(msg.ident)
            start_task(*exp.position)
            pickling = _stream(exp, msg.credit, slots, result_fd, paused)
            continue
        task: Task = new(Task, msg)
        del msg
        start_task(tasks)
        tasks += 1
        _release(slots, task.freed, pid)
        carry = None if task.carry is None else new(Carry, task.carry)
        segment = only if task.segment is None else segments[task.segment]
        chain, label = segment.chain, segment.label
        items = segment.items(task.items)
        loaded = clock()
        seconds = loaded - start + pickling
        if task.credit and chain.expands and relay_fd is None:
            exp = Expanding(chain.stream(items), label, seconds)
            pickling = _stream(exp, task.credit, slots, result_fd, paused)
            del task, items, exp
            continue
        outputs, failure, stats, skipped = chain.run(items)
        done = clock()
        if relay_fd is not None:  # linked stages go on past no error: none was skipped
            relayed = relay(outputs, failure, items, label, stats, seconds, carry)
            pickling = clock() - done
            try:
                _write(relay_fd, relayed)
            except BrokenPipeError:
                return  # the next worker is gone: the parent reports its death
        else:
            error, stats, seconds = merge(failure, stats, seconds, carry)
            result = encode(outputs, Result([], error, stats, seconds, packed(skipped)),
                             items, label, slots)
            pickling = clock() - done
            _write(result_fd, result)
        del task, items, outputs, carry  # not kept alive while idle


def _finish(segment: Segment, keys: tuple[Any, ...] | None, result_fd: int,
            slots: Slots | None) -> float:
    """Send the result of the segment's ``flush()`` (a keyed stage's: of ``keys``);
    returns the seconds spent pickling."""
    for step in segment.chain.steps:
        keyed = bare(step.func)
        if isinstance(keyed, Keyed):
            keyed.pending = keys
    run = segment.chain.flush(final=True)
    outputs = list(run)
    error = None if run.failure is None else RemoteError.pack(run.failure)
    done = time.perf_counter()
    _write(result_fd, encode(outputs, Result([], error, run.stats, 0.0, packed(run.skipped)),
                             [AT_END] * len(outputs), segment.label, slots))
    return time.perf_counter() - done


def _release(slots: Slots | None, freed: list[tuple[int, int]], pid: int) -> None:
    """Reuse the slots the hub has read."""
    if slots is not None:
        for owner, ident in freed:
            if owner == pid:  # a resent chunk may carry another worker's
                slots.release(ident)


def _snapshot(chain: Chain, result_fd: int, replica: int) -> None:
    """Send the hub each stage's state: its object pickled, or why it won't pickle."""
    for number, blob, error in states(chain):
        _write(result_fd, dumps(State(number, blob, error, replica)))


PART_DELAY = 0.001  # seconds a part's first output waits for more to fill it


def part_size(buf: list[Any], outputs: int, nbytes: int) -> int:
    """How many of ``buf`` a part may hold within a credit of ``outputs`` and
    ``nbytes``, their bytes guessed from the last one's size; at least one."""
    return max(1, min(len(buf), outputs, nbytes // (getsizeof(buf[-1]) or 1)))


class Expanding:
    """A chunk expanding in this worker, sent in parts: its run, and what the
    worker holds of it while it is paused."""

    __slots__ = ("run", "label", "seconds", "ahead", "position")

    def __init__(self, run: Run, label: str, seconds: float) -> None:
        self.run = run
        self.label = label  # how messages name its segment's last stage
        self.seconds = seconds  # unpickling and pickling, for the figures
        self.ahead: list[Any] = []  # outputs made beyond its last part
        self.position = (0, 0)  # its task and calls, for a timed stage's clock


def _stream(exp: Expanding, credit: tuple[int, int], slots: Slots | None, result_fd: int,
            paused: dict[int, Expanding]) -> float:
    """Send ``exp``'s outputs in parts, within ``credit`` (outputs, bytes);
    then pause it, to go on when the hub says (:class:`~blpipe._core.messages.Resume`),
    once it has passed them on. A part goes when it holds the credit's share,
    or once its first output has waited ``PART_DELAY`` for more. Its bytes
    are guessed, before it is pickled, from its last output's size, and
    counted once it is. While a run is paused the worker runs other chunks:
    waiting in it would starve the segments that share the pool, and those
    downstream may be what it waits for. Returns the seconds spent pickling
    the last message."""
    clock = time.perf_counter
    outputs, nbytes = credit
    run = exp.run
    buf, exp.ahead = exp.ahead, []
    first = clock()
    pieces = run.pieces
    k = 0
    while True:
        if buf:  # the first outputs past the bytes' share end the part
            k = part_size(buf, outputs, nbytes)
        if not buf or (k == len(buf) < outputs and clock() - first < PART_DELAY):
            piece = next(pieces, None)
            if piece is None:
                break
            if not buf:
                first = clock()
            buf += piece
            continue
        ident = None
        if k < len(buf) or k == outputs:  # all the hub may hold: pause here
            ident = id(run)
            paused[ident] = exp
            exp.position = position()
            buf, exp.ahead = buf[:k], buf[k:]
        done = clock()
        # The errors gone past so far all come before the outputs kept ahead: the
        # run is only read on while fewer than credit outputs wait.
        try:
            frame, _, size = dumps_chunk(Part(mark_large(buf, True),
                                              packed(run.skipped[run.told:]), ident,
                                              short_repr(run.item)), slots)
        except Exception:  # an output that won't pickle: the ones before it, then an error
            paused.pop(id(run), None)
            run.close()
            bad = first_unpicklable(buf)
            j, why = bad if bad is not None else (0, None)
            run.failure = StageFailure(exp.label, run.item, SerializationError(
                f"{exp.label} gave {short_repr(buf[j])}, which cannot leave its worker process"
                + (f": {type(why).__name__}: {why}" if why is not None else "")))
            buf = buf[:j]
            break
        _write(result_fd, frame)
        run.told = len(run.skipped)
        outputs -= len(buf)
        nbytes -= size
        if ident is None and (outputs <= 0 or nbytes <= 0):  # the hub holds all it may
            ident = id(run)
            paused[ident] = exp
            exp.position = position()
            _write(result_fd, dumps(Part([], [], ident, short_repr(run.item))))
        if ident is not None:
            return clock() - done
        buf = []
    error, stats, seconds = merge(run.failure, run.stats, exp.seconds, None)
    done = clock()
    _write(result_fd, dumps_chunk((mark_large(buf, True), error, stats, seconds,
                                   packed(run.skipped[run.told:])), slots)[0])
    return clock() - done


