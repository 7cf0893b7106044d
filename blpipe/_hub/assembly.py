"""Building one ``apply``: the processes and threads it needs, and its segments.

:func:`assemble` turns a :class:`~blpipe._hub.plan.Plan` into segments, back to
front (each feeds the next), each on the backend of its placement::

   plan segment          backend                      runs on
   ─────────────────     ──────────────────────────   ──────────────────────────────
   pool stages      ──►  Pool (or Remote, executor)   pool worker processes (or tasks)
   dedicated stages ──►  Link                         one worker process per stage
   a thread stage   ──►  Local                        threads of the calling process
   an async stage   ──►  Loop                         the run's event loop thread
   master stages    ──►  MasterSegment                the consumer's own thread

The :class:`Machinery` owns what they run on, and stops it all once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.chain import Chain, step_of
from .._core.hooks import HookFailure, Lifecycle, hook
from .._core.messages import HookFailed
from .._core.spec import Placement, StageSpec
from .._core.stall import Call
from .._core.text import short_repr
from .._core.transport import Poller
from .adaptive import Governor
from .aio import Loop
from .executors import Futures, Lane, Local, Remote
from .flow import Downstream, Flow, Sink
from .loopthread import LoopThread
from .master import MasterSegment
from .plan import Plan
from .pool import KeyedReplicas, Link, Pool, Replicas
from .procs import Procs
from .segments import Segment
from .spawn import GRACE, KILL_AFTER

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ..errorlog import ErrorLog
    from .recorder import Recorder


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


class Machinery:
    """The worker processes, threads and event loop of one run, stopped together."""

    def __init__(self, poller: Poller, parent_fds: list[int]) -> None:
        self.poller = poller
        self.parent_fds = parent_fds  # descriptors no worker may inherit
        self.procs: Procs | None = None
        self.futures: Futures | None = None
        self.aio: LoopThread | None = None  # the event loop of the async stages
        self.pool: Pool | None = None
        self.governor: Governor | None = None  # sizes the pool in use, with n_cpu="auto"
        self.watching: list[Procs | Futures] = []  # what runs timed calls
        self.loops: list[Loop] = []  # the async stages' backends
        self.here = Lifecycle([])  # the hooks of the stages run in the calling process

    def close(self, graceful: bool) -> None:
        """Stop every worker and thread; release every descriptor and slot;
        then tear down the stages run here. After a ``graceful`` stop, a
        teardown's error is raised, once every other has run."""
        failures: list[HookFailed] = []
        if self.procs is not None:
            failures += self.procs.close(graceful)
        if self.futures is not None:
            self.futures.close(GRACE if graceful else KILL_AFTER)
        if self.aio is not None:
            self.aio.close(GRACE if graceful else KILL_AFTER)
        failures += [f.message(_CALLER, packed=False) for f in self.here.tear_down()]
        if graceful and failures:
            raise failures[0].exception()

    def busy(self) -> bool:
        """Something is in flight, or held for a worker, or a worker is still
        setting up: an event will come."""
        procs, futures = self.procs, self.futures
        return bool((procs is not None and (procs.busy() or procs.holds() or procs.unready))
                    or (futures is not None and futures.busy()))

    def adapt(self, now: float) -> None:
        """Resize the pool in use, when the governor says so."""
        if self.governor is not None and self.governor.update(now):
            assert self.pool is not None
            self.pool.resize(self.governor.active)

    def calls(self, now: float, usual: Sequence[float]) -> list[Call]:
        """Every call in flight outside the caller's own thread, for the watchdog."""
        calls: list[Call] = []
        for loop in self.loops:
            calls += [(loop.spec.index, t, short_repr(x))
                      for t, x in list(loop.running.values())]
        if self.procs is not None:
            calls += self.procs.calls(now, usual)
        if self.futures is not None:
            calls += self.futures.calls()
        return calls

    def _watch(self, what: Procs | Futures) -> None:
        if what not in self.watching:
            self.watching.append(what)


AnySegment = Segment | MasterSegment


def assemble(plan: Plan, config: Config, flow: Flow, sink: Sink,
             m: Machinery) -> list[AnySegment]:
    """Start what ``plan`` runs on, into ``m``, and return its segments in
    stream order. On an error, what started is in ``m``, for its caller to close."""
    kinds = {s.kind for s in plan.segments}
    if any(s.blobs for s in plan.segments) or (config.executor is None and plan.pool_blob):
        # dedicated or replicated stages (processes of their own), or the shared pool
        m.procs = Procs(config.ctx, m.poller, m.parent_fds, flow, sink)
    if kinds & {Placement.THREAD, Placement.ASYNC} or (config.executor is not None and
                                                        plan.pool_blob):
        m.futures = Futures(m.poller, m.parent_fds)
    lanes: list[Lane] = []
    if config.executor is not None:
        lanes = [Lane() for _ in range(config.pool_size)]
    elif plan.pool_blob is not None:
        assert m.procs is not None
        shared = [s for seg in plan.segments if seg.kind is Placement.POOL and not seg.blobs
                  for s in seg.stages]
        timed = any(s.timeout is not None for s in shared)
        hooked = any(hooks(s) for s in shared)
        m.pool = Pool(m.procs, plan.pool_blob, plan.pool_label, config.pool_size,
                      config.max_tasks, timed, hooked)
        if timed:
            m._watch(m.procs)
        if config.auto:
            # the stages on processes of their own (or the caller): the pool makes room
            own = [s.index for seg in plan.segments for s in seg.stages
                   if seg.kind in (Placement.DEDICATED, Placement.MASTER) or seg.blobs]
            m.governor = Governor(config.pool_size, own, config.recorder.busy,
                                  time.monotonic())
    if Placement.ASYNC in kinds:
        m.aio = LoopThread()
    nxt: Downstream = sink
    segments: list[AnySegment] = []
    for index in range(len(plan.segments) - 1, -1, -1):  # back to front: each feeds the next
        nxt = _segment(index, plan, config, lanes, flow, nxt, None if segments else sink, m)
        segments.append(nxt)
    segments.reverse()
    for index, seg in enumerate(plan.segments):
        for spec in seg.stages:
            config.recorder.segment[spec.index] = index
    # once every process has started: no fork copies their threads
    if m.aio is not None:
        m.aio.start()
    # the stages run here set up while the workers set up theirs
    m.here = Lifecycle(hook(s.label, s.func, s.retry) for seg in plan.segments
                       if seg.kind in _HERE for s in seg.stages)
    try:
        m.here.set_up()
    except HookFailure as e:
        raise e.message(_CALLER, packed=False).exception() from None
    config.recorder.setup_seconds += m.here.seconds
    config.recorder.setups += bool(m.here)
    return segments


