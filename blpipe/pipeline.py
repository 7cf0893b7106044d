"""``Pipeline``: stages run concurrently in processes, outputs in input order.

How it runs
-----------
The stages are cut into *segments*. A run of pool stages with one
``batch_size`` (a window only on its first stage) is fused into one segment,
so an item crosses a process boundary once per run, not once per stage. Each
stateful stage has a dedicated process; a run of them with one ``batch_size``
is one segment whose processes are linked, each writing its outputs straight
into the next one's task pipe, so a chunk leaves the caller once and comes
back once. A run of master stages is one segment that runs in the caller.

The calling process is the hub, and it has no threads: the generator returned
by ``apply`` pulls input, cuts it into chunks within each segment's
``batch_size`` and sends them to worker pipes, reorders results, and waits
with one ``select`` on every result pipe and every process sentinel, so a
dead worker is seen as soon as it dies. Writes to workers never block
(:class:`~blpipe._transport.Outbox`), so the hub cannot deadlock against a
worker blocked on writing a large result.

A failure (a stage's exception, a dead worker, the input iterator raising)
travels down the stream as a marker in its place, so every output of earlier
inputs is yielded before it is raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import pickle
import selectors
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from itertools import islice
from time import perf_counter
from typing import Any

import multiprocess
from multiprocess.connection import wait as wait_sentinels

from ._adaptive import Governor
from ._base import PipelineBase, add_note, annotate, settle
from ._chain import Chain, StageFailure, sliding
from ._executors import Lane, Waker, check_executor, lost, width
from ._shm import AVAILABLE, BIG, SlotGone, Slots, Views, mark_large, tune_malloc
from ._transport import (
    HEADER,
    PROTOCOL,
    Frame,
    Inbox,
    Outbox,
    dumps,
    dumps_chunk,
    dumps_stage,
    loads,
)
from ._worker import RemoteError, run_chunk, worker_main
from .errors import BrokenPipeline, RemoteTraceback, SerializationError, WorkerDied, formatted
from .stages import Placement, StageSpec, short_repr

_PER_WORKER = 2  # chunks queued per worker: one running, one ready behind it
_GRACE = 1.0     # seconds an idle worker gets to exit on end of file after a normal run
_KILL_AFTER = 0.5  # seconds between SIGTERM and SIGKILL, so everything is gone within 1 s
_CHUNK_WORK = 0.0002  # seconds of stage work a chunk aims at
# On a user's executor a round trip costs milliseconds (Dask batches its
# messages every 10 ms): larger chunks, and more of them queued per worker.
_CHUNK_WORK_REMOTE = 0.02
_PER_WORKER_REMOTE = 3
_PIPE_SIZE = 1 << 20
_TOP_UP = 0.001  # a consumer step longer than this is followed by a poll of the workers


class _Failure:
    """An exception travelling down the stream in place of an item."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Record:
    """A chunk in flight: ``outs`` is set (``None`` dropped) once its results are in.

    ``slot`` is the shared memory slot that holds its large inputs, if any.
    ``start`` is the index of its first input in its segment's stream, and
    ``offset`` how many of its inputs complete no window; with them, an error
    in ``skipped`` (at an index of ``aligned``, the outputs before ``None``
    is dropped) is placed in the stream when the chunk is passed on.
    """

    __slots__ = ("n_in", "first", "frame", "slot", "outs", "pos", "failure", "start", "offset",
                 "skipped", "aligned", "nbytes")

    def __init__(self, n_in: int, first: Any, frame: Frame | None = None,
                 outs: list[Any] | None = None, failure: _Failure | None = None,
                 slot: int | None = None) -> None:
        self.n_in = n_in
        self.first = first
        self.frame = frame
        self.slot = slot
        self.outs = outs
        self.pos = 0
        self.failure = failure
        self.start = 0
        self.offset = 0
        self.skipped: list[Any] | None = None
        self.aligned: list[Any] | None = None
        self.nbytes = 0  # serialized: its inputs', then its results' once they are in


class _Shown:
    """Stands for an item in messages (its ``repr``) without keeping it alive."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Worker:
    """A worker process as the hub sees it: its pipes and the chunks it holds."""

    __slots__ = ("proc", "task", "result", "outbox", "inbox", "pending", "label", "pool",
                 "freed")

    def __init__(self, proc: Any, task: Any, result: Any, label: str, pool: bool) -> None:
        self.proc = proc
        self.task = task  # None for a linked worker, which the one before it feeds
        self.result = result
        self.outbox = Outbox(task.fileno()) if task is not None else None
        self.inbox = Inbox(result.fileno())
        self.pending: deque[tuple[_ProcessNode, _Record]] = deque()
        self.label = label
        self.pool = pool
        self.freed: list[tuple[int, int]] = []  # its result slots read since its last task


class _Sink:
    """Outputs ready for the consumer, kept in the chunks they came in."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: deque[list[Any]] = deque()
        self.held = 0  # items in chunks, not yet handed to the consumer
        self.failure: _Failure | None = None

    def room(self) -> int:
        return self.cap - self.held

    def put(self, items: list[Any]) -> None:
        self.chunks.append(items)
        self.held += len(items)

    def put_failure(self, failure: _Failure) -> None:
        if self.failure is None:  # the first is the earliest in the stream
            self.failure = failure


class _MasterNode:
    """Master stages, run synchronously in the caller as items arrive."""

    def __init__(self, run: _Run, index: int, first: int, chain: Chain, nxt: Any) -> None:
        self.run = run
        self.index = index
        self.first = first  # its first stage's index
        self.chain = chain
        self.next = nxt
        self.dead = False

    def room(self) -> int:
        return 0 if self.dead else int(self.next.room())

    def put(self, items: list[Any]) -> None:
        outputs, failure, stats, skipped = self.chain.run(items)
        if skipped:
            outputs, over = settle(self.run.log, self.run.rec.n_in, self.first, outputs, skipped)
            failure = over or failure
        outs = [y for y in outputs if y is not None]
        self.run.rec.add(self.first, stats, len(items), len(outs), 0.0)
        if outs:
            self.next.put(outs)
        if failure is not None:
            self.run.stop(self.index)
            self.put_failure(_Failure(annotate(failure)))

    def put_failure(self, failure: _Failure) -> None:
        if not self.dead:  # a later failure changes nothing
            self.dead = True
            self.next.put_failure(failure)


