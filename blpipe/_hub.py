"""The hub: the calling process's side of one ``apply``, run by the consumer's ``next``.

The data flow, for ``[parse (pool), Total() (dedicated), render (master)]``::

   calling process: the hub, no threads of its own             worker processes
   ───────────────────────────────────────────────────────     ─────────────────────────
   input ─pull()─► Segment 0 ─dispatch()─► Outbox ══ Task ════► pool worker: Chain.run
                   in_buf, records           ▲                   │
                   (at most batch_size)      └── Inbox ◄ Result ═┘
                      │ release(), in order
                      ▼
                   Segment 1 ─dispatch()─► Outbox ══ Task ════► dedicated worker(s), each
                      │                      ▲                   feeding the next (a link)
                      │                      └── Inbox ◄ Result ═┘
                      ▼ release()
                   MasterSegment 2: runs render here, as items arrive
                      ▼
                   Sink ─► Pipeline's generator yields to the consumer

   wait(): one select over every result pipe, every worker's sentinel (a death
   is seen as it happens), task pipes with writes pending, and the Waker
   (futures done on an executor's or a thread stage's threads, or on the
   async stages' event loop thread)

Each step of the consumer's loop is :meth:`Hub.pump` (release finished
outputs downstream, pull input into the first segment, dispatch chunks), then
it yields what reached the :class:`~blpipe._segments.Sink`, or waits for
events (:meth:`Hub.wait`) when nothing can move.

The messages on the arrows are in :mod:`blpipe._messages`. ``statistics()``
asks :meth:`Hub.stalls` for each stage's oldest call in flight (:mod:`blpipe._stall`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._adaptive import Governor
from ._aio import Loop, LoopThread
from ._chain import Chain, step_of
from ._checkpoint import Cuts, restore
from ._executors import Futures, Lane, Local, Remote
from ._failures import Failure
from ._feeder import Feeder, take_within
from ._flow import Flow, Sink
from ._master import MasterSegment
from ._plan import Plan
from ._pool import Link, Pool
from ._procs import GRACE, KILL_AFTER, WATCH, Procs
from ._segments import Segment
from ._spec import Placement
from ._stall import Call, hands, oldest, since
from ._text import short_repr
from ._transport import Poller
from .errors import BrokenPipeline

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._recorder import Recorder
    from .errorlog import ErrorLog


@dataclass(frozen=True)
class Config:
    """What a run needs of its ``Pipeline``, besides the plan."""

    ctx: Any  # the multiprocess context: the start method
    pool_size: int
    auto: bool  # n_cpu="auto": a Governor sizes the pool in use
    executor: Executor | None
    budget: int | None  # max_bytes_in_flight
    recorder: Recorder
    log: ErrorLog
    pool_key: bytes  # names this pipeline's stages in an executor's workers
    max_tasks: int | None = None  # calls a pool worker takes before it is replaced
    checkpoint_every: float | None = None  # seconds between cuts; None: no checkpoints
    resume: dict[str, Any] | None = None  # the checkpoint resumed from


class Hub:
    """The processes, the segments and the event loop of one ``apply``."""

    def __init__(self, plan: Plan, config: Config) -> None:
        self.inputs: Iterator[Any] = iter(())  # set by the consumer's loop
        self.feeder: Feeder | None = None  # reads the input in a thread, with group_wait
        self.src_done = False
        self.closing = False
        self.flow = Flow(config.recorder, config.log, config.budget)
        self.poller = Poller()
        fd = self.poller.fileno()
        self.parent_fds: list[int] = [] if fd is None else [fd]
        last = plan.segments[-1].stages[-1] if plan.segments else None
        self.sink = Sink(last.batch_size if last else 64)
        self.procs: Procs | None = None
        self.futures: Futures | None = None
        self.aio: LoopThread | None = None  # the event loop of the async stages
        self.pool: Pool | None = None
        self.governor: Governor | None = None
        self.last_tick = time.monotonic()
        self.waited = 0.0  # seconds a blocking wait took, smoothed
        self.next_watch = 0.0  # when to look at the timed calls again
        self.every: float | None = None  # the longest a wait blocks: progress's period
        self.cuts = None if config.checkpoint_every is None else Cuts(
            config.checkpoint_every, config.resume["inputs"] if config.resume else 0)
        self.watching: list[Any] = []  # what runs timed calls: Procs, Futures
        self.loops: list[Loop] = []  # the async stages' segments
        self.here: list[Chain] = []  # the chains run in this process: master, thread stages
        try:
            self._build(plan, config)
        except BaseException:
            self.close(graceful=False)
            raise

    def _build(self, plan: Plan, config: Config) -> None:
        kinds = {s.kind for s in plan.segments}
        if kinds & {Placement.DEDICATED} or (config.executor is None and plan.pool_blob):
            self.procs = Procs(config.ctx, self.poller, self.parent_fds, self.flow, self.sink)
        if kinds & {Placement.THREAD, Placement.ASYNC} or (config.executor is not None and
                                                            plan.pool_blob):
            self.futures = Futures(self.poller, self.parent_fds)
        lanes: list[Lane] = []
        if config.executor is not None:
            lanes = [Lane() for _ in range(config.pool_size)]
        elif plan.pool_blob is not None:
            assert self.procs is not None
            timed = any(s.timeout is not None for seg in plan.segments
                        if seg.kind is Placement.POOL for s in seg.stages)
            self.pool = Pool(self.procs, plan.pool_blob, plan.pool_label, config.pool_size,
                             config.max_tasks, timed)
            if timed:
                self.watching.append(self.procs)
            if config.auto:
                own = [s.index for seg in plan.segments for s in seg.stages
                       if seg.kind in (Placement.DEDICATED, Placement.MASTER)]
                self.governor = Governor(config.pool_size, own, config.recorder.busy,
                                         time.monotonic())
        if Placement.ASYNC in kinds:
            self.aio = LoopThread()
        nxt: Any = self.sink
        segments: list[Any] = []
        for index in range(len(plan.segments) - 1, -1, -1):  # back to front: each feeds the next
            nxt = self._segment(index, plan, config, lanes, nxt)
            nxt.last = plan.segments[index].stages[-1].index  # for a checkpoint's error counts
            nxt.to_sink = not segments
            segments.append(nxt)
        segments.reverse()
        self.segments = segments
        self.outside = [s for s in reversed(segments) if isinstance(s, Segment)]
        # released downstream first, so each has room for what comes from upstream;
        # a master segment needs releasing only when its stages may pause midway
        self.releasing = [s for s in reversed(segments)
                          if isinstance(s, Segment) or s.chain.lazy]
        # those with partial groups to pass on after group_wait
        self.timed = [s for s in segments if any(x.group_wait for x in
                                                 plan.segments[s.index].stages)]
        self.head = segments[0] if segments else self.sink
        # input is pulled a chunk of the first outside segment at a time
        self.pull_from: Segment | None = self.outside[-1] if self.outside else None
        # once every process has started: no fork copies their threads
        if self.aio is not None:
            self.aio.start()
        if config.resume is not None:
            restore(segments, config.resume)
        self.here = [s.chain for s in segments if isinstance(s, MasterSegment)]
        self.here += [s.backend.chain for s in segments if isinstance(getattr(s, "backend", None),
                                                                       Local)]

    def _segment(self, index: int, plan: Plan, config: Config, lanes: list[Lane],
                 nxt: Any) -> Segment | MasterSegment:
        seg = plan.segments[index]
        specs = seg.stages
        s = specs[0]
        for spec in specs:
            config.recorder.segment[spec.index] = index
        if seg.kind is Placement.MASTER:
            return MasterSegment(index, s.index, Chain([step_of(x) for x in specs]), self.flow,
                                 nxt)
        if seg.kind is Placement.DEDICATED:
            assert self.procs is not None
            assert seg.blobs is not None
            # The link holds what its stages would hold apart, the sum of their
            # batch_size, in chunks of which one runs in each worker, one waits.
            cap = s.batch_size * len(specs)
            size = max(1, cap // (len(specs) + 1))
            if s.timeout is not None and self.procs not in self.watching:
                self.watching.append(self.procs)
            expands = any(x.expand for x in specs)
            return Segment(index, s, seg.label, cap, (size, size), self.flow, nxt,
                           Link(self.procs, seg.blobs, [x.label for x in specs], expands,
                                s.timeout is not None), expands)
        backend: Any
        if seg.kind is Placement.THREAD:
            assert self.futures is not None
            n = s.threads or 1
            backend = Local(self.futures, Chain([step_of(s, formed=True)], ahead=True),
                            s.window, s.group, n, seg.label)
        elif seg.kind is Placement.ASYNC:
            assert self.futures is not None
            assert self.aio is not None
            n = s.concurrency or 1
            backend = Loop(self.futures, self.aio, s)
            self.loops.append(backend)
        elif config.executor is not None:
            assert self.futures is not None
            assert plan.pool_blob is not None
            n = config.pool_size
            backend = Remote(self.futures, lanes, config.executor, config.pool_key,
                             plan.pool_blob, index, s.timeout is not None)
            if s.timeout is not None and self.futures not in self.watching:
                self.watching.append(self.futures)
        else:
            n = config.pool_size
            backend = self.pool
        cap = s.batch_size
        # a call whose worker died runs again, on a worker of its own, at least once
        runs = max(2, 1 + max(x.retry.retries if x.retry else 0 for x in specs))
        # from every worker with one chunk queued, to two chunks in all; on an executor,
        # a timed stage's calls go one per task, each timed from when it is sent
        chunks = (max(1, cap // (2 * n)), max(1, cap // 2))
        if s.timeout is not None and isinstance(backend, Remote):
            chunks = (1, 1)
        return Segment(index, s, seg.label, cap, chunks, self.flow, nxt, backend,
                       (backend is self.pool or isinstance(backend, Local))
                       and any(x.expand for x in specs), runs)

    # -- the stream ------------------------------------------------------------

    def pump(self) -> None:
        """Move everything that can move: release, pull input, dispatch.

        Releasing goes downstream first, so each segment has room for what
        comes from upstream; then a dispatch sends each one's chunks. Nothing
        else can move until results come in, through :meth:`wait`, unless a
        dispatch says otherwise: then it goes round again.
        """
        outside = self.outside
        head = self.pull_from
        if self.timed:
            now = time.monotonic()
            for timed in self.timed:
                if isinstance(timed, MasterSegment):
                    timed.poll(now)
        again = True
        while again:  # see Segment.dispatch: rare
            for segment in self.releasing:
                segment.release()
            again = False
            while self.pull():  # a chunk at a time, each sent at once
                if head is not None and head.dispatch(False):
                    again = True
            for segment in outside:
                if segment.dispatch(True):
                    again = True

    def pull(self) -> bool:
        """Pull up to a chunk of input into the first segment; ``True`` when it
        took all it asked for, so more may be taken now."""
        if self.src_done or self.flow.stop_upto >= 0:
            return False
        room = min(self.head.room(), self.pull_from.chunk if self.pull_from else 64)
        if room <= 0:
            return False
        start = perf_counter()
        if self.timed:
            if self.feeder is None:
                self.feeder = Feeder(self.inputs, self.poller, self.parent_fds)
            raw, ended = self.feeder.take_within(room, *self._budget())
            if not (raw or ended):
                return False
        elif self.flow.budget is None:
            raw = list(islice(self.inputs, room))
            ended = len(raw) < room
        elif self.pull_from is not None and self.pull_from.in_buf:
            return False  # what was pulled last is not sent yet, and so not counted
        else:
            raw, ended = take_within(self.inputs, room, *self._budget())
        self.flow.recorder.input += perf_counter() - start
        failure = None
        if raw and type(raw[-1]) is Failure:  # the input's error ends it, full batch or not
            failure = raw.pop()
            self.src_done = True
        elif ended:
            self.src_done = True
        batch = [x for x in raw if x is not None]
        if batch:
            self.head.put(batch)
        if failure is not None:
            self.head.put_failure(failure)
            return False
        if self.cuts is not None:
            self.cuts.pulled(len(raw), self.src_done, self.flow, self.head)
        if self.src_done:
            self.head.end()
        return not self.src_done and len(raw) == room

    def _budget(self) -> tuple[float | None, float]:
        """Bytes the budget has room for now (``None``: no budget; ``0``: none,
        while something is in flight), and the recent bytes per input item."""
        first = self.pull_from
        avg = (first.item_bytes if first is not None else None) or 0.0
        if self.flow.budget is None:
            return None, avg
        meter = self.flow.meter
        left = self.flow.budget - meter.now
        return (0.0 if left <= 0 and meter.now else max(left, 1.0)), avg

    def finished(self) -> bool:
        return self.sink.ended

    def tick(self) -> None:
        """Sample which segments wait, at most once a millisecond."""
        now = time.monotonic()
        dt = now - self.last_tick
        if dt < 0.001:
            return
        self.last_tick = now
        if self.governor is not None and self.governor.update(now):
            self.pool.resize(self.governor.active)  # type: ignore[union-attr]
        more = not self.src_done and self.flow.stop_upto < 0
        for segment in reversed(self.outside):  # upstream first
            more = segment.sample(dt, more) or more

    # -- events ------------------------------------------------------------------

    def wait(self, timeout: float | None) -> None:
        """Handle what the workers and executors did, waiting up to ``timeout``
        seconds for it (``None``: until something happens).

        A wait that blocks puts the process to sleep, and on a virtual machine
        waking it again costs tens of microseconds: more than a cheap stage
        takes over a chunk. So while recent waits were short, the hub first
        polls for up to ``_SPIN`` seconds, as an adaptive mutex spins before
        it sleeps; once waits grow longer (costly stages), it sleeps at once.
        No timeout either: arming a timer for each wait costs as much again.
        """
        poll = self.poller.poll
        watched = None  # when to look at the timed calls again
        if self.watching:
            now = time.monotonic()
            if now >= self.next_watch:  # as events come, not only when it would block
                dues = [d for w in self.watching if (d := w.watch(now)) is not None]
                self.next_watch = min(dues) if dues else now + WATCH
                if self.futures is not None and self.futures.gave_up:
                    self.futures.gave_up = False
                    return  # a task given up on has failed or gone again: pump first
            if any(w.busy() for w in self.watching):
                watched = self.next_watch
        ready = poll(0)
        if not ready and timeout is None:
            due = self._deadline()
            if watched is not None:
                due = watched if due is None else min(due, watched)
            if due is None and not ((self.procs and (self.procs.busy() or self.procs.holds()))
                                    or (self.futures and self.futures.busy())
                                    or (self.feeder is not None and not self.src_done)):
                # nothing in flight: no event will ever come, and waiting would hang
                raise BrokenPipeline("internal error: blpipe has nothing in flight yet the "
                                     "stream is not finished; please report this with the "
                                     "stages")
            if self.every is not None:  # progress is fed even while nothing happens
                due = min(due or math.inf, time.monotonic() + self.every)
            if due is not None:  # a partial group or a late call: then, whatever happens
                timeout = max(0.0, due - time.monotonic())
            start = perf_counter()
            if self.waited < _SPIN:
                end = start + _SPIN
                while not (ready := poll(0)) and perf_counter() < end:
                    pass
            if not ready:
                ready = poll(timeout)
            self.waited += 0.3 * (perf_counter() - start - self.waited)
        for handler in ready:
            handler()

    def _deadline(self) -> float | None:
        due = [d for s in self.timed if (d := s.deadline()) is not None]
        return min(due) if due else None

    # -- figures -------------------------------------------------------------------

    def live(self, segment: int) -> tuple[int, int, float, float]:
        """A segment's in flight, peak in flight, starved and blocked seconds."""
        s = self.segments[segment] if segment < len(self.segments) else None
        if not isinstance(s, Segment):
            return 0, 0, 0.0, 0.0
        return s.inflight, s.peak, s.starved, s.blocked

    def stalls(self) -> dict[int, tuple[float, str | None]]:
        """Per stage, its oldest call in flight: since when, and on what."""
        now = time.monotonic()
        usual = self.flow.recorder.usual()
        here = oldest((h[0], since(h, usual, now), h[3]) for h in hands(self.here))
        calls: list[Call] = [(i, t, short_repr(x)) for i, (t, x) in here.items()]
        for loop in self.loops:
            calls += [(loop.spec.index, t, short_repr(x))
                      for t, x in list(loop.running.values())]
        if self.procs is not None:
            calls += self.procs.calls(now, usual)
        if self.futures is not None:
            calls += self.futures.calls()
        return oldest(calls)

    def active(self) -> int | None:
        return self.governor.active if self.governor is not None else None

    # -- shutdown ----------------------------------------------------------------

    def close(self, graceful: bool) -> None:
        """Stop every worker and thread; release every descriptor and slot."""
        if self.closing:
            return
        self.closing = True
        if self.procs is not None:
            self.procs.close(graceful)
        if self.futures is not None:
            self.futures.close(GRACE if graceful else KILL_AFTER)
        if self.aio is not None:
            self.aio.close(GRACE if graceful else KILL_AFTER)
        if self.feeder is not None:
            self.feeder.close(GRACE if graceful else KILL_AFTER)
        self.poller.close()


_SPIN = 50e-6  # seconds the hub polls before it sleeps, while waits are this short