_HERE = (Placement.MASTER, Placement.THREAD, Placement.ASYNC)  # run in the calling process
_CALLER = "the calling process"


def hooks(spec: StageSpec) -> bool:
    """Whether ``spec`` has a ``setup()`` or a ``teardown()``."""
    return spec.setup is not None or spec.teardown is not None


def _segment(index: int, plan: Plan, config: Config, lanes: list[Lane], flow: Flow,
             nxt: Downstream, sink: Sink | None, m: Machinery) -> AnySegment:
    """Segment ``index`` of ``plan``, on the backend of its placement."""
    seg = plan.segments[index]
    specs = seg.stages
    s = specs[0]
    last = specs[-1].index  # for a checkpoint's error counts
    if seg.kind is Placement.MASTER:
        return MasterSegment(index, s.index, last, Chain([step_of(x) for x in specs]), flow,
                             nxt)
    if seg.kind is Placement.DEDICATED and (s.replicas or s.key):  # copies, each its state
        assert m.procs is not None
        assert seg.blobs is not None
        if s.timeout is not None:
            m._watch(m.procs)
        n, cap = s.replicas or 1, s.batch_size
        chunks = (max(1, cap // (2 * n)), max(1, cap // 2))
        config.recorder.replicas[s.index] = [[0, 0.0] for _ in range(n)]
        if s.key is not None:  # each input to its key's replica: one per chunk
            keyed = KeyedReplicas(m.procs, seg.blobs[0], s, index, seg.label, n, hooks(s))
            config.recorder.keys[s.index] = keyed.book.figures
            copies: Replicas = keyed
            chunks = (1, 1)
        else:
            copies = Replicas(m.procs, seg.blobs[0], seg.label, n, s.timeout is not None,
                              hooks(s))
        return Segment(index, s, seg.label, cap, chunks, flow, nxt, copies, s.expand,
                       last=last, sink=sink)
    if seg.kind is Placement.DEDICATED:
        assert m.procs is not None
        assert seg.blobs is not None
        # The link holds what its stages would hold apart, the sum of their
        # batch_size, in chunks of which one runs in each worker, one waits.
        cap = s.batch_size * len(specs)
        size = max(1, cap // (len(specs) + 1))
        if s.timeout is not None:
            m._watch(m.procs)
        expands = any(x.expand for x in specs)
        return Segment(index, s, seg.label, cap, (size, size), flow, nxt,
                       Link(m.procs, seg.blobs, [x.label for x in specs], expands,
                            s.timeout is not None, tuple(hooks(x) for x in specs)),
                       expands, last=last, sink=sink)
    backend: Any
    if seg.kind is Placement.THREAD:
        assert m.futures is not None
        n = s.threads or 1
        backend = Local(m.futures, Chain([step_of(s, formed=True)], ahead=True),
                        s.window, s.group, n, seg.label)
    elif seg.kind is Placement.ASYNC:
        assert m.futures is not None
        assert m.aio is not None
        n = s.concurrency or 1
        backend = Loop(m.futures, m.aio, s)
        m.loops.append(backend)
    elif seg.blobs:  # replicated: a pool of its own, whatever runs the shared pool
        assert m.procs is not None
        assert s.replicas is not None
        n = s.replicas
        config.recorder.replicas[s.index] = [[0, 0.0] for _ in range(n)]
        backend = Pool(m.procs, seg.blobs[0], seg.label, n, config.max_tasks,
                       s.timeout is not None, hooks(s))
        if s.timeout is not None:
            m._watch(m.procs)
    elif config.executor is not None:
        assert m.futures is not None
        assert plan.pool_blob is not None
        n = config.pool_size
        backend = Remote(m.futures, lanes, config.executor, config.pool_key,
                         plan.pool_blob, index, s.timeout is not None)
        if s.timeout is not None:
            m._watch(m.futures)
    else:
        n = config.pool_size
        backend = m.pool
    cap = s.batch_size
    # a call whose worker died runs again, on a worker of its own, at least once
    runs = max(2, 1 + max(x.retry.retries if x.retry else 0 for x in specs))
    # from every worker with one chunk queued, to two chunks in all; on an executor,
    # a timed stage's calls go one per task, each timed from when it is sent
    chunks = (max(1, cap // (2 * n)), max(1, cap // 2))
    if s.timeout is not None and isinstance(backend, Remote):
        chunks = (1, 1)
    return Segment(index, s, seg.label, cap, chunks, flow, nxt, backend,
                   (backend is m.pool or isinstance(backend, Local))
                   and any(x.expand for x in specs), runs, last=last, sink=sink)