class _ProcessNode:
    """A segment that runs in worker processes: the pool's or a dedicated one."""

    def __init__(self, run: _Run, index: int, seg: int, first: int, label: str, cap: int,
                 chunks: tuple[int, int], window: int | None, workers: list[Any],
                 nxt: Any, ordered: bool = True) -> None:
        self.run = run
        self.index = index
        self.seg = seg
        self.first = first  # its first stage's index
        self.label = label
        self.cap = cap
        self.min_chunk, self.max_chunk = chunks
        self.chunk = self.min_chunk
        self.per_item: float | None = None  # seconds of stage work per input, smoothed
        self.window = window
        self.workers = workers  # worker processes, or lanes of an executor
        self.next = nxt
        self.ordered = ordered
        # On an executor: submits a payload, and whether errors come back as
        # StageFailure (threads of this process) rather than RemoteError.
        self.submit: Callable[[list[Any]], Future[Any]] | None = None
        self.local = False
        self.work = _CHUNK_WORK
        self.depth = _PER_WORKER
        self.in_buf: list[Any] = []  # at most cap items: taking from the front is cheap
        self.sent = 0  # inputs sent so far: where the next chunk starts in the stream
        self.item_bytes: float | None = None  # serialized bytes per input item, smoothed
        self.huge = False  # items of over BIG bytes: one per chunk, so few copies coexist
        self.records: deque[_Record] = deque()
        self.inflight = 0
        self.history: deque[Any] | None = deque(maxlen=window - 1) if window else None
        self.upstream_failure: _Failure | None = None
        self.closed = False  # takes no more input
        # A dedicated worker of it died: which stage's, and how. Its state is
        # lost, so whatever comes next fails.
        self.death: tuple[str, int | None] | None = None
        self.link: list[_Worker] = []  # its dedicated workers, the first fed by the hub
        # statistics: written here only, read by statistics() from any thread
        self.peak = 0
        self.starved = 0.0
        self.blocked = 0.0
        self.state = 0  # at the last tick: 1 starved, 2 blocked

    def room(self) -> int:
        if self.closed:
            return 0
        return self.cap - len(self.in_buf) - self.inflight

    def put(self, items: list[Any]) -> None:
        self.in_buf.extend(items)

    def put_failure(self, failure: _Failure) -> None:
        if not self.closed:  # once closed, anything later is later in the stream
            self.upstream_failure = failure
            self.closed = True

    def observe(self, n_in: int, seconds: float) -> None:
        """Size chunks to about ``_CHUNK_WORK`` of stage work, within the bounds.

        The hub's cost is per chunk, so cheap items want large chunks; costly
        ones want small chunks, spread over every worker.
        """
        if n_in:
            per = seconds / n_in
            self.per_item = per if self.per_item is None else 0.7 * self.per_item + 0.3 * per
            want = math.ceil(self.work / max(self.per_item, 1e-9))
            self.chunk = 1 if self.huge else max(self.min_chunk, min(self.max_chunk, want))

    def idle(self) -> bool:
        return not (self.in_buf or self.records or self.upstream_failure)

    def release(self) -> bool:
        """Hand finished outputs downstream, as far as it has room: in order, or
        under ``ordered=False`` every finished chunk, whatever its place.

        A failure waits for every chunk before it either way, so the outputs
        of earlier inputs all come out before it is raised.
        """
        moved = False
        records = self.records
        nxt = self.next
        ordered = self.ordered
        i = 0  # stays 0 in order
        while i < len(records):
            rec = records[i]
            outs = rec.outs
            if outs is None:
                if ordered:
                    break
                i += 1
                continue
            if rec.skipped:
                outs = self._settle(rec)
            left = len(outs) - rec.pos
            if left:
                room = nxt.room()
                if room <= 0:
                    break
                take = min(left, room)
                nxt.put(outs[rec.pos:rec.pos + take] if rec.pos or take < left else outs)
                rec.pos += take
                moved = True
                if take < left:
                    self._passed_on(rec, take, left)
                    break
            if rec.failure is not None and i:
                i += 1  # raised once every chunk before it is out
                continue
            del records[i]
            self.inflight -= rec.n_in
            self.run.nbytes -= rec.nbytes
            moved = True
            if rec.failure is not None:
                nxt.put_failure(rec.failure)
                self._close_failed()
                break
        return moved

    def _passed_on(self, rec: _Record, take: int, left: int) -> None:
        """Part of a chunk's results went on: their share of its bytes is
        counted downstream from now on, not here as well."""
        share = rec.nbytes * take // left
        rec.nbytes -= share
        self.run.nbytes -= share

    def _close_failed(self) -> None:
        """It passed a failure on: what it still holds is later in the stream."""
        self.closed = True
        self.run.nbytes -= sum(r.nbytes for r in self.records)
        self.records.clear()
        self.in_buf.clear()
        self.inflight = 0

    def _settle(self, rec: _Record) -> list[Any]:
        """Count the errors its stage went on past in this chunk, in stream
        order: record them, or at one over budget cut the chunk there and fail."""
        log = self.run.log
        stage = self.first  # a stage with on_error is never fused: it is the first
        for at, _, local, err in rec.skipped:  # type: ignore[union-attr]
            over = not log.admit(stage)
            if over or log.wants(stage):
                if self.local:
                    item, exc = err
                    exc = annotate(StageFailure(self.label, item, exc))
                    where = short_repr(item)
                    tb = formatted(exc)
                else:
                    exc, where, tb = _rebuild(err), err[1], err[3]
                if over:
                    add_note(exc, log.over_budget(stage))
                    rec.outs = [y for y in rec.aligned[:at] if y is not None]  # type: ignore
                    rec.failure = _Failure(exc)
                    self.run.stop(self.index)
                    break
                log.record(stage, rec.start + rec.offset + local, where, exc, tb)
        rec.skipped = rec.aligned = None
        return rec.outs  # type: ignore[return-value]

    def dispatch(self, final: bool) -> bool:
        """Send chunks to workers: full ones while workers can queue them; with
        ``final``, also a partial one to a worker that would otherwise idle.

        A partial chunk goes only when upstream has nothing more to give: the
        segment has room, or takes no more input. A full segment waits for its
        results to free room instead: sending what trickles in then would
        lock the stream into one-item round trips.
        """
        if self.index <= self.run.stop_upto:
            return False
        if self.death is not None and self.in_buf:
            first = self.in_buf[0]
            self.in_buf.clear()
            label, exitcode = self.death
            died = WorkerDied(label, exitcode, short_repr(first) + " (the next input after the "
                              "death: the stage's state was lost)")
            self._track(_Record(1, first, outs=[], failure=_Failure(died)))
            self.run.stop(self.index)
            return True
        sent = False
        in_buf = self.in_buf
        while in_buf:
            full = len(in_buf) >= self.chunk
            if not (full or (final and (self.closed or self.room() > 0))):
                break
            worker = self._pick(self.depth if full else 1)
            if worker is None:
                break
            n = min(len(in_buf), self.chunk)
            if n > 1 and self.item_bytes is None and sys.getsizeof(in_buf[0]) > BIG:
                n = 1  # sizes not yet seen, and a huge first item: it goes alone
            items = in_buf[:n]
            del in_buf[:n]
            self._send(worker, items)
            sent = True
        if not in_buf and self.upstream_failure is not None:
            self._track(_Record(0, None, outs=[], failure=self.upstream_failure))
            self.upstream_failure = None
            sent = True
        return sent

    def _pick(self, limit: int) -> Any:
        best = None
        for w in self.workers:
            n = len(w.pending)
            if n < limit and (best is None or n < len(best.pending)):
                best = w
                if not n:
                    break
        return best

    def _send(self, worker: Any, items: list[Any]) -> None:
        payload = items
        start = self.sent
        self.sent += len(items)
        if self.history is not None:
            payload = [*self.history, *items]
            self.history.extend(items)
            if len(payload) < self.window:  # type: ignore[operator]
                # not a full window yet: nothing to compute, but the inputs count
                self.run.rec.add(self.first, [[0.0, 0, 0]], len(items), 0, 0.0)
                return
        if self.submit is not None:
            rec = _Record(len(items), items[0])
        else:
            try:
                frame, slot, nbytes = _pack(self.seg, payload, worker.freed, self.run.slots)
            except Exception:
                self._send_unpicklable(worker, items, payload)
                return
            worker.freed = []
            rec = _Record(len(items), items[0], frame, slot=slot)
            if slot is not None:  # its first item is large: keep only what messages need
                rec.first = _Shown(short_repr(items[0]))
                tune_malloc()
            rec.nbytes = nbytes
            run = self.run
            if slot is not None or run.budget is not None:  # sizes matter: smooth them
                per = nbytes / len(items)
                self.item_bytes = per if self.item_bytes is None else \
                    0.7 * self.item_bytes + 0.3 * per
                if (self.item_bytes > BIG) is not self.huge:
                    self.huge = not self.huge
                    self.chunk = 1 if self.huge else self.min_chunk
            run.nbytes += nbytes
            if run.nbytes > run.peak_bytes:
                run.peak_bytes = run.nbytes
        rec.start = start
        if self.window:  # the windows of this chunk end at its inputs after these
            rec.offset = len(items) - (len(payload) - self.window + 1)
        if self.submit is not None:
            self._track(rec)
            self.run.submit(worker, self, rec, payload)
        else:
            self._track(rec, worker)

    def _track(self, rec: _Record, worker: _Worker | None = None) -> None:
        """Count a chunk against the bound, in order; send it if it has a worker."""
        self.records.append(rec)
        self.inflight += rec.n_in
        if self.inflight > self.peak:
            self.peak = self.inflight
        if worker is not None:
            self.run.send(worker, self, rec)

    def _send_unpicklable(self, worker: _Worker, items: list[Any], payload: list[Any]) -> None:
        """Send what pickles before the first item that does not, then fail there."""
        for j, x in enumerate(items):
            try:
                dumps(x)
            except Exception as why:
                bad, err = j, why
                break
        else:  # no single item is at fault; report the chunk
            bad, err = 0, TypeError("the chunk as a whole cannot be pickled")
        # The segment stops at the bad item, so its window history no longer matters.
        if bad:
            frame = dumps((self.seg, payload[:len(payload) - len(items) + bad], []))
            self._track(_Record(bad, items[0], frame), worker)
        exc = SerializationError(f"input {short_repr(items[bad])} for {self.label} cannot be "
                                 f"sent to its worker process: {type(err).__name__}: {err}")
        exc.__cause__ = err
        self._track(_Record(1, items[bad], outs=[], failure=_Failure(exc)))
        self.run.stop(self.index)


