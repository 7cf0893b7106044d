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
it yields what reached the :class:`~blpipe._hub.segments.Sink`, or waits for
events (:meth:`Hub.wait`) when nothing can move.

The messages on the arrows are in :mod:`blpipe._core.messages`. ``statistics()``
asks :meth:`Hub.stalls` for each stage's oldest call in flight (:mod:`blpipe._core.stall`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from .._core.stall import Call, hands, oldest, since
from .._core.text import short_repr
from .._core.transport import Poller
from ..errors import BrokenPipeline
from .assembly import Config, Machinery, assemble
from .checkpoints import Cuts, restore
from .flow import Cut, Flow, Sink
from .intake import Intake
from .master import MasterSegment
from .plan import Plan
from .procs import WATCH
from .segments import Segment
from .spawn import GRACE, KILL_AFTER

__all__ = ["Config", "Hub"]


class Hub:
    """The event loop of one ``apply``: moves what can move, waits for what cannot."""

    def __init__(self, plan: Plan, config: Config) -> None:
        self.closing = False
        self.flow = Flow(config.recorder, config.log, config.budget)
        self.poller = Poller()
        fd = self.poller.fileno()
        parent_fds: list[int] = [] if fd is None else [fd]
        last = plan.segments[-1].stages[-1] if plan.segments else None
        self.sink = Sink(last.batch_size if last else 64)
        self.machinery = m = Machinery(self.poller, parent_fds)
        self.last_tick = time.monotonic()
        self.waited = 0.0  # seconds a blocking wait took, smoothed
        self.next_watch = 0.0  # when to look at the timed calls again
        self.every: float | None = None  # the longest a wait blocks: progress's period
        self.cuts = None if config.checkpoint_every is None else Cuts(
            config.checkpoint_every, config.resume["inputs"] if config.resume else 0)
        try:
            segments = assemble(plan, config, self.flow, self.sink, m)
            if config.resume is not None:
                restore(segments, config.resume)
        except BaseException:
            self.machinery.close(graceful=False)
            self.poller.close()
            raise
        self.segments = segments
        self.outside = [s for s in reversed(segments) if isinstance(s, Segment)]
        # released downstream first, so each has room for what comes from upstream;
        # a master segment needs releasing only when its stages may pause midway
        self.releasing = [s for s in reversed(segments)
                          if isinstance(s, Segment) or s.chain.lazy or s.chain.finishing]
        # those with partial groups to pass on after group_wait
        self.timed = [s for s in segments if any(x.group_wait for x in
                                                 plan.segments[s.index].stages)]
        # input is pulled a chunk of the first outside segment at a time
        self.intake = Intake(self.flow, segments[0] if segments else self.sink,
                             self.outside[-1] if self.outside else None, bool(self.timed),
                             self.cuts, self.poller, parent_fds)
        # the chains run in this process: master and thread stages, for the watchdog
        self.here = [s.chain for s in segments if isinstance(s, MasterSegment)]
        if m.futures is not None:
            self.here += m.futures.chains

    # -- the stream ------------------------------------------------------------

    def pump(self) -> None:
        """Move everything that can move: release, pull input, dispatch.

        Releasing goes downstream first, so each segment has room for what
        comes from upstream; then a dispatch sends each one's chunks. Nothing
        else can move until results come in, through :meth:`wait`, unless a
        dispatch says otherwise: then it goes round again.
        """
        outside = self.outside
        head = self.intake.first
        pull = self.intake.pull
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
            while pull():  # a chunk at a time, each sent at once
                if head is not None and head.dispatch(False):
                    again = True
            for segment in outside:
                if segment.dispatch(True):
                    again = True

    def feed(self, inputs: Iterator[Any], every: float | None) -> None:
        """Take ``inputs``; wake at least every ``every`` seconds (for progress)."""
        self.intake.inputs = inputs
        self.every = every

    def ask_cut(self) -> None:
        """Place a checkpoint's cut behind the next input pulled."""
        if self.cuts is not None:
            self.cuts.asked = True

    def gather(self, cut: Cut) -> bool:
        """Run the stream until every dedicated stage's state at ``cut`` is in;
        ``False`` when a failure ends the stream first (then no checkpoint)."""
        deadline = time.monotonic() + _GATHER
        while cut.waiting and cut.failed is None and time.monotonic() < deadline:
            if self.flow.stop_upto >= 0:
                return False  # a dedicated worker died, say: the stream ends here
            self.wait(0.01)
        if cut.waiting and cut.failed is None:
            raise BrokenPipeline(f"the dedicated stages {sorted({s for s, _ in cut.waiting})} "
                                 f"did not send "
                                 f"their state for a checkpoint within {_GATHER:.0f} s")
        return True

    def cut_written(self) -> None:
        """The cut under way is in the file: the next may come."""
        assert self.cuts is not None
        self.cuts.done(self.flow)

    def bytes_in_flight(self) -> tuple[int, int]:
        """Serialized bytes in flight now, and at the peak."""
        meter = self.flow.meter
        return meter.now, meter.peak

    def setting_up(self) -> bool:
        """Whether a worker's ``setup()`` may still fail: until then no output
        leaves, so that a failed setup ends the run before any."""
        procs = self.machinery.procs
        return procs is not None and procs.unready > 0 and procs.setup_failed is None

    def setup_failed(self) -> BaseException | None:
        procs = self.machinery.procs
        return None if procs is None else procs.setup_failed

    def finished(self) -> bool:
        return self.sink.ended

    def tick(self) -> None:
        """Sample which segments wait, at most once a millisecond."""
        now = time.monotonic()
        dt = now - self.last_tick
        if dt < 0.001:
            return
        self.last_tick = now
        self.machinery.adapt(now)
        more = self.intake.more()
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
        m = self.machinery
        if m.watching:
            now = time.monotonic()
            if now >= self.next_watch:  # as events come, not only when it would block
                dues = [d for w in m.watching if (d := w.watch(now)) is not None]
                self.next_watch = min(dues) if dues else now + WATCH
                if m.futures is not None and m.futures.gave_up:
                    m.futures.gave_up = False
                    return  # a task given up on has failed or gone again: pump first
            if any(w.busy() for w in m.watching):
                watched = self.next_watch
        ready = poll(0)
        if not ready and timeout is None:
            due = self._deadline()
            if watched is not None:
                due = watched if due is None else min(due, watched)
            if due is None and not (m.busy() or self.intake.reading()):
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
        return s.figures()

    def stalls(self) -> dict[int, tuple[float, str | None]]:
        """Per stage, its oldest call in flight: since when, and on what."""
        now = time.monotonic()
        usual = self.flow.recorder.usual()
        here = oldest((h[0], since(h, usual, now), h[3]) for h in hands(self.here))
        calls: list[Call] = [(i, t, short_repr(x)) for i, (t, x) in here.items()]
        return oldest(calls + self.machinery.calls(now, usual))

    def active(self) -> int | None:
        """The pool's workers in use, with ``n_cpu="auto"``."""
        governor = self.machinery.governor
        return governor.active if governor is not None else None

    # -- shutdown ----------------------------------------------------------------

    def close(self, graceful: bool) -> None:
        """Stop every worker and thread; release every descriptor and slot."""
        if self.closing:
            return
        self.closing = True
        try:
            self.machinery.close(graceful)
        finally:
            self.intake.close(GRACE if graceful else KILL_AFTER)
            self.poller.close()


_GATHER = 60.0  # seconds a checkpoint waits for the dedicated stages' state
_SPIN = 50e-6  # seconds the hub polls before it sleeps, while waits are this short
