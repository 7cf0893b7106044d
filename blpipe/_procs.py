"""The hub's side of worker processes: start them, send chunks, read results, see deaths.

Every worker has a task pipe (hub -> worker) and a result pipe (worker ->
hub); the hub holds the non-blocking ends and watches each result pipe and
each process sentinel in its ``select``, so a death is seen as it happens.
Workers come in groups (:mod:`blpipe._pool`): the pool, and links of
dedicated workers; a group decides what a death of one of its own means.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from multiprocess.connection import wait as wait_sentinels

from ._failures import Failure, broken, cannot_load, cannot_unpickle
from ._messages import (
    Broken,
    Credit,
    Loaded,
    LoadFailed,
    Part,
    Result,
    Resume,
    State,
    Unloadable,
    new,
)
from ._shm import AVAILABLE, SlotGone, Slots, Views, mark_large
from ._stall import NAMED_AFTER, PROBE, SIZE, Board, Call, ask, in_chunk, since
from ._text import short_repr
from ._transport import READ_SIZE, Frame, Inbox, Outbox, Poller, dumps, dumps_chunk, loads
from ._worker import worker_main
from .errors import SerializationError, WorkerDied

if TYPE_CHECKING:
    from ._flow import Flow, Record, Sink
    from ._segments import Segment

GRACE = 1.0  # seconds an idle worker gets to exit on end of file after a normal run
KILL_AFTER = 0.5  # seconds between SIGTERM and SIGKILL, so everything is gone within 1 s
WATCH = 0.2  # seconds between looks at the clocks of workers running timed chunks
_PIPE_SIZE = 1 << 20


class Worker:
    """A worker process as the hub sees it: its pipes and the chunks it holds."""

    __slots__ = ("proc", "task", "result", "outbox", "inbox", "pending", "unsent", "paused",
                 "label", "group", "freed", "left", "clock", "tasks", "late", "board", "since",
                 "asked")

    def __init__(self, proc: Any, task: Any, result: Any, label: str, into: bytearray) -> None:
        self.proc = proc
        self.task = task  # None for a linked worker, which the one before it feeds
        self.result = result
        self.outbox = Outbox(task.fileno()) if task is not None else None
        self.inbox = Inbox(result.fileno(), into)  # the hub reads one inbox at a time
        # (segment, chunk) sent and not yet back; the workers of a link share one
        self.pending: deque[tuple[Segment, Record]] = deque()
        self.unsent: list[tuple[Segment, Record]] = []  # posted after it died
        self.paused: list[tuple[Segment, Record]] = []  # expansions it holds, paused
        self.label = label
        self.group: Any = None  # its Pool or Link, which handles its death
        self.freed: list[tuple[int, int]] = []  # its result slots read since its last task
        self.left: int | None = None  # calls it may still take (max_tasks_per_child)
        self.clock: Any = None  # its [task, call, started] in shared memory, if timed
        self.board: Board | None = None  # the call it had in hand when last asked
        self.since = 0.0  # when its first chunk in hand began, as far as the hub knows
        self.asked: tuple[Record, float] | None = None  # what it was last asked about, when
        self.tasks = 0  # tasks sent to it: the number of the next one
        self.late: tuple[Record, int] | None = None  # killed: this chunk's call ran late


class Procs:
    """Starts worker processes, and handles what the ``select`` reports of them."""

    def __init__(self, ctx: Any, poller: Poller, parent_fds: list[int],
                 flow: Flow, sink: Sink) -> None:
        self.ctx = ctx
        self.fork = ctx.get_start_method() == "fork"
        # a worker's parent: this process, or the fork server (see die_with_parent)
        self.parent = 0 if ctx.get_start_method() == "forkserver" else os.getpid()
        self.poller = poller
        self.parent_fds = parent_fds  # what a child must not keep open under fork
        self.flow = flow
        self.sink = sink
        self.workers: list[Worker] = []
        self.slots = Slots() if AVAILABLE else None  # for large inputs
        self.timed = False  # some worker has a clock: watch() it
        self.views = Views()  # the workers' slots, for large results
        self.into = bytearray(READ_SIZE)  # what every worker's inbox reads into
        self.closing = False

    def spawn(self, blob: bytes, label: str, relay: Any = None, linked: bool = False,
              fed: bool = True, timed: bool = False) -> tuple[Worker, Any]:
        """Start a worker; returns it, and the write end of its task pipe when
        the hub does not feed it (``fed``): the caller passes that on. A
        ``timed`` worker runs stages with a ``timeout``: it gets a clock."""
        clock = self.ctx.RawArray("d", 3) if timed else None
        # Under fork the child shares an anonymous mapping as it is; a RawArray's
        # first costs 2 ms, for the arena multiprocess keeps them in.
        board = mmap.mmap(-1, SIZE) if self.fork else self.ctx.RawArray("c", SIZE)
        task_r, task_w = self.ctx.Pipe(duplex=False)
        result_r, result_w = self.ctx.Pipe(duplex=False)
        # Under fork the child inherits the parent's ends of every pipe, its own
        # included; holding its own task pipe's write end, it would never see EOF.
        close_fds = (*self.parent_fds, task_w.fileno(), result_r.fileno()) if self.fork else ()
        proc = self.ctx.Process(target=worker_main,
                                args=(task_r, result_w, blob, close_fds, relay, linked,
                                      self.parent, clock, board),
                                name=f"blpipe {label}", daemon=True)
        try:
            proc.start()
        finally:
            task_r.close()
            result_w.close()
        worker = Worker(proc, task_w if fed else None, result_r, label, self.into)
        worker.clock = clock
        worker.board = Board(board)
        if timed:
            self.timed = True
        if not fed:  # a linked worker's: it stays blocking, for the worker that feeds it
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(task_w.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        for fd in ((task_w.fileno(),) if fed else ()) + (result_r.fileno(),):
            os.set_blocking(fd, False)
            # Linux pipes hold 64 KiB; a larger one takes a large item in fewer
            # round trips. Best effort: the limit is /proc/sys/fs/pipe-max-size.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            self.parent_fds.append(fd)
        poller = self.poller
        poller.register(result_r.fileno(), poller.READ, partial(self.on_result, worker))
        poller.register(proc.sentinel, poller.READ, partial(self.on_death, worker))
        self.workers.append(worker)
        return worker, None if fed else task_w

    # -- chunks out ----------------------------------------------------------------

    def pack(self, segment: int, payload: list[Any], worker: Worker,
             credit: Credit | None = None) -> tuple[Frame, int | None, int]:
        """A task frame, its slot and its bytes; raises when it won't pickle."""
        freed = worker.freed
        try:
            packed = dumps_chunk((segment, mark_large(payload), freed, None, credit), self.slots)
        except Exception:  # a memoryview, or a large buffer in the middle of the chunk
            packed = dumps_chunk((segment, mark_large(payload, every=True), freed, None, credit),
                                 self.slots)
        worker.freed = []
        return packed

    def post(self, worker: Worker, segment: Segment, rec: Record, task: bool = True) -> None:
        outbox: Outbox = worker.outbox  # type: ignore[assignment]  # a worker the hub feeds
        queued = bool(outbox)
        rec.place = worker
        if not worker.pending:
            worker.since = time.monotonic()
        if task:  # not a paused expansion going on: the worker counts tasks as it reads them
            rec.seq = worker.tasks
            worker.tasks += 1
        worker.pending.append((segment, rec))
        if not self.send(worker, rec.frame) and not queued:
            # The worker is gone, and its sentinel will say so. With nothing queued
            # before it, none of this chunk reached the worker: it never started,
            # so its group may send it elsewhere.
            worker.unsent.append(worker.pending.pop())

    def send(self, worker: Worker, frame: Frame) -> bool:
        """Queue ``frame`` for the worker; ``False`` when it is gone."""
        outbox: Outbox = worker.outbox  # type: ignore[assignment]  # a worker the hub feeds
        try:
            if outbox.put(frame) or outbox.waiting:
                return True
        except BrokenPipeError:
            return False
        outbox.waiting = True  # until the pipe takes the rest
        self.poller.register(outbox.fd, self.poller.WRITE, partial(self.on_writable, worker))
        return True

    def resume(self, segment: Segment, rec: Record, credit: Credit) -> None:
        """Let the worker go on with ``rec``'s paused expansion."""
        worker: Worker = rec.place
        worker.paused.remove((segment, rec))
        ident, rec.paused = rec.paused, None
        assert ident is not None
        rec.frame = dumps(Resume(ident, credit, worker.freed))
        worker.freed = []
        self.post(worker, segment, rec, task=False)

    def on_writable(self, worker: Worker) -> None:
        outbox: Outbox = worker.outbox  # type: ignore[assignment]
        try:
            done = outbox.flush()
        except BrokenPipeError:
            done = True
        if done:
            outbox.waiting = False
            self.poller.unregister(outbox.fd)

    # -- results in ------------------------------------------------------------------

    def on_result(self, worker: Worker) -> None:
        inbox = worker.inbox
        if inbox.eof:
            return
        worker.since = time.monotonic()  # for the chunk after the one it answers
        for word, payload in inbox.read():
            self._on_frame(worker, word, payload)
        if inbox.eof:  # its sentinel will say why; stop selecting a closed pipe
            self.poller.unregister(inbox.fd)

    def _on_frame(self, worker: Worker, word: int, payload: bytes | bytearray) -> None:
        views = self.views
        views.last = None
        try:
            msg = loads(word, payload, views)
        except SlotGone:  # it died after writing: its sentinel is about to fire
            segment, rec = worker.pending.popleft()
            worker.proc.join(KILL_AFTER)
            self.fail(segment, rec, WorkerDied(segment.label, worker.proc.exitcode,
                                                short_repr(rec.first)))
            return
        except Exception as e:
            segment, rec = worker.pending.popleft()
            bad = SerializationError(f"the results of {segment.label} cannot be unpickled in "
                                     f"the calling process: {type(e).__name__}: {e}")
            bad.__cause__ = e
            self.fail(segment, rec, bad)
            return
        if type(msg) is tuple:  # a Result: see blpipe._messages
            if not worker.pending:  # a linked worker's, for chunks that failed meanwhile
                return
            nbytes = len(payload)
            if views.last is not None:
                worker.freed.append(views.last)
                nbytes += views.nbytes
            segment, rec = worker.pending.popleft()
            if rec.slot is not None:
                self.release_slot(rec)
            segment.complete(rec, new(Result, msg), nbytes)
            if worker.left == 0 and not (worker.pending or worker.paused):
                self.retire(worker)
        elif type(msg) is Part:  # a chunk still expanding: what it gave so far
            nbytes = len(payload)
            if views.last is not None:
                worker.freed.append(views.last)
                nbytes += views.nbytes
            if msg.paused is None:
                segment, rec = worker.pending[0]
            else:  # it waits, off the worker's queue, until the hub has room for more
                segment, rec = worker.pending.popleft()
                rec.paused = msg.paused
                worker.paused.append((segment, rec))
            if rec.slot is not None:  # it has read its inputs long ago
                self.release_slot(rec)
            rec.expanding = msg.expanding
            segment.extend(rec, msg.outputs, msg.skipped, nbytes)
        elif type(msg) is Loaded:  # it has a huge chunk in hand: free its slot now
            for _, rec in worker.pending:
                if rec.slot == msg.slot:
                    self.release_slot(rec)
                    break
        elif type(msg) is State:  # a dedicated stage at a checkpoint's cut
            cut = self.flow.cut
            if cut is not None:
                cut.waiting.discard(msg.stage)
                if msg.error is not None:
                    cut.failed = msg.error
                elif msg.blob is not None:
                    cut.states[msg.stage] = msg.blob
        elif type(msg) is LoadFailed:
            self.flow.stop(1 << 30)
            self.sink.put_failure(Failure(cannot_load(worker.label, msg.traceback)))
        elif worker.pending:  # Unloadable or Broken: that chunk fails
            segment, rec = worker.pending.popleft()
            if type(msg) is Unloadable:
                exc: BaseException = cannot_unpickle(segment.label, short_repr(rec.first),
                                                     msg.traceback)
            else:
                assert type(msg) is Broken
                exc = broken(worker.label, msg.traceback)
            self.fail(segment, rec, exc)

    def release_slot(self, rec: Record) -> None:
        if rec.slot is not None:
            self.slots.release(rec.slot)  # type: ignore[union-attr]
            rec.slot = None

    # -- deaths ------------------------------------------------------------------------

    def retire(self, worker: Worker) -> None:
        """It has taken all the calls it may and finished them: end of file
        on its task pipe lets it exit."""
        self._drop(worker.outbox.fd)  # type: ignore[union-attr]  # a pool worker's
        worker.task.close()
        worker.task = worker.outbox = None

    def on_death(self, worker: Worker) -> None:
        if worker not in self.workers:
            return
        self.on_result(worker)  # what it wrote before dying still counts
        worker.proc.join(KILL_AFTER)  # its sentinel fired: only the exit status is missing
        self._forget(worker)
        worker.group.died(worker, worker.proc.exitcode)

    def fail(self, segment: Segment, rec: Record, exc: BaseException) -> None:
        self.release_slot(rec)
        segment.fail(rec, exc)

    def _forget(self, worker: Worker) -> None:
        self.views.forget(worker.proc.pid)
        self.poller.unregister(worker.proc.sentinel)
        self._drop(worker.inbox.fd)
        if worker.outbox is not None:
            self._drop(worker.outbox.fd)
        self.workers.remove(worker)
        if worker.task is not None:
            worker.task.close()
        worker.result.close()

    def _drop(self, fd: int) -> None:
        """Stop watching ``fd``, about to be closed. Its number may be reused at
        once: a later child must not close it as its parent's."""
        self.poller.unregister(fd)
        if fd in self.parent_fds:
            self.parent_fds.remove(fd)

    def watch(self, now: float) -> float | None:
        """Kill each worker whose call has run past its stage's timeout; returns
        when to look again, or ``None`` when no timed call is in flight."""
        due = None
        for w in self.workers:
            clock = w.clock
            if clock is None or not w.pending or w.late is not None:
                continue
            task, call, started = clock[0], clock[1], clock[2]
            for segment, rec in w.pending:
                if rec.seq == task and segment.timeout is not None:
                    break
            else:  # not a timed chunk, or one it has not begun: look again soon
                if any(s.timeout is not None for s, _ in w.pending):
                    due = min(due or now + 1.0, now + WATCH)
                continue
            if not started:  # between its calls
                due = min(due or now + 1.0, now + min(WATCH, segment.timeout / 2))
            elif now >= started + segment.timeout:
                w.late = rec, int(call)
                w.proc.kill()  # its sentinel fires at once: on_death takes it from there
            else:
                due = min(due or now + 1.0, started + segment.timeout)
        return due

    def calls(self, now: float, usual: Sequence[float]) -> list[Call]:
        """Each busy worker's call in hand: ``(stage, since, input)``, the input as
        text. A chunk runs since its worker's last message, or since it was sent
        to an idle one. Once it has run long enough to be unusual, its workers
        are asked which call is in hand (at most once a second); until they
        answer (a call that holds the GIL never lets them), the call is told
        by its chunk."""
        heads = [(w, *w.pending[0]) for w in self.workers if w.task is not None and w.pending]
        asked = []
        for w, segment, rec in heads:
            if (now - w.since >= max(NAMED_AFTER, 5 * usual[segment.first])
                    and (w.asked is None or w.asked[0] is not rec or now - w.asked[1] >= 1.0)):
                w.asked = rec, now
                for x in self.workers:  # a link's workers share their chunks
                    if x.pending is w.pending and x.board is not None and x.board.version():
                        with contextlib.suppress(OSError):
                            os.kill(x.proc.pid, PROBE)
                            asked.append(x.board)
        if asked:
            ask(asked)
        calls: list[Call] = []
        for w, segment, rec in heads:
            told = False
            for x in self.workers:
                seen = x.board.read() if x.board is not None and x.pending is w.pending and \
                    w.asked is not None else None
                if seen is not None and seen[1] is not None and \
                        any(r.seq == seen[0] for _, r in w.pending):
                    hand = seen[1]
                    calls.append((hand[0], since(hand, usual, now), hand[3]))
                    told = True
            if not told:
                calls.append((segment.first, w.since, in_chunk(rec.n_in, rec.first)))
        return calls

    def busy(self) -> bool:
        """Whether any worker holds a chunk or has one waiting to be written."""
        return any(w.pending or w.unsent or w.outbox for w in self.workers)

    def holds(self) -> bool:
        """Whether a worker holds a paused expansion: it goes on once there is room."""
        return any(w.paused for w in self.workers)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, graceful: bool) -> None:
        """Stop every worker: let idle ones exit on end of file, terminate the rest."""
        self.closing = True
        workers = list(self.workers)
        for w in workers:
            if w.task is not None:
                w.task.close()  # end of file: an idle worker exits by itself
        procs = [w.proc for w in workers]
        if graceful:
            _join_all(procs, GRACE)
        for p in procs:
            if p.exitcode is None:
                p.terminate()
        _join_all(procs, KILL_AFTER)
        for p in procs:
            if p.exitcode is None:
                p.kill()
        _join_all(procs, None)
        for w in workers:
            w.result.close()
            w.proc.close()
        self.workers.clear()
        self.views.close()
        if self.slots is not None:
            self.slots.close()


def _join_all(procs: list[Any], timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    alive = [p for p in procs if p.exitcode is None]
    while alive:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        wait_sentinels([p.sentinel for p in alive], left)
        alive = [p for p in alive if p.exitcode is None]
