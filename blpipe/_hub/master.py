"""Master segments: stages that run in the calling process, as items arrive.

A run of ``run_in_master`` stages is called in the hub's own loop, on what
the segment before it releases. A lazy chain (a stage that expands, or
groups) is run as far as downstream has room and then left where it is, to
go on at the next pump: an expansion of any length passes through in bounded
memory. At the end of the stream its partial groups go on; with
``group_wait``, a partial group goes on once it has waited that long.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .._core.chain import Chain
from .._core.run import Run
from .._core.state import chain_state, states
from .._core.transport import loads_stage
from .flow import Cut, Downstream, Failure, Flow
from .settle import settle, settled

_END = object()


class MasterSegment:
    """Master stages, run synchronously in the caller as items arrive."""

    def __init__(self, index: int, first: int, last: int, chain: Chain, flow: Flow,
                 nxt: Downstream) -> None:
        self.index = index
        self.first = first  # its first stage's index
        self.last = last  # and its last's
        self.chain = chain
        self.flow = flow
        self.next = nxt
        self.dead = False
        self.run: Run | None = None  # a lazy chain's run, not yet done
        self.outputs: Iterator[Any] | None = None  # its outputs, errors settled
        self.n_in = self.n_out = 0  # the run's inputs, and its outputs so far
        self.ending = False  # the stream has ended upstream
        self.flushed = False  # and its partial groups have been started
        self.failing: Failure | None = None  # failed upstream, once the groups are out
        self.marks: list[Cut] = []  # checkpoints' cuts waiting for the run in hand

    def room(self) -> int:
        if self.dead or self.run is not None or self.failing is not None:
            return 0
        return int(self.next.room())

    def idle(self) -> bool:
        return self.run is None

    def put(self, items: list[Any]) -> None:
        if self.chain.lazy:
            self._start(self.chain.stream(items), len(items))
            self.release()
            return
        flow = self.flow
        outputs, failure, stats, skipped = self.chain.run(items)
        exc = None if failure is None else failure.exception()
        if skipped:
            outputs, over = settle(flow.log, self.first, flow.recorder.n_in[self.first:],
                                   outputs, skipped)
            exc = over or exc
        outs = [y for y in outputs if y is not None]
        flow.recorder.add(self.first, stats, len(items), len(outs), 0.0)
        if outs:
            self.next.put(outs)
        if exc is not None:
            self._fail(exc)

    def mark(self, cut: Cut) -> None:
        """A checkpoint's cut: its stages and chain are copied once every input
        before it has gone through (the run in hand is done), then it goes on."""
        self.marks.append(cut)
        if self.run is None:
            self._pass_marks()

    def _pass_marks(self) -> None:
        chain = self.chain
        for cut in self.marks:
            for number, blob, error in states(chain):
                if blob is not None:
                    cut.states[number] = blob
                elif error is not None:
                    cut.failed = error
            cut.chains[self.index] = chain_state(chain.windows, chain.groups)
            cut.leave(self.first, self.last, self.flow.log.counts)
            self.next.mark(cut)
        self.marks.clear()

    def restore(self, saved: bytes) -> None:
        """A checkpoint's open windows and partial groups back in its chain."""
        chain = self.chain
        windows, groups = loads_stage(saved)
        for window, kept in zip(chain.windows, windows, strict=True):
            if window is not None and kept:
                window.extend(kept)
        now = time.monotonic()
        for i, group in enumerate(groups):
            chain.groups[i] = group
            chain.started[i] = now

    def put_failure(self, failure: Failure) -> None:
        if self.dead or self.failing is not None:  # a later failure changes nothing
            return
        if self.run is not None:  # what its run gives is earlier: it goes on first
            self.failing = failure
            return
        if self.chain.lazy and self.chain.holds():
            # its partial groups hold earlier inputs: they go on first
            self.failing = failure
            self._start(self.chain.flush(), 0)
            self.release()
            return
        self.dead = True
        self.run = self.outputs = None
        self.next.put_failure(failure)

    def end(self) -> None:
        """Nothing more comes from upstream: pass on the partial groups, then say so."""
        self.ending = True
        self.release()

    def poll(self, now: float) -> None:
        """Start the partial groups whose ``group_wait`` has passed by ``now``."""
        if self.run is None and not self.dead and not self.ending:
            due = self.chain.deadline()
            if due is not None and due <= now:
                self._start(self.chain.flush(now), 0)
                self.release()

    def deadline(self) -> float | None:
        return None if self.run is not None or self.dead else self.chain.deadline()

    def release(self) -> bool:
        """Go on with the run in hand, as far as downstream has room; at the
        end of the stream, flush, then tell downstream."""
        moved = False
        while not self.dead:
            if self.outputs is None:
                if self.failing is not None:
                    failure, self.failing = self.failing, None
                    self.put_failure(failure)
                    break
                if not self.ending:
                    break
                if (self.chain.lazy or self.chain.finishing) and not self.flushed:
                    if self.chain.finishing and self.flow.cut is not None:
                        break  # a checkpoint's state is taken before flush(), never after
                    self.flushed = True
                    self._start(self.chain.flush(final=True), 0)
                    continue
                self.ending = False  # told once
                self.next.end()
                break
            room = self.next.room()
            if room <= 0:
                break
            batch: list[Any] = []
            exc = None
            try:
                while len(batch) < room and (y := next(self.outputs, _END)) is not _END:
                    batch.append(y)
            except Exception as e:  # the run's failure, or an error over budget
                exc = e
            if batch:
                self.n_out += len(batch)
                self.next.put(batch)
                moved = True
            if exc is not None or len(batch) < room:  # the run is done
                run = self.run
                assert run is not None
                self.flow.recorder.add(self.first, run.stats, self.n_in, self.n_out, 0.0)
                self.run = self.outputs = None
                moved = True
                if exc is not None:
                    self._fail(exc)
                elif self.marks:
                    self._pass_marks()
        return moved

    def _start(self, run: Run, n_in: int) -> None:
        self.run, self.n_in, self.n_out = run, n_in, 0
        self.outputs = settled(run, self.flow.log, self.first)

    def _fail(self, exc: BaseException) -> None:
        self.flow.stop(self.index)
        self.put_failure(Failure(exc))
