"""The hub's side of worker processes: start them, send chunks, read results, see deaths.

Every worker has a task pipe (hub -> worker) and a result pipe (worker ->
hub); the hub holds the non-blocking ends and watches each result pipe and
each process sentinel in its ``select``. The pool's workers serve every pool
segment; a :class:`Link` is the dedicated workers of adjacent stateful
stages, each writing its outputs straight into the next one's task pipe, the
last one writing the results to the hub. Both are *backends* of segments.

A worker that dies is seen through its sentinel. A pool worker is replaced:
the chunk it was running fails with ``WorkerDied``, the chunks queued behind
it go to other workers. A linked worker takes its stage's state with it, so
its segment fails its next input as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from multiprocess.connection import wait as wait_sentinels

from ._failures import Failure, broken, cannot_load, cannot_unpickle
from ._messages import Broken, Loaded, LoadFailed, Result, Unloadable, new
from ._shm import AVAILABLE, SlotGone, Slots, Views, mark_large
from ._spec import short_repr
from ._transport import Frame, Inbox, Outbox, dumps_chunk, loads
from ._worker import worker_main
from .errors import SerializationError, WorkerDied

if TYPE_CHECKING:
    from ._segments import Flow, Record, Segment, Sink

GRACE = 1.0  # seconds an idle worker gets to exit on end of file after a normal run
KILL_AFTER = 0.5  # seconds between SIGTERM and SIGKILL, so everything is gone within 1 s
_PIPE_SIZE = 1 << 20
_PER_WORKER = 2  # chunks queued per pool worker: one running, one ready behind it
_CHUNK_WORK = 0.0002  # seconds of stage work a pool chunk aims at


class Worker:
    """A worker process as the hub sees it: its pipes and the chunks it holds."""

    __slots__ = ("proc", "task", "result", "outbox", "inbox", "pending", "label", "group",
                 "freed")

    def __init__(self, proc: Any, task: Any, result: Any, label: str) -> None:
        self.proc = proc
        self.task = task  # None for a linked worker, which the one before it feeds
        self.result = result
        self.outbox = Outbox(task.fileno()) if task is not None else None
        self.inbox = Inbox(result.fileno())
        # (segment, chunk) sent and not yet back; the workers of a link share one
        self.pending: deque[tuple[Segment, Record]] = deque()
        self.label = label
        self.group: Pool | Link | None = None
        self.freed: list[tuple[int, int]] = []  # its result slots read since its last task


class Pool:
    """The shared pool's workers; pool segments send to the first ``active`` of them."""

    depth = _PER_WORKER
    work = _CHUNK_WORK
    death = None

    def __init__(self, procs: Procs, blob: bytes, label: str, size: int) -> None:
        self.procs = procs
        self.blob = blob
        self.label = label
        self.workers: list[Worker] = []
        self.active: list[Worker] = []  # the first n_active workers
        self.n_active = size
        for _ in range(size):
            self._add()

    def _add(self) -> None:
        worker, _ = self.procs.spawn(self.blob, self.label)
        worker.group = self
        self.workers.append(worker)
        self.resize(self.n_active)

    def resize(self, n: int) -> None:
        """Send to the first ``n`` workers only; the others finish what they hold."""
        self.n_active = n
        self.active[:] = self.workers[:n]

    def replace(self, dead: Worker) -> None:
        """Keep the pool's size: earlier items may still need it downstream."""
        self.workers.remove(dead)
        self._add()

    def pick(self, limit: int) -> Worker | None:
        best = None
        for w in self.active:
            n = len(w.pending)
            if n < limit and (best is None or n < len(best.pending)):
                best = w
                if not n:
                    break
        return best

    def pack(self, segment: int, payload: list[Any], place: Worker) -> tuple[Frame, int | None,
                                                                             int]:
        return self.procs.pack(segment, payload, place)

    def post(self, place: Worker, segment: Segment, rec: Record) -> None:
        self.procs.post(place, segment, rec)


