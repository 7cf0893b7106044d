"""Segments: the bounded, ordered stretches of the stream between the input and the consumer.

A *segment* is a run of stages that runs as one: fused pool stages, linked
stateful stages, a thread stage, or master stages in the caller. Each holds
at most its ``batch_size`` inputs in flight, cuts what it receives into
chunks, hands them to its *backend* (worker processes, an executor, threads)
and releases the results downstream in input order, as far as downstream has
room. The last one releases into the :class:`~blpipe._hub.flow.Sink`, which the
consumer drains. A failure waits in its place, behind every earlier chunk.

Segments see the rest of the run only through a :class:`~blpipe._hub.flow.Flow`::

   put(items) ─► in_buf ─ dispatch(): chunks ─► backend.pack/post ══► where it runs
                                                                        │
   next.put() ◄─ release(): in order ◄─ records ◄─ complete / extend ◄──┘

A segment's own job is that queue: the in-flight bound, chunks out (whole
groups, with their windows' history, cut at a checkpoint's mark), results
in, and release in order with the errors settled. What has a state of its
own lives beside it: how large a chunk is (:mod:`blpipe._hub.sizing`), how far
an expansion runs ahead (:mod:`blpipe._hub.credit`), the waiting figures
(:class:`~blpipe._hub.flow.Waits`). This module is the hub's hot path, run once
per chunk: ``dispatch`` and ``release`` share the buffer, the record queue
and the bound, so they stay in one class, over 400 lines.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._core.run import AT_END
from .._core.shm import BIG, tune_malloc
from .._core.spec import StageSpec
from .._core.text import short_repr
from .._core.transport import dumps, first_unpicklable
from ..errors import SerializationError, WorkerDied
from .credit import Ahead
from .flow import Arrivals, Backend, Downstream, Failure, Flow, Record, Shown, Sink, Wait, Waits
from .settle import settle_chunk
from .sizing import Sizing

if TYPE_CHECKING:
    from .._core.messages import Result
    from .flow import Cut


class Segment:
    """Stages that run outside the caller's loop, on a :class:`Backend`."""

    def __init__(self, index: int, head: StageSpec, label: str, cap: int,
                 chunks: tuple[int, int], flow: Flow, nxt: Downstream, backend: Backend,
                 expands: bool = False, runs: int = 2, last: int | None = None,
                 sink: Sink | None = None) -> None:
        self.index = index
        self.first = head.index  # its first stage's
        self.last = head.index if last is None else last  # its last stage's
        self.label = label
        self.cap = cap
        self.window = head.window
        self.group = head.group  # it sends whole groups of this many inputs, but the last
        self.arrivals = Arrivals(head.group_wait) if head.group_wait is not None else None
        # An expansion's chunks start at one input, as each may make many outputs.
        self.ahead = Ahead(cap, chunks[0], flow.budget, sink) if expands else None
        self.credit = self.ahead.credit if self.ahead is not None else None
        self.sizing = Sizing(head.group, 1 if expands else chunks[0], chunks[1])
        self.ordered = head.ordered
        self.catch = head.on_error != "raise"  # then it is alone in its segment
        self.runs = runs  # times a call may run, each ended by its worker's death
        self.timeout = head.timeout  # a stage with a timeout is alone in its segment
        self.retries = head.retry.retries if head.retry else 0
        self.flow = flow
        self.next = nxt
        self.backend = backend
        self.in_buf: list[Any] = []  # at most cap items: taking from the front is cheap
        self.sent = 0  # inputs sent so far: where the next chunk starts in the stream
        self.records: deque[Record] = deque()  # chunks in flight, in input order
        self.marks: deque[tuple[int, Cut]] = deque()  # checkpoints' cuts: (before input, cut)
        self.inflight = 0
        self.history: deque[Any] | None = (deque(maxlen=self.window - 1) if self.window
                                           else None)
        self.upstream_failure: Failure | None = None
        self.closed = False  # takes no more input
        self.ended = False  # nothing more comes from upstream
        self.told = False  # and downstream has been told, once this one was done
        self.finishing = head.flush is not None  # a flush() is owed at the end (alone)
        self.waits = Waits()  # statistics: written here only, read from any thread

    @property
    def chunk(self) -> int:
        """Inputs in a chunk, now."""
        return self.sizing.chunk

    @property
    def item_bytes(self) -> float | None:
        """Serialized bytes per input, smoothed, once seen."""
        return self.sizing.item_bytes

    def figures(self) -> tuple[int, int, float, float]:
        """In flight, peak in flight, starved and blocked seconds."""
        w = self.waits
        return self.inflight, w.peak, w.starved, w.blocked

    def room(self) -> int:
        if self.closed:
            return 0
        return self.cap - len(self.in_buf) - self.inflight

    def put(self, items: list[Any]) -> None:
        if self.arrivals is not None:
            self.arrivals.came(self.sent + len(self.in_buf))
        self.in_buf.extend(items)

    def mark(self, cut: Cut) -> None:
        """A checkpoint's cut, after the inputs put so far."""
        self.marks.append((self.sent + len(self.in_buf), cut))
        self._pass_marks()

    def _pass_marks(self) -> None:
        """Let its cuts pass once every input before them is sent (but a
        partial group, which waits for later inputs: it is copied as it is)."""
        marks = self.marks
        while marks:
            pos, cut = marks[0]
            ahead = pos - self.sent  # inputs before the cut, not yet sent
            if ahead > 0 and (self.group is None or ahead >= self.group):
                return
            marks.popleft()
            if self.history is not None:
                cut.buffers[self.index] = list(self.history)
            elif ahead > 0:
                cut.buffers[self.index] = self.in_buf[:ahead]
            snapshot = getattr(self.backend, "snapshot", None)
            if snapshot is not None:  # a link of dedicated workers: each sends its State
                snapshot(self, cut)
            if self.records:
                self.records[-1].cuts.append(cut)  # it goes on once that chunk is released
            else:
                self._forward(cut)

    def _forward(self, cut: Cut) -> None:
        """A cut leaves, behind all it released: its error counts are final."""
        cut.leave(self.first, self.last, self.flow.log.counts)
        self.next.mark(cut)

    def restore(self, items: list[Any]) -> None:
        """A checkpoint's window history, or its open group, back in place."""
        if self.history is not None:
            self.history.extend(items)
        else:
            self.in_buf[:0] = items
            if self.arrivals is not None:
                self.arrivals.came(0)

    def end(self) -> None:
        """Nothing more comes from upstream: its last group may go unfilled."""
        self.ended = True
        self._check_end()

    def _check_end(self) -> None:
        if self.finishing and self.ended and self.idle() and (
                self.closed or self.flow.cut is None):  # state is saved before flush()
            self.finishing = False
            for place, msg in [] if self.closed else self.backend.last(self.index):
                self.post_last(place, dumps(msg))
        if self.ended and not self.told and not self.finishing and self.idle():
            self.told = True
            self.next.end()

    def post_last(self, place: Any, frame: Any) -> None:
        """Send ``frame``, a ``Flush``, to ``place``: a chunk of no input, after every
        chunk so far."""
        rec = Record(0, AT_END, frame)
        self._track(rec)
        self.backend.post(place, self, rec)

    def deadline(self) -> float | None:
        """When its oldest input waiting for a group is due to go anyway."""
        if self.arrivals is None or not self.in_buf:
            return None
        return self.arrivals.due(self.sent)

    def replace(self, rec: Record, news: list[Record]) -> None:
        """``rec``, in flight, is now ``news``: the same inputs, in order."""
        i = self.records.index(rec)
        del self.records[i]
        for j, new in enumerate(news):
            self.records.insert(i + j, new)
        if news:
            news[-1].cuts = rec.cuts  # a checkpoint's cut still follows the same inputs
        self.flow.meter.now -= rec.nbytes

    def put_failure(self, failure: Failure) -> None:
        if not self.closed:  # once closed, anything later is later in the stream
            self.upstream_failure = failure
            self.closed = True

    def idle(self) -> bool:
        return not (self.in_buf or self.records or self.upstream_failure)

    # -- results in --------------------------------------------------------------

    def complete(self, rec: Record, result: Result, nbytes: int = 0) -> None:
        """A chunk's results are in (``nbytes``: their serialized size)."""
        if rec.done:
            return  # cut short by an error over its budget: what comes now is later
        outputs, error, stats, seconds, skipped = result
        rec.frame = None
        self.extend(rec, outputs, skipped, nbytes)  # after an expansion's parts: one list
        if rec.n_in:
            self.sizing.worked(stats[0][0] if len(stats) == 1 else sum(s[0] for s in stats),
                               rec.n_in, self.backend.work)
        outs = rec.outs
        assert outs is not None
        # outputs are aligned, with None, until the errors gone past are settled on release
        n_out = (sum(1 for y in outs if y is not None) if skipped else len(outs)) + rec.trimmed
        rec.done = True
        self.flow.recorder.add(self.first, stats, rec.n_in, n_out, seconds)
        if error is not None:
            rec.failure = Failure(error.exception())
            self.flow.stop(self.index)

    def extend(self, rec: Record, outputs: list[Any], skipped: list[Any], nbytes: int) -> None:
        """Part of an expanding chunk's outputs are in (``nbytes`` serialized);
        its result comes later. Its results' bytes count from now on, in place
        of its inputs' at first."""
        if rec.done:
            return
        if rec.outs is None:
            self.flow.meter.add(nbytes - rec.nbytes)
            rec.nbytes = nbytes
            rec.outs = outputs
        else:
            self.flow.meter.add(nbytes)
            rec.nbytes += nbytes
            rec.outs.extend(outputs)
        if skipped:
            rec.skipped = [*(rec.skipped or ()), *skipped]

    def fail(self, rec: Record, exc: BaseException) -> None:
        """A chunk failed: ``exc`` after what it gave already, if anything."""
        rec.frame = None
        if rec.outs is None:
            rec.outs = []
        rec.failure = Failure(exc)
        rec.done = True
        self.flow.stop(self.index)

    # -- results out ---------------------------------------------------------------

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
                before = left
                ahead = self.ahead
                room_of = ahead.room if ahead is not None and ahead.spares(rec, left) \
                    else nxt.room
                # room is asked again after each put: a master segment downstream
                # may pass on fewer items than it takes
                while left and (room := room_of()) > 0:
                    take = min(left, room)
                    nxt.put(outs[rec.pos:rec.pos + take] if rec.pos or take < left else outs)
                    rec.pos += take
                    left -= take
                if left < before:
                    moved = True
                if left or not rec.done:
                    # their share of its bytes is counted downstream from now on
                    share = rec.nbytes * (before - left) // before
                    rec.nbytes -= share
                    self.flow.meter.now -= share
            if not rec.done:  # an expansion: more to come
                self._drained(rec)
                if ordered or left:
                    break
                i += 1
                continue
            if left:
                break
            if rec.failure is not None and i:
                i += 1  # raised once every chunk before it is out
                continue
            del records[i]
            self.inflight -= rec.n_in
            self.flow.meter.now -= rec.nbytes
            moved = True
            if rec.failure is not None:
                nxt.put_failure(rec.failure)
                self._close_failed()
                break
            for cut in rec.cuts:
                self._forward(cut)
        if self.ended:
            self._check_end()
        return moved

    def _drained(self, rec: Record) -> None:
        """Drop what an expansion passed on, and let it go on once half its
        credit is free: it makes the next outputs while downstream takes these."""
        assert self.ahead is not None
        credit = self.ahead.drained(rec)
        if credit is not None:
            self.backend.resume(self, rec, credit)

    def _close_failed(self) -> None:
        """It passed a failure on: what it still holds is later in the stream."""
        self.closed = True
        self.flow.meter.now -= sum(r.nbytes for r in self.records)
        self.records.clear()
        self.in_buf.clear()
        self.inflight = 0

    def _settle(self, rec: Record) -> list[Any]:
        """Settle the errors its stage went on past in this chunk; at one over
        budget, the chunk is cut there and fails."""
        # a stage with on_error is never fused: it is the segment's first
        exc = settle_chunk(self.flow.log, self.first, rec)
        if exc is not None:
            rec.failure = Failure(exc)
            rec.done = True  # nothing after it counts: its worker may stop whenever
            self.flow.stop(self.index)
        assert rec.outs is not None
        return rec.outs

    # -- chunks out ----------------------------------------------------------------

    def dispatch(self, final: bool) -> bool:
        """Send chunks while workers can queue them: full ones; with ``final``
        (upstream has nothing more to give now), also a partial one, but only
        while it has room or takes no more input: a full segment waits for its
        results, as sending what trickles in would lock the stream into one-item
        round trips. Returns whether anything can move at once: it put a failure
        in the stream, or its first inputs only filled its window."""
        if self.index <= self.flow.stop_upto:
            return False
        in_buf = self.in_buf
        backend = self.backend
        if in_buf and backend.death is not None:
            self._lost_state(backend.death)
            return True
        again = False
        g = self.group
        most = self.ahead.most if self.ahead is not None else None
        sizing = self.sizing
        while in_buf and (most is None or len(self.records) < most):
            # a chunk ends at a cut; all before it goes at once
            cut = sys.maxsize
            if self.marks:
                self._pass_marks()  # those the last chunk reached
                cut = self.marks[0][0] - self.sent if self.marks else cut
            chunk = sizing.chunk
            full = len(in_buf) >= min(chunk, cut)
            if not (full or (final and (self.closed or self.ended or self.room() > 0))):
                break
            n = min(len(in_buf), chunk, cut)
            if g is not None and n % g:
                n -= n % g  # whole groups only, but for the last, which goes when no
                if not n and not (self.closed or self.ended or self._due()):  # more comes
                    break
                n = n or len(in_buf)
            place = backend.pick(backend.depth if full else 1)
            if place is None:
                break
            if place.left is not None and n > place.left * (g or 1):  # max_tasks_per_child
                n = place.left * (g or 1)
            if n > 1 and sizing.item_bytes is None and g is None and \
                    sys.getsizeof(in_buf[0]) > BIG:
                n = 1  # sizes not yet seen, and a huge first item: it goes alone
            items = in_buf[:n]
            del in_buf[:n]
            if not self._send(place, items):
                again = True
                if self.index <= self.flow.stop_upto:  # it failed: the rest is later
                    break
        if self.marks:
            self._pass_marks()
        if not in_buf and self.upstream_failure is not None:
            self._track(Record(0, None, outs=[], failure=self.upstream_failure))
            self.upstream_failure = None
            return True
        if self.ended:
            self._check_end()
        return again

    def _due(self) -> bool:
        due = self.deadline()
        return due is not None and time.monotonic() >= due

    def _lost_state(self, death: tuple[str, int | None]) -> None:
        """A dedicated worker died: its state is lost, so the next input fails."""
        first = self.in_buf[0]
        self.in_buf.clear()
        label, exitcode = death
        died = WorkerDied(label, exitcode, short_repr(first) + " (the next input after the "
                          "death: the stage's state was lost)")
        self._track(Record(1, first, outs=[], failure=Failure(died)))
        self.flow.stop(self.index)

    def _send(self, place: Any, items: list[Any]) -> bool:
        """Send a chunk; ``False`` when it is done at once: it failed (an item
        would not pickle, the executor refused it), or it only fills the window."""
        payload = items
        start = self.sent
        self.sent += len(items)
        if self.history is not None:
            payload = [*self.history, *items]
            self.history.extend(items)
            if len(payload) < (self.window or 0):
                # not a full window yet: nothing to compute, but the inputs count
                self.flow.recorder.add(self.first, [[0.0, 0, 0, 0, 0]], len(items), 0, 0.0)
                return False
        try:
            packed = self.backend.pack(self.index, payload, place, self.credit)
        except Exception:
            self._unpicklable(place, items, payload, start)
            return False
        return self._post(place, items, payload, start, packed)

    def _post(self, place: Any, items: list[Any], payload: list[Any], start: int,
              packed: tuple[Any, int | None, int]) -> bool:
        frame, slot, nbytes = packed
        rec = Record(len(items), items[0], frame, slot)
        if nbytes:
            flow = self.flow
            if slot is not None:  # its first item is large: keep only what messages need
                rec.first = Shown(short_repr(items[0]))
                tune_malloc()
            if slot is not None or flow.budget is not None:  # sizes matter: follow them
                self.sizing.sent(nbytes, len(items))
            rec.nbytes = nbytes
            flow.meter.add(nbytes)
        rec.start = start
        if self.window:  # the windows of this chunk end at its inputs after these
            rec.offset = len(items) - (len(payload) - self.window + 1)
        self._track(rec)
        self.backend.post(place, self, rec)
        return rec.outs is None  # else the backend failed it at once

    def _track(self, rec: Record) -> None:
        """Count a chunk against the bound, in order."""
        self.records.append(rec)
        self.inflight += rec.n_in
        if self.inflight > self.waits.peak:
            self.waits.peak = self.inflight

    def _unpicklable(self, place: Any, items: list[Any], payload: list[Any],
                     start: int) -> None:
        """Send what pickles before the first item that does not, then fail there."""
        bad, err = first_unpicklable(items) or (0, TypeError("the chunk as a whole cannot be "
                                                             "pickled"))
        if bad:  # the segment stops at the bad item: its window history no longer matters
            prefix = payload[:len(payload) - len(items) + bad]
            self._post(place, items[:bad], prefix, start,
                       self.backend.pack(self.index, prefix, place, self.credit))
        exc = SerializationError(f"input {short_repr(items[bad])} for {self.label} cannot be "
                                 f"sent to its worker process: {type(err).__name__}: {err}")
        exc.__cause__ = err
        self._track(Record(1, items[bad], outs=[], failure=Failure(exc)))
        self.flow.stop(self.index)

    # -- statistics ----------------------------------------------------------------

    def sample(self, dt: float, more: bool) -> bool:
        """Put the ``dt`` seconds since the last sample down to what it was doing
        then, and look again; ``more``: input may still come from upstream.
        Returns whether it holds anything, which upstream of the next means more."""
        records = self.records
        busy = bool(self.in_buf or records)
        self.waits.sample(dt, Wait.BLOCKED if records and records[0].outs is not None else
                          Wait.STARVED if not busy and more and not self.closed else Wait.BUSY)
        return busy