class _Run:
    """One ``apply``: the processes, the segments and the event loop."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.ctx = pipeline._ctx
        self.fork = self.ctx.get_start_method() == "fork"
        self.selector = selectors.DefaultSelector()
        self.workers: list[_Worker] = []
        self.pool: list[_Worker] = []
        self.active_pool: list[_Worker] = []  # what pool stages send to: the first few
        self.governor: Governor | None = None
        self.parent_fds: list[int] = [self.selector.fileno()]
        self.stop_upto = -1
        self.closing = False
        self.src_done = False
        self.it: Iterator[Any] | None = None
        self.pool_blob = pipeline._pool_blob
        self.pool_label = pipeline._pool_label
        self.rec = pipeline._recorder
        self.log = pipeline.errors
        self.last_tick = time.monotonic()
        self.slots = Slots() if AVAILABLE else None  # for large inputs
        self.views = Views()  # the workers' slots, for large results
        self.executor: Executor | None = pipeline._executor
        self.owned: list[ThreadPoolExecutor] = []  # thread stages' executors
        self.futures: set[Future[Any]] = set()
        self.waker: Waker | None = None
        self.budget: int | None = pipeline._max_bytes
        self.nbytes = 0  # serialized bytes of the chunks in flight, and the most seen
        self.peak_bytes = 0
        try:
            self._build(pipeline)
        except BaseException:
            self.close(graceful=False)
            raise

    # -- setup ---------------------------------------------------------------

    def _build(self, pipeline: Pipeline) -> None:
        segments = pipeline._segments
        last = segments[-1][1][-1] if segments else None
        self.sink = _Sink(last.batch_size if last else 64)
        if any(kind is Placement.THREAD for kind, *_ in segments) or (
                self.executor is not None and self.pool_blob is not None):
            self.waker = Waker()
            self.parent_fds.append(self.waker.fd)
            self.selector.register(self.waker.fd, selectors.EVENT_READ, ("wake", None))
        lanes: list[Lane] = []
        if self.executor is not None:
            lanes = [Lane() for _ in range(pipeline._pool_size)]
        elif self.pool_blob is not None:
            for _ in range(pipeline._pool_size):
                self.pool.append(self._spawn(self.pool_blob, self.pool_label, pool=True)[0])
            self.active_pool[:] = self.pool
            if pipeline._auto:
                own = [s.index for s in pipeline.stages
                       if s.placement in (Placement.DEDICATED, Placement.MASTER)]
                self.governor = Governor(len(self.pool), own, self.rec.busy, time.monotonic())
        nxt: Any = self.sink
        nodes: list[Any] = []
        n_pool = pipeline._pool_size
        for index in range(len(segments) - 1, -1, -1):
            kind, specs, seg, blob = segments[index]
            label = " + ".join(s.label for s in specs)
            cap = specs[0].batch_size
            first = specs[0].index
            for s in specs:
                self.rec.segment[s.index] = index
            if kind is Placement.MASTER:
                node: Any = _MasterNode(self, index, first, Chain(
                    [(s.label, s.func, s.window, s.on_error != "raise") for s in specs]), nxt)
            elif kind is Placement.POOL:
                # from every worker with one chunk queued, to two chunks in all
                chunks = (max(1, cap // (2 * n_pool)), max(1, cap // 2))
                node = _ProcessNode(self, index, seg, first, label, cap, chunks,
                                    specs[0].window, lanes or self.active_pool, nxt,
                                    specs[0].ordered)
                if self.executor is not None:
                    node.submit = _remote(self.executor, pipeline._pool_key,
                                          self.pool_blob, seg)  # type: ignore[arg-type]
                    node.work, node.depth = _CHUNK_WORK_REMOTE, _PER_WORKER_REMOTE
            elif kind is Placement.THREAD:
                s = specs[0]
                n = s.threads or 1
                ex = ThreadPoolExecutor(n, thread_name_prefix=f"blpipe {label}")
                self.owned.append(ex)
                node = _ProcessNode(self, index, seg, first, label, cap,
                                    (max(1, cap // (2 * n)), max(1, cap // 2)), s.window,
                                    [Lane() for _ in range(n)], nxt, s.ordered)
                node.submit = _local(ex, Chain([(s.label, s.func, None, s.on_error != "raise")]),
                                     s.window)
                node.local = True
            else:
                link = self._spawn_link(blob, specs)  # type: ignore[arg-type]
                # The link holds what its stages would hold apart, the sum of their
                # batch_size, in chunks of which one runs in each worker, one waits.
                cap *= len(link)
                size = max(1, cap // (len(link) + 1))
                node = _ProcessNode(self, index, seg, first, label, cap, (size, size), None,
                                    [link[0]], nxt)
                node.link, node.depth = link, len(link) + 1
            nodes.append(node)
            nxt = node
        nodes.reverse()
        self.nodes = nodes
        self.by_segment = dict(enumerate(nodes))
        self.process_nodes = [n for n in reversed(nodes) if isinstance(n, _ProcessNode)]
        self.first = nodes[0] if nodes else self.sink
        # input is pulled a chunk of the first process segment at a time
        self.pull_from: _ProcessNode | None = (self.process_nodes[-1] if self.process_nodes
                                               else None)

    def _spawn_link(self, blobs: list[bytes], specs: list[StageSpec]) -> list[_Worker]:
        """The dedicated workers of adjacent stateful stages, each writing its
        outputs straight into the next one's task pipe; the last sends the
        results here. All share one queue of chunks: what is sent to the
        first comes back from the last, in order."""
        n = len(blobs)
        link: list[_Worker] = []
        relay = None  # the write end of the next worker's task pipe
        for i in range(n - 1, -1, -1):
            worker, feeder = self._spawn(blobs[i], specs[i].label, pool=False, relay=relay,
                                         linked=n > 1, fed=i == 0)
            if relay is not None:
                relay.close()  # the worker before it holds it now: its exit is an EOF
            relay = feeder
            link.append(worker)
        link.reverse()
        for w in link[1:]:
            w.pending = link[0].pending
        return link

    def _spawn(self, blob: bytes, label: str, pool: bool, relay: Any = None,
               linked: bool = False, fed: bool = True) -> tuple[_Worker, Any]:
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
        worker = _Worker(proc, task_w if fed else None, result_r, label, pool)
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
        self.selector.register(result_r.fileno(), selectors.EVENT_READ, ("result", worker))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, ("death", worker))
        self.workers.append(worker)
        return worker, None if fed else task_w

    # -- the stream ------------------------------------------------------------

    def pump(self) -> None:
        """Move everything that can move: release, pull input, dispatch."""
        nodes = self.process_nodes
        while True:
            moved = False
            for node in nodes:
                if node.release():
                    moved = True
            if self.pull():
                moved = True
            for node in nodes:
                if node.dispatch(False):
                    moved = True
            if not moved:  # stalled on full chunks: send partial ones, then go on
                for node in nodes:
                    if node.dispatch(True):
                        moved = True
                if not moved:
                    break

    def pull(self) -> bool:
        if self.src_done or self.stop_upto >= 0:
            return False
        room = min(self.first.room(), self.pull_from.chunk if self.pull_from else 64)
        if room <= 0:
            return False
        start = perf_counter()
        if self.budget is None:
            raw = list(islice(self.it, room))  # type: ignore[arg-type]
            ended = len(raw) < room
        else:
            raw, ended = self._take_within_budget(room)
        self.rec.input += perf_counter() - start
        if not raw and not ended:
            return False
        failure = None
        if raw and type(raw[-1]) is _Failure:  # the input's error ends it, full batch or not
            failure = raw.pop()
            self.src_done = True
        elif ended:
            self.src_done = True
        batch = [x for x in raw if x is not None]
        if batch:
            self.first.put(batch)
        if failure is not None:
            self.first.put_failure(failure)
        return True

    def _take_within_budget(self, room: int) -> tuple[list[Any], bool]:
        """Up to ``room`` items that the byte budget has room for, and whether
        the input ended.

        Nothing is taken while what was pulled last is not yet sent (and so
        counted). Each item is reckoned at ``sys.getsizeof`` (the whole buffer
        for bytes, bytearray, str and NumPy arrays) or at the recent average
        serialized size per item, whichever is larger, and items are taken
        until the room left is used up: the last one may pass it. With
        nothing in flight one is always taken, so that an item larger than
        the budget still goes alone.
        """
        first = self.pull_from
        if first is not None and first.in_buf:
            return [], False
        left: float = self.budget - self.nbytes  # type: ignore[operator]
        if left <= 0 and self.nbytes:
            return [], False
        avg = (first.item_bytes if first is not None else None) or 0.0
        raw: list[Any] = []
        it: Iterator[Any] = self.it  # type: ignore[assignment]
        while len(raw) < room and (left > 0 or not raw):
            x = next(it, _END)
            if x is _END:
                return raw, True
            raw.append(x)
            left -= max(sys.getsizeof(x), avg)
        return raw, False

    def finished(self) -> bool:
        return self.src_done and all(n.idle() for n in self.process_nodes)

    def stop(self, index: int) -> None:
        """A failure at segment ``index``: what is upstream of it is later in the
        stream and no longer needed, so stop feeding it."""
        self.stop_upto = max(self.stop_upto, index)

    def _activate(self) -> None:
        """Pool stages send to the first ``active`` workers; the others finish
        what they hold and wait."""
        n = self.governor.active if self.governor is not None else len(self.pool)
        self.active_pool[:] = self.pool[:n]

    def tick(self) -> None:
        """Sample which segments wait, at most once a millisecond.

        The time since the last sample is put down to what each segment was
        doing then: starved (nothing to do while more input may come) or
        blocked (a finished chunk held back by a full downstream bound).
        """
        now = time.monotonic()
        dt = now - self.last_tick
        if dt < 0.001:
            return
        self.last_tick = now
        if self.governor is not None and self.governor.update(now):
            self._activate()
        more = not self.src_done and self.stop_upto < 0
        for node in self.nodes:
            if not isinstance(node, _ProcessNode):
                continue
            if node.state == 1:
                node.starved += dt
            elif node.state == 2:
                node.blocked += dt
            records = node.records
            busy = bool(node.in_buf or records)
            if records and records[0].outs is not None:
                node.state = 2
            elif not busy and more and not node.closed:
                node.state = 1
            else:
                node.state = 0
            more = more or busy

    # -- events ------------------------------------------------------------------

    def send(self, worker: _Worker, node: _ProcessNode, rec: _Record) -> None:
        worker.pending.append((node, rec))
        outbox: Outbox = worker.outbox  # type: ignore[assignment]  # a worker the hub feeds
        waiting = bool(outbox)  # already registered for writability
        try:
            done = outbox.put(rec.frame)  # type: ignore[arg-type]
        except BrokenPipeError:
            return  # the worker is gone; its sentinel reports it
        if not done and not waiting:
            self.selector.register(outbox.fd, selectors.EVENT_WRITE, ("write", worker))

    def submit(self, lane: Lane, node: _ProcessNode, rec: _Record, payload: list[Any]) -> None:
        """Send a chunk to an executor; its future wakes the hub when done."""
        try:
            future = node.submit(payload)  # type: ignore[misc]
        except Exception as e:
            self._fail(node, rec, lost(e, node.label, short_repr(rec.first)))
            return
        lane.pending.append(rec)
        self.futures.add(future)
        self.waker.watch(future, (lane, node, rec))  # type: ignore[union-attr]

    def _on_future(self, tag: tuple[Lane, _ProcessNode, _Record], future: Future[Any]) -> None:
        lane, node, rec = tag
        lane.pending.remove(rec)
        self.futures.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._fail(node, rec, lost(exc, node.label, short_repr(rec.first)))
            return
        result = future.result()
        if isinstance(result[0], str):  # ("broken", traceback)
            broken = BrokenPipeline(f"blpipe itself failed in the task running {node.label} "
                                    f"(its traceback is above); this is a bug in blpipe, not "
                                    f"in the stage: please report it")
            broken.__cause__ = RemoteTraceback(result[1])
            self._fail(node, rec, broken)
            return
        outputs, error, stats, seconds, skipped = result
        node.observe(rec.n_in, sum(x[0] for x in stats))
        if skipped:
            rec.skipped = [(at, step, local, (item, exc)) for at, step, local, item, exc
                           in skipped] if node.local else skipped
            rec.aligned = outputs
        rec.outs = [y for y in outputs if y is not None]
        self.rec.add(node.first, stats, rec.n_in, len(rec.outs), seconds)
        if error is not None:
            rec.failure = _Failure(annotate(error) if node.local else _rebuild(error))
            self.stop(node.index)

    def wait(self, timeout: float | None) -> None:
        if timeout is None and not self.futures and not any(w.pending or w.outbox
                                                             for w in self.workers):
            raise BrokenPipeline("internal error: blpipe has nothing in flight yet the "
                                 "stream is not finished; please report this with the stages")
        for key, _ in self.selector.select(timeout):
            kind, worker = key.data
            if kind == "result":
                self._read(worker)
            elif kind == "wake":
                for tag, future in self.waker.drain():  # type: ignore[union-attr]
                    self._on_future(tag, future)
            elif kind == "write":
                try:
                    done = worker.outbox.flush()
                except BrokenPipeError:
                    done = True
                if done:
                    self.selector.unregister(worker.outbox.fd)
            elif worker in self.workers:
                self._on_death(worker)

    def _read(self, worker: _Worker) -> None:
        inbox = worker.inbox
        if inbox.eof:
            return
        for word, payload in inbox.read():
            self._on_frame(worker, word, payload)
        if inbox.eof:  # its sentinel will say why; stop selecting a closed pipe
            self.selector.unregister(inbox.fd)

    def _on_frame(self, worker: _Worker, word: int, payload: bytes | bytearray) -> None:
        views = self.views
        views.last = None
        try:
            msg = loads(word, payload, views)
        except SlotGone:  # it died after writing: its sentinel is about to fire
            node, rec = worker.pending.popleft()
            worker.proc.join(_KILL_AFTER)
            self._fail(node, rec, WorkerDied(node.label, worker.proc.exitcode,
                                             short_repr(rec.first)))
            return
        except Exception as e:
            node, rec = worker.pending.popleft()
            exc = SerializationError(f"the results of {node.label} cannot be unpickled in the "
                                     f"calling process: {type(e).__name__}: {e}")
            exc.__cause__ = e
            self._fail(node, rec, exc)
            return
        if msg[0] == "loaded":  # it has a huge chunk in hand: free its slot now
            for _, rec in worker.pending:
                if rec.slot == msg[1]:
                    self._release_slot(rec)
                    break
            return
        if msg[0] == "init":
            broken = BrokenPipeline(f"{worker.label} could not be loaded in its worker "
                                    f"process; see the traceback above. Under spawn and "
                                    f"forkserver, stages must be importable or pickle by value")
            broken.__cause__ = RemoteTraceback(msg[1])
            self.stop(len(self.nodes))
            self.sink.put_failure(_Failure(broken))
            return
        if msg[0] == "broken":  # blpipe's own code failed in the worker, not the stage
            broken = BrokenPipeline(f"blpipe itself failed in the worker process running "
                                    f"{worker.label} (its traceback is above); this is a bug "
                                    f"in blpipe, not in the stage: please report it")
            broken.__cause__ = RemoteTraceback(msg[1])
            if worker.pending:
                node, rec = worker.pending.popleft()
                self._fail(node, rec, broken)
            else:
                self.stop(len(self.nodes))
                self.sink.put_failure(_Failure(broken))
            return
        if not worker.pending:  # a linked worker's, for chunks that failed meanwhile
            return
        nbytes = len(payload)
        if views.last is not None:
            worker.freed.append(views.last)
            nbytes += views.nbytes
        node, rec = worker.pending.popleft()
        self.nbytes += nbytes - rec.nbytes
        rec.nbytes = nbytes
        if self.nbytes > self.peak_bytes:
            self.peak_bytes = self.nbytes
        _, outputs, error, stats, seconds, skipped = msg
        node.observe(rec.n_in, stats[0][0] if len(stats) == 1 else sum(x[0] for x in stats))
        self._done(rec)
        if skipped:
            rec.skipped, rec.aligned = skipped, outputs
        rec.outs = [y for y in outputs if y is not None]
        self.rec.add(node.first, stats, rec.n_in, len(rec.outs), seconds)
        if error is not None:
            rec.failure = _Failure(_rebuild(error))
            self.stop(node.index)

    def _done(self, rec: _Record) -> None:
        rec.frame = None
        self._release_slot(rec)

    def _release_slot(self, rec: _Record) -> None:
        if rec.slot is not None:
            self.slots.release(rec.slot)  # type: ignore[union-attr]
            rec.slot = None

    def _fail(self, node: _ProcessNode, rec: _Record, exc: BaseException) -> None:
        self._done(rec)
        rec.outs = []
        rec.failure = _Failure(exc)
        self.stop(node.index)

    def _on_death(self, worker: _Worker) -> None:
        self._read(worker)  # what it wrote before dying still counts
        worker.proc.join(_KILL_AFTER)  # its sentinel fired: only the exit status is missing
        exitcode = worker.proc.exitcode
        self._forget(worker)
        label = worker.label
        if worker.pool and not self.closing:
            self.pool.remove(worker)
            # Earlier items may still need the pool (downstream segments): keep its size.
            self.pool.append(self._spawn(self.pool_blob, self.pool_label,  # type: ignore[arg-type]
                                         pool=True)[0])
            self._activate()
        elif not worker.pool:
            node = next(n for n in self.process_nodes if worker in n.link)
            node.workers = [w for w in node.workers if w is not worker]
            if node.death is None or node.death[1] == 0:
                node.death = _blame(node.link, worker, exitcode)
            label, exitcode = node.death
            last = node.link[-1]
            if worker is not last and last in self.workers:
                # The linked workers after it finish what reached them, then see
                # end of file and end: the chunks still owed fail when the last does.
                return
        pending = list(worker.pending)
        worker.pending.clear()
        for i, (node, rec) in enumerate(pending):
            if i == 0 or not worker.pool:
                where = short_repr(rec.first)
                if len(node.link) > 1:
                    where += (f" to {node.link[0].label} or one after it (its chunk went "
                              f"through linked stages)")
                elif rec.n_in > 1:
                    where += f" or one of the {rec.n_in - 1} inputs after it in its chunk"
                self._fail(node, rec, WorkerDied(label if not worker.pool else node.label,
                                                 exitcode, where))
            else:  # never started: another worker can take it
                self.send(node._pick(_PER_WORKER + 1) or self.pool[0], node, rec)

    def _forget(self, worker: _Worker) -> None:
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

    # -- shutdown ----------------------------------------------------------------

    def close(self, graceful: bool) -> None:
        """Stop every worker: let idle ones exit on end of file, terminate the rest."""
        if self.closing:
            return
        self.closing = True
        workers = list(self.workers)
        for w in workers:
            if w.task is not None:
                w.task.close()  # end of file: an idle worker exits by itself
        procs = [w.proc for w in workers]
        if graceful:
            _join_all(procs, _GRACE)
        for p in procs:
            if p.exitcode is None:
                p.terminate()
        _join_all(procs, _KILL_AFTER)
        for p in procs:
            if p.exitcode is None:
                p.kill()
        _join_all(procs, None)
        for w in workers:
            w.result.close()
            w.proc.close()
        self.workers.clear()
        for future in self.futures:
            future.cancel()  # a running one goes on: an executor cannot stop it
        deadline = time.monotonic() + (_GRACE if graceful else _KILL_AFTER)
        for ex in self.owned:
            ex.shutdown(wait=False, cancel_futures=True)
        for ex in self.owned:  # a thread cannot be killed: give it time to finish its call
            for t in list(getattr(ex, "_threads", ())):
                t.join(max(0.0, deadline - time.monotonic()))
        if self.waker is not None:
            self.waker.close()
        self.selector.close()
        self.views.close()
        if self.slots is not None:
            self.slots.close()


def _stream(pipeline: Pipeline, it: Iterator[Any]) -> Iterator[Any]:
    """The outputs of ``apply``: the hub's event loop, run by the consumer's ``next``.

    Processes start at the first ``next`` (or at ``__enter__``), so an output
    iterator that is never used starts nothing.
    """
    pipeline._check_open()
    run = pipeline._start()
    run.it = it if type(it) in _CANNOT_RAISE else _guarded(it)
    sink = run.sink
    chunks = sink.chunks
    rec = run.rec
    clock = time.monotonic
    progress = pipeline._progress is not None
    slow = False  # the consumer takes a while per output: watch each one
    ok = False
    try:
        while True:
            run.pump()
            if chunks:
                while chunks:
                    chunk = chunks.popleft()
                    started = polled = clock()
                    hub = 0.0  # time spent on the hub between outputs
                    if not slow:
                        yield from chunk  # at C speed; nothing enters the sink meanwhile
                        sink.held -= len(chunk)
                    else:
                        for x in chunk:
                            sink.held -= 1
                            yield x
                            if clock() - polled > _TOP_UP:
                                # The consumer took a while: move finished work on
                                # and refill the queues before its next step.
                                _check_not_closed(pipeline)
                                t = clock()
                                run.wait(0)
                                run.pump()
                                polled = clock()
                                hub += polled - t
                    held = clock() - started
                    rec.yielded += len(chunk)
                    rec.consumer += held - hub
                    slow = held > _TOP_UP
                    _check_not_closed(pipeline)
                run.wait(0)
                run.tick()
                if progress:
                    pipeline._tick_progress(clock())
                continue
            if sink.failure is not None:
                raise sink.failure.exc
            if run.finished():
                ok = True
                return
            run.tick()
            if progress:
                pipeline._tick_progress(clock())
            run.wait(None)
    finally:
        pipeline._finish()
        run.close(graceful=ok)


# Iterators of builtin sequences never raise, so they need no guard.
_CANNOT_RAISE = {type(iter([])), type(iter(())), type(iter(range(0))),
                 type(iter(range(1 << 64)))}


_END = object()


def _check_not_closed(pipeline: Pipeline) -> None:
    if pipeline._closed:
        raise RuntimeError("the Pipeline was closed while its output was being read")


def _guarded(it: Iterator[Any]) -> Iterator[Any]:
    """The input, with its own error turned into a final marker, so that the
    items pulled before it are kept and it is raised after their outputs."""
    try:
        yield from it
    except Exception as e:
        yield _Failure(e)


def _pack(seg: int, payload: list[Any], freed: list[tuple[int, int]],
          slots: Slots | None) -> tuple[Frame, int | None, int]:
    try:
        return dumps_chunk((seg, mark_large(payload), freed), slots)
    except Exception:  # a memoryview, or a large buffer in the middle of the chunk
        return dumps_chunk((seg, mark_large(payload, every=True), freed), slots)


def _blame(link: list[_Worker], worker: _Worker, exitcode: int | None) -> tuple[str, int | None]:
    """Which of linked workers ended the others, and how.

    A worker after the one that died sees end of file and exits cleanly, and
    its end may be noticed first: the first worker before it that failed is
    the one to name.
    """
    for w in link:
        if w is worker:
            break
        code = w.proc.exitcode
        if code is None and exitcode == 0:  # its end may not be reaped yet
            w.proc.join(_KILL_AFTER)
            code = w.proc.exitcode
        if code not in (None, 0):
            return w.label, code
    return worker.label, exitcode


def _remote(executor: Executor, key: bytes, blob: bytes,
            seg: int) -> Callable[[list[Any]], Future[Any]]:
    def submit(payload: list[Any]) -> Future[Any]:
        return executor.submit(run_chunk, key, blob, seg, payload)
    return submit


def _local(executor: Executor, chain: Chain,
           window: int | None) -> Callable[[list[Any]], Future[Any]]:
    def submit(payload: list[Any]) -> Future[Any]:
        return executor.submit(_run_local, chain, window, payload)
    return submit


def _run_local(chain: Chain, window: int | None, payload: list[Any]) -> tuple[Any, ...]:
    """A thread stage's task: like ``run_chunk``, with nothing to unpickle."""
    outputs, failure, stats, skipped = chain.run(sliding(payload, window) if window else payload)
    return outputs, failure, stats, 0.0, skipped


