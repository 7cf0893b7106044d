"""The hub's side of worker processes: send chunks, read results, see deaths.

The hub holds the non-blocking ends of each worker's pipes (started in
:mod:`blpipe._hub.spawn`) and watches each result pipe and each process
sentinel in its ``select``, so a death is seen as it happens::

   Segment ─pack/post─► Procs ══ Task ══► worker ══ Result, Part, ... ══► on_result
      ▲                                                                     │ by type
      └──────────── complete / extend / fail ◄──────────────────────────────┘

Workers come in groups (:mod:`blpipe._hub.pool`): the pool, and links of
dedicated workers; a group decides what a death of one of its own means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from .._core.failures import broken, cannot_load, cannot_unpickle
from .._core.messages import (
    Broken,
    Credit,
    HookFailed,
    Loaded,
    LoadFailed,
    Part,
    Ready,
    Result,
    Resume,
    Role,
    State,
    Unloadable,
    new,
)
from .._core.shm import AVAILABLE, SlotGone, Slots, Views, mark_large
from .._core.stall import Call
from .._core.text import short_repr
from .._core.transport import READ_SIZE, Frame, Poller, dumps, dumps_chunk, loads
from ..errors import SerializationError, WorkerDied
from .flow import Failure
from .spawn import KILL_AFTER, Worker, start, stop
from .watchdog import calls

if TYPE_CHECKING:
    from .flow import Flow, Record, Sink
    from .segments import Segment

WATCH = 0.2  # seconds between looks at the clocks of workers running timed chunks


class Procs:
    """Starts worker processes, and handles what the ``select`` reports of them."""

    def __init__(self, ctx: Any, poller: Poller, parent_fds: list[int],
                 flow: Flow, sink: Sink) -> None:
        self.ctx = ctx
        self.poller = poller
        self.parent_fds = parent_fds  # what a child must not keep open under fork
        self.flow = flow
        self.sink = sink
        self.workers: list[Worker] = []
        self.slots = Slots() if AVAILABLE else None  # for large inputs
        self.views = Views()  # the workers' slots, for large results
        self.into = bytearray(READ_SIZE)  # what every worker's inbox reads into
        self.closing = False
        self.replicas = flow.recorder.replicas  # per replica figures, of stages with some
        self.unready = 0  # workers whose setup() has not yet ended
        self.setup_failed: BaseException | None = None  # the first setup() that raised

    def spawn(self, blob: bytes, label: str, role: Role = Role.ALONE, relay: Any = None,
              timed: bool = False, hooked: bool = False,
              replica: tuple[int, int] = (0, 1)) -> tuple[Worker, Any]:
        """Start a worker and watch it; see :func:`blpipe._hub.spawn.start`."""
        worker, task_w = start(self.ctx, blob, label, role, relay, timed, self.parent_fds,
                               self.into, hooked, replica)
        self.unready += hooked
        poller = self.poller
        poller.register(worker.result.fileno(), poller.READ, partial(self.on_result, worker))
        poller.register(worker.proc.sentinel, poller.READ, partial(self.on_death, worker))
        self.workers.append(worker)
        return worker, task_w

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
        outbox = worker.fed()
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
        outbox = worker.fed()
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
        outbox = worker.fed()
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
        if type(msg) is tuple:  # a Result: see blpipe._core.messages
            if not worker.pending:  # a linked worker's, for chunks that failed meanwhile
                return
            nbytes = self._received(worker, payload)
            segment, rec = worker.pending.popleft()
            if rec.slot is not None:
                self.release_slot(rec)
            counts = self.replicas.get(segment.first)
            if counts is not None:  # a stage with replicas: each one's figures
                fig = counts[worker.replica]
                fig[0] += rec.n_in
                fig[1] += msg[2][0][0]
            segment.complete(rec, new(Result, msg), nbytes)
            if worker.left == 0 and not (worker.pending or worker.paused):
                self.retire(worker)
        else:
            self._handlers[type(msg)](self, worker, msg, payload)

    def _received(self, worker: Worker, payload: bytes | bytearray) -> int:
        """A result's bytes, its shared memory slot's included; the slot goes
        back to the worker with its next task."""
        views = self.views
        if views.last is None:
            return len(payload)
        worker.freed.append(views.last)
        return len(payload) + views.nbytes

    def _on_part(self, worker: Worker, msg: Part, payload: bytes | bytearray) -> None:
        """A chunk still expanding: what it gave so far."""
        nbytes = self._received(worker, payload)
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

    def _on_loaded(self, worker: Worker, msg: Loaded, payload: bytes | bytearray) -> None:
        """It has a huge chunk in hand: free its slot now."""
        for _, rec in worker.pending:
            if rec.slot == msg.slot:
                self.release_slot(rec)
                break

    def _on_state(self, worker: Worker, msg: State, payload: bytes | bytearray) -> None:
        """A dedicated stage's state at a checkpoint's cut."""
        cut = self.flow.cut
        if cut is not None:
            cut.waiting.discard((msg.stage, msg.replica))
            if msg.error is not None:
                cut.failed = msg.error
            elif msg.stage in cut.keyed:  # a keyed stage's: one per replica
                assert msg.blob is not None
                cut.keyed[msg.stage].append(msg.blob)
            elif msg.blob is not None:
                cut.states[msg.stage] = msg.blob

    def _on_load_failed(self, worker: Worker, msg: LoadFailed,
                        payload: bytes | bytearray) -> None:
        self.flow.stop_all()
        self.sink.put_failure(Failure(cannot_load(worker.label, msg.traceback)))

    def _on_ready(self, worker: Worker, msg: Ready, payload: bytes | bytearray) -> None:
        """Its stages are set up."""
        self._settled(worker)
        self.flow.recorder.setup_seconds += msg.seconds
        self.flow.recorder.setups += 1

    def _on_hook_failed(self, worker: Worker, msg: HookFailed,
                        payload: bytes | bytearray) -> None:
        """A setup() or a teardown() raised: the run fails, before any output
        if no output has gone yet (see :meth:`blpipe._hub.loop.Hub.setting_up`)."""
        exc = msg.exception()
        if msg.hook == "setup":
            self._settled(worker)
            if self.setup_failed is None:
                self.setup_failed = exc
        self.flow.stop_all()
        self.sink.put_failure(Failure(exc))

    def _settled(self, worker: Worker) -> None:
        if not worker.ready:
            worker.ready = True
            self.unready -= 1

    def _on_failed(self, worker: Worker, msg: Unloadable | Broken,
                   payload: bytes | bytearray) -> None:
        """The chunk in hand fails: its task would not unpickle, or blpipe's own code failed."""
        if not worker.pending:
            return
        segment, rec = worker.pending.popleft()
        if type(msg) is Unloadable:
            exc: BaseException = cannot_unpickle(segment.label, short_repr(rec.first),
                                                 msg.traceback)
        else:
            exc = broken(worker.label, msg.traceback)
        self.fail(segment, rec, exc)

    # what each message but a Result means: see blpipe._core.messages
    _handlers: ClassVar[dict[type, Callable[[Procs, Worker, Any, bytes | bytearray], None]]] = {
        Part: _on_part, Loaded: _on_loaded, State: _on_state, LoadFailed: _on_load_failed,
        Unloadable: _on_failed, Broken: _on_failed, Ready: _on_ready,
        HookFailed: _on_hook_failed}

    def release_slot(self, rec: Record) -> None:
        if rec.slot is not None and self.slots is not None:
            self.slots.release(rec.slot)
            rec.slot = None

    # -- deaths ------------------------------------------------------------------------

    def retire(self, worker: Worker) -> None:
        """It has taken all the calls it may and finished them: end of file
        on its task pipe lets it exit."""
        self._drop(worker.fed().fd)  # a pool worker's
        worker.task.close()
        worker.task = worker.outbox = None

    def on_death(self, worker: Worker) -> None:
        if worker not in self.workers:
            return
        self.on_result(worker)  # what it wrote before dying still counts
        worker.proc.join(KILL_AFTER)  # its sentinel fired: only the exit status is missing
        self._forget(worker)
        if not worker.ready:  # it died in a setup(): another would die the same way
            self._settled(worker)
            exc = WorkerDied(worker.label, worker.proc.exitcode, "none (it died in setup())")
            if self.setup_failed is None:
                self.setup_failed = exc
            self.flow.stop_all()
            self.sink.put_failure(Failure(exc))
        assert worker.group is not None
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
        """Each busy worker's call in hand; see :func:`blpipe._hub.watchdog.calls`."""
        return calls(self.workers, now, usual)

    def busy(self) -> bool:
        """Whether any worker holds a chunk or has one waiting to be written."""
        return any(w.pending or w.unsent or w.outbox for w in self.workers)

    def holds(self) -> bool:
        """Whether a worker holds a paused expansion: it goes on once there is room."""
        return any(w.paused for w in self.workers)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, graceful: bool) -> list[HookFailed]:
        """Stop every worker; release the shared memory. Returns the failed
        teardowns of a ``graceful`` stop."""
        self.closing = True
        try:
            return stop(list(self.workers), graceful)
        finally:
            self.workers.clear()
            self.views.close()
            if self.slots is not None:
                self.slots.close()
