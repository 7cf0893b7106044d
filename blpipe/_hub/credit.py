"""How far a segment's expansions run ahead of the consumer: their credit.

An expanding chunk's worker sends its outputs in parts, each within a
:class:`~blpipe._core.messages.Credit` (outputs, bytes), then pauses. The hub
resumes it with fresh credit once half of it is free, so the worker makes
the next outputs while downstream takes these::

   worker ── Part (≤ credit) ──► Segment: rec.outs ── release ──► downstream
      ▲                                                  │ taken: half free?
      └────────────── Resume(credit - held) ◄────────────┘

A segment's expanding chunks share ``AHEAD`` outputs and ``AHEAD_BYTES``
(or half the byte budget), whatever its bound on inputs: each round trip
passes that many on, so a small share would be slow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.messages import Credit

if TYPE_CHECKING:
    from .flow import Record, Sink

AHEAD = 1024  # outputs of expansions a segment may hold in the caller, at least
AHEAD_BYTES = 8 << 20  # and bytes of them, at most (but one output per chunk)


class Ahead:
    """The credit of a segment's expanding chunks, of which at most ``most`` are in flight."""

    __slots__ = ("most", "credit", "sink")

    def __init__(self, cap: int, chunk: int, budget: int | None, sink: Sink | None) -> None:
        # one running and one queued per worker, each of one input at first
        self.most = max(1, cap // max(1, chunk))
        nbytes = AHEAD_BYTES if budget is None else min(AHEAD_BYTES, budget // 2)
        self.credit = Credit(max(1, chunk, AHEAD // self.most), max(1, nbytes // self.most))
        self.sink = sink  # the consumer's buffer, where the segment is the last

    def spares(self, rec: Record, left: int) -> bool:
        """Whether the consumer's buffer takes ``rec``'s ``left`` outputs past its bound.

        It holds ``batch_size`` outputs: a round trip per output at the
        default of 1. An expansion's outputs are in the caller already,
        counted against its credit until the consumer takes them, so where
        they are small the buffer takes as many as the credit allows
        (:meth:`room`), and they go out at C speed.
        """
        credit = self.credit
        return self.sink is not None and rec.nbytes * credit.outputs <= credit.nbytes * left

    def room(self) -> int:
        """The consumer's buffer's room for small outputs of an expansion."""
        assert self.sink is not None
        return self.sink.room(self.credit.outputs)

    def drained(self, rec: Record) -> Credit | None:
        """Drop what ``rec``'s expansion passed on; the credit to resume it
        with, once half its credit is free and it is paused."""
        outs = rec.outs or []  # set: its first part is in
        held = len(outs) - rec.pos
        if self.sink is not None:  # what the consumer's buffer holds past its bound
            held += max(0, self.sink.held - self.sink.cap)
        if rec.pos * 2 >= len(outs):  # copied, not cut in place: downstream may hold outs
            rec.trimmed += rec.pos
            rec.outs = outs[rec.pos:]
            rec.pos = 0
        credit = self.credit
        if rec.paused is not None and held <= credit.outputs // 2 and \
                rec.nbytes <= credit.nbytes // 2:
            return Credit(credit.outputs - held, credit.nbytes - rec.nbytes)
        return None