class Link:
    """The dedicated workers of one segment, each feeding the next; the hub feeds the first."""

    work = _CHUNK_WORK

    def __init__(self, procs: Procs, blobs: list[bytes], labels: list[str]) -> None:
        self.procs = procs
        self.workers: list[Worker] = []
        self.feeding: list[Worker] = []  # the one the hub sends to, while it lives
        # A worker of it died: which stage's, and how. Its state is lost, so
        # whatever comes next fails.
        self.death: tuple[str, int | None] | None = None
        relay = None  # the write end of the next worker's task pipe
        for i in range(len(blobs) - 1, -1, -1):
            worker, feeder = procs.spawn(blobs[i], labels[i], relay=relay,
                                         linked=len(blobs) > 1, fed=i == 0)
            if relay is not None:
                relay.close()  # the worker before it holds it now: its exit is an EOF
            relay = feeder
            worker.group = self
            self.workers.append(worker)
        self.workers.reverse()
        for w in self.workers[1:]:
            w.pending = self.workers[0].pending  # what goes in first comes out of the last
        self.feeding.append(self.workers[0])
        self.depth = len(blobs) + 1  # one chunk in each worker, one waiting

    def pick(self, limit: int) -> Worker | None:
        for w in self.feeding:
            if len(w.pending) < limit:
                return w
        return None

    def pack(self, segment: int, payload: list[Any], place: Worker) -> tuple[Frame, int | None,
                                                                             int]:
        return self.procs.pack(segment, payload, place)

    def post(self, place: Worker, segment: Segment, rec: Record) -> None:
        self.procs.post(place, segment, rec)

    def blame(self, worker: Worker, exitcode: int | None) -> None:
        """Note which of its workers ended the others, and how.

        A worker after the one that died sees end of file and exits cleanly,
        and its end may be noticed first: the first worker before it that
        failed is the one to name.
        """
        if self.death is not None and self.death[1] != 0:
            return
        self.death = worker.label, exitcode
        for w in self.workers:
            if w is worker:
                break
            code = w.proc.exitcode
            if code is None and exitcode == 0:  # its end may not be reaped yet
                w.proc.join(KILL_AFTER)
                code = w.proc.exitcode
            if code not in (None, 0):
                self.death = w.label, code
                break