def _join_all(procs: list[Any], timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    alive = [p for p in procs if p.exitcode is None]
    while alive:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        wait_sentinels([p.sentinel for p in alive], left)
        alive = [p for p in alive if p.exitcode is None]


def _rebuild(error: RemoteError) -> BaseException:
    """The worker's exception, with its traceback as ``__cause__`` and a note."""
    label, input_repr, frame, tb, reason = error
    note = f"raised by blpipe {label} on input {input_repr}"
    exc: BaseException
    if frame is None:
        exc = SerializationError(f"{label} raised an exception that cannot be sent to the "
                                 f"calling process ({reason}), on input {input_repr}; "
                                 f"its traceback is above")
    else:
        exc = loads(HEADER.unpack(frame[0])[0], frame[1])
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""  ({note})')
    add_note(exc, note)
    return exc


class Pipeline(PipelineBase):
    """Run a chain of callables over a stream on every core, in order, with bounded memory.

    >>> from blpipe import Pipeline, stage
    >>> double = stage(lambda x: 2 * x, stateful=False, batch_size=8)
    >>> with Pipeline([double], n_cpu=2) as p:
    ...     list(p.apply(range(5)))
    [0, 2, 4, 6, 8]

    ``n_cpu`` is the total number of worker processes: the pool gets
    ``max(1, n_cpu - D)`` where ``D`` counts the dedicated (stateful) stages.
    Without it the pool gets every CPU this process may use; with ``"auto"``
    it starts that large and uses only part of it while dedicated stages are
    busy. ``start_method`` is ``'fork'``, ``'spawn'`` or ``'forkserver'``
    (default: the platform's). ``progress`` is ``True`` for a tqdm bar, or a
    callable that receives ``statistics()``.

    ``executor``, any ``concurrent.futures.Executor`` (a Dask cluster's
    ``client.get_executor()``, a ``ProcessPoolExecutor``...), runs the pool
    stages instead of blpipe's own pool, in chunks; stateful, thread and
    master stages stay where they are. The executor is the caller's to shut
    down.

    ``max_bytes_in_flight`` bounds the serialized bytes in flight, by
    withholding input; ``keep_errors`` is how many records of errors gone past
    (``on_error = "collect"``) ``errors`` keeps.
    """

    def __init__(self, operations: Iterable[Any], n_cpu: int | str | None = None, *,
                 start_method: str | None = None, progress: Any = None,
                 executor: Executor | None = None, keep_errors: int = 1000,
                 max_bytes_in_flight: int | None = None) -> None:
        if executor is not None:
            check_executor(executor)
            if n_cpu == "auto":
                raise ValueError("n_cpu='auto' sizes blpipe's own pool; with an executor, the "
                                 "executor's size is yours to set: leave n_cpu out")
        if max_bytes_in_flight is not None and (isinstance(max_bytes_in_flight, bool) or not
                                                isinstance(max_bytes_in_flight, int)
                                                or max_bytes_in_flight < 1):
            raise ValueError(f"max_bytes_in_flight={max_bytes_in_flight!r}: it must be an int "
                             f">= 1 (bytes), or None for no byte budget")
        self._max_bytes = max_bytes_in_flight
        super().__init__(operations, n_cpu, start_method=start_method, progress=progress,
                         keep_errors=keep_errors)
        self._ctx = multiprocess.get_context(start_method)
        self._segments, self._pool_blob, self._pool_label = _plan(self.stages)
        self._executor = executor
        if executor is not None:
            self._pool_size = self._recorder.pool_size = width(executor)
            self._pool_label = self._pool_label.replace("the pool", "the executor", 1)
        # names this pipeline's stages in an executor's workers, which outlive it
        self._pool_key = hashlib.sha1(self._pool_blob or b"").digest() + os.urandom(4)
        self._run: _Run | None = None
        self._built = True  # only a fully built pipeline can be left unclosed

    def __enter__(self) -> Pipeline:
        self._check_open()
        self._start()
        return self

    def _start(self) -> _Run:
        if self._run is None:
            self._recorder.start()
            self._run = _Run(self)
        return self._run

    def _active(self) -> int:
        run = self._run
        if run is None or run.governor is None:
            return self._pool_size
        return run.governor.active

    def _live(self, segment: int) -> tuple[int, int, float, float]:
        node = self._run.by_segment.get(segment) if self._run is not None else None
        if not isinstance(node, _ProcessNode):
            return 0, 0, 0.0, 0.0
        return node.inflight, node.peak, node.starved, node.blocked

    def _bytes(self) -> tuple[int, int]:
        run = self._run
        return (run.nbytes, run.peak_bytes) if run is not None else (0, 0)

    def _outputs(self, it: Iterator[Any]) -> Iterator[Any]:
        return _stream(self, it)

    def close(self) -> None:
        """Stop every process; safe to call any number of times."""
        self._closed = True
        if self._run is not None:
            self._run.close(graceful=False)
        self._finish()

    def __del__(self) -> None:
        if getattr(self, "_built", False) and not self._closed:
            warnings.warn(f"{self!r} was never closed; use it in a 'with' block or call "
                          f"close()", ResourceWarning, stacklevel=2, source=self)
            self.close()


# (placement, its stages, its id, what its dedicated workers load: one blob each)
Segment = tuple[Placement, list[StageSpec], int, "list[bytes] | None"]


def _plan(stages: tuple[StageSpec, ...]) -> tuple[list[Segment], bytes | None, str]:
    """Cut the stages into segments and pickle what goes to workers.

    Pickling here, at construction, reports an unpicklable stage before any
    process starts, whatever the start method.
    """
    groups: list[tuple[Placement, list[StageSpec]]] = []
    for s in stages:
        prev = groups[-1] if groups else None
        fuse_master = prev and s.placement is prev[0] is Placement.MASTER
        # A stage that goes on past errors runs alone, so they are placed in its stream.
        fuse_pool = (prev and s.placement is prev[0] is Placement.POOL and s.window is None
                     and s.batch_size == prev[1][0].batch_size
                     and s.ordered == prev[1][0].ordered
                     and s.on_error == prev[1][0].on_error == "raise")
        # Adjacent stateful stages are linked: each worker feeds the next directly.
        link = (prev and s.placement is prev[0] is Placement.DEDICATED
                and s.batch_size == prev[1][0].batch_size
                and s.on_error == prev[1][0].on_error == "raise")
        if prev and (fuse_master or fuse_pool or link):
            prev[1].append(s)
        else:
            groups.append((s.placement, [s]))

    def pickled(s: StageSpec) -> tuple[str, bytes, bool]:
        try:
            return s.label, dumps_stage(s.func), s.on_error != "raise"
        except Exception as e:
            raise SerializationError(
                f"{s.label} cannot be sent to its worker process: {type(e).__name__}: {e}. "
                f"Stages that run outside the calling process must pickle (with dill): keep "
                f"generators, open files and sockets out of the object (create them on the "
                f"first call instead), or set run_in_master = True") from e

    segments: list[Segment] = []
    pool_steps: dict[int, tuple[list[tuple[str, bytes, bool]], int | None]] = {}
    for seg, (kind, specs) in enumerate(groups):
        blob = None
        if kind is Placement.POOL:
            pool_steps[seg] = ([pickled(s) for s in specs], specs[0].window)
        elif kind is Placement.DEDICATED:  # one process per stage
            blob = [pickle.dumps({seg: ([pickled(s)], None)}, PROTOCOL) for s in specs]
        segments.append((kind, specs, seg, blob))
    pool_blob = pickle.dumps(pool_steps, PROTOCOL) if pool_steps else None
    pool_label = "the pool (" + ", ".join(
        s.label for kind, specs, _, _ in segments if kind is Placement.POOL for s in specs) + ")"
    return segments, pool_blob, pool_label