class Procs:
    """Starts worker processes, and handles what the ``select`` reports of them."""

    def __init__(self, ctx: Any, selector: selectors.BaseSelector, parent_fds: list[int],
                 flow: Flow, sink: Sink) -> None:
        self.ctx = ctx
        self.fork = ctx.get_start_method() == "fork"
        self.selector = selector
        self.parent_fds = parent_fds  # what a child must not keep open under fork
        self.flow = flow
        self.sink = sink
        self.workers: list[Worker] = []
        self.slots = Slots() if AVAILABLE else None  # for large inputs
        self.views = Views()  # the workers' slots, for large results
        self.closing = False

    def spawn(self, blob: bytes, label: str, relay: Any = None, linked: bool = False,
              fed: bool = True) -> tuple[Worker, Any]:
        """Start a worker; returns it, and the write end of its task pipe when
        the hub does not feed it (``fed``): the caller passes that on."""
        task_r, task_w = self.ctx.Pipe(duplex=False)
        result_r, result_w = self.ctx.Pipe(duplex=False)
        # Under fork the child inherits the parent's ends of every pipe, its own
        # included; holding its own task pipe's write end, it would never see EOF.
        close_fds = (*self.parent_fds, task_w.fileno(), result_r.fileno()) if self.fork else ()
        proc = self.ctx.Process(target=worker_main,
                                args=(task_r, result_w, blob, close_fds, relay, linked),
                                name=f"blpipe {label}", daemon=True)
        try:
            proc.start()
        finally:
            task_r.close()
            result_w.close()
        worker = Worker(proc, task_w if fed else None, result_r, label)
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
        select = self.selector
        select.register(result_r.fileno(), selectors.EVENT_READ, partial(self.on_result, worker))
        select.register(proc.sentinel, selectors.EVENT_READ, partial(self.on_death, worker))
        self.workers.append(worker)
        return worker, None if fed else task_w

    # -- chunks out ----------------------------------------------------------------

    def pack(self, segment: int, payload: list[Any], worker: Worker) -> tuple[Frame, int | None,
                                                                               int]:
        """A task frame, its slot and its bytes; raises when it won't pickle."""
        freed = worker.freed
        try:
            packed = dumps_chunk((segment, mark_large(payload), freed, None), self.slots)
        except Exception:  # a memoryview, or a large buffer in the middle of the chunk
            packed = dumps_chunk((segment, mark_large(payload, every=True), freed, None),
                                 self.slots)
        worker.freed = []
        return packed

    def post(self, worker: Worker, segment: Segment, rec: Record) -> None:
        worker.pending.append((segment, rec))
        outbox: Outbox = worker.outbox  # type: ignore[assignment]  # a worker the hub feeds
        waiting = bool(outbox)  # already registered for writability
        try:
            done = outbox.put(rec.frame)
        except BrokenPipeError:
            return  # the worker is gone; its sentinel reports it
        if not done and not waiting:
            self.selector.register(outbox.fd, selectors.EVENT_WRITE,
                                   partial(self.on_writable, worker))

    def on_writable(self, worker: Worker) -> None:
        outbox: Outbox = worker.outbox  # type: ignore[assignment]
        try:
            done = outbox.flush()
        except BrokenPipeError:
            done = True
        if done:
            self.selector.unregister(outbox.fd)

    # -- results in ------------------------------------------------------------------

    def on_result(self, worker: Worker) -> None:
        inbox = worker.inbox
        if inbox.eof:
            return
        for word, payload in inbox.read():
            self._on_frame(worker, word, payload)
        if inbox.eof:  # its sentinel will say why; stop selecting a closed pipe
            self.selector.unregister(inbox.fd)

    def _on_frame(self, worker: Worker, word: int, payload: bytes | bytearray) -> None:
        views = self.views
        views.last = None
        try:
            msg = loads(word, payload, views)
        except SlotGone:  # it died after writing: its sentinel is about to fire
            segment, rec = worker.pending.popleft()
            worker.proc.join(KILL_AFTER)
            self._fail(segment, rec, WorkerDied(segment.label, worker.proc.exitcode,
                                                short_repr(rec.first)))
            return
        except Exception as e:
            segment, rec = worker.pending.popleft()
            bad = SerializationError(f"the results of {segment.label} cannot be unpickled in "
                                     f"the calling process: {type(e).__name__}: {e}")
            bad.__cause__ = e
            self._fail(segment, rec, bad)
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
                self._release_slot(rec)
            segment.complete(rec, new(Result, msg), nbytes)
        elif type(msg) is Loaded:  # it has a huge chunk in hand: free its slot now
            for _, rec in worker.pending:
                if rec.slot == msg.slot:
                    self._release_slot(rec)
                    break
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
            self._fail(segment, rec, exc)

    def _fail(self, segment: Segment, rec: Record, exc: BaseException) -> None:
        self._release_slot(rec)
        segment.fail(rec, exc)

    def _release_slot(self, rec: Record) -> None:
        if rec.slot is not None:
            self.slots.release(rec.slot)  # type: ignore[union-attr]
            rec.slot = None

    # -- deaths ------------------------------------------------------------------------

    def on_death(self, worker: Worker) -> None:
        if worker not in self.workers:
            return
        self.on_result(worker)  # what it wrote before dying still counts
        worker.proc.join(KILL_AFTER)  # its sentinel fired: only the exit status is missing
        exitcode = worker.proc.exitcode
        self._forget(worker)
        group = worker.group
        pending = list(worker.pending)
        if isinstance(group, Pool):
            if not self.closing:
                group.replace(worker)
            # The chunk it was running fails; the ones queued behind it never
            # started, so another worker can take them.
            for i, (segment, rec) in enumerate(pending):
                if i == 0:
                    where = short_repr(rec.first)
                    if rec.n_in > 1:
                        where += f" or one of the {rec.n_in - 1} inputs after it in its chunk"
                    self._fail(segment, rec, WorkerDied(segment.label, exitcode, where))
                else:
                    self.post(group.pick(_PER_WORKER + 1) or group.workers[0], segment, rec)
            worker.pending.clear()
            return
        assert isinstance(group, Link)
        if worker in group.feeding:
            group.feeding.remove(worker)
        group.blame(worker, exitcode)
        label, code = group.death  # type: ignore[misc]
        last = group.workers[-1]
        if worker is not last and last in self.workers:
            # The linked workers after it finish what reached them, then see
            # end of file and end: the chunks still owed fail when the last does.
            return
        worker.pending.clear()
        for segment, rec in pending:
            where = short_repr(rec.first)
            if len(group.workers) > 1:
                where += (f" to {group.workers[0].label} or one after it (its chunk went "
                          f"through linked stages)")
            elif rec.n_in > 1:
                where += f" or one of the {rec.n_in - 1} inputs after it in its chunk"
            self._fail(segment, rec, WorkerDied(label, code, where))

    def _forget(self, worker: Worker) -> None:
        self.views.forget(worker.proc.pid)
        fds = [worker.inbox.fd, worker.proc.sentinel]
        if worker.outbox is not None:
            fds.append(worker.outbox.fd)
        for fd in fds:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        self.workers.remove(worker)
        if worker.task is not None:
            worker.task.close()
        worker.result.close()

    def busy(self) -> bool:
        """Whether any worker holds a chunk or has one waiting to be written."""
        return any(w.pending or w.outbox for w in self.workers)

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
