"""What flows between segments, and what they share with the hub.

A :class:`Record` is a chunk in flight, counted against its segment's bound
until its results are released downstream; the :class:`Sink` holds outputs
for the consumer; :class:`Flow` is all a segment may touch of the run: where
the stream is cut after a failure, the figures, the error log and the byte
:class:`Meter`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ._failures import Failure, Skipped
from ._spec import short_repr

if TYPE_CHECKING:
    from ._recorder import Recorder
    from .errorlog import ErrorLog


class Meter:
    """Serialized bytes of the chunks in flight, what ``max_bytes_in_flight`` bounds."""

    __slots__ = ("now", "peak")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def add(self, n: int) -> None:
        self.now += n
        if self.now > self.peak:
            self.peak = self.now


class Flow:
    """What segments share with the hub: where the stream is cut, the figures, the errors."""

    __slots__ = ("stop_upto", "recorder", "log", "meter", "budget")

    def __init__(self, recorder: Recorder, log: ErrorLog, budget: int | None) -> None:
        self.stop_upto = -1  # segments up to this one take no more input
        self.recorder = recorder
        self.log = log
        self.meter = Meter()
        self.budget = budget

    def stop(self, index: int) -> None:
        """A failure at segment ``index``: what is upstream of it is later in the
        stream and no longer needed, so stop feeding it."""
        if index > self.stop_upto:
            self.stop_upto = index


class Record:
    """A chunk in flight: ``outs`` is set once its results are in (or begin to
    come in, for an expansion: ``done`` says when they all are).

    ``first`` is its first input (for messages), ``frame`` what was sent
    (kept until the results are in, to send again if its worker dies before
    starting it), ``slot`` the shared memory slot of its large inputs.
    ``start`` is the index of its first input in its segment's stream and
    ``offset`` how many of its inputs complete no window: with them an error
    gone past (``skipped``) is placed in the stream when the chunk is released.
    """

    __slots__ = ("n_in", "first", "frame", "slot", "outs", "pos", "failure", "start", "offset",
                 "skipped", "nbytes", "done", "place", "paused", "trimmed", "expanding")

    def __init__(self, n_in: int, first: Any, frame: Any = None, slot: int | None = None,
                 outs: list[Any] | None = None, failure: Failure | None = None) -> None:
        self.n_in = n_in
        self.first = first
        self.frame = frame
        self.slot = slot
        self.outs = outs
        self.pos = 0  # outputs already released
        self.failure = failure
        self.start = 0
        self.offset = 0
        self.skipped: list[Skipped] | None = None
        self.nbytes = 0  # serialized: its inputs', then its results' once they are in
        self.done = outs is not None  # all its results are in (outs may be partial)
        self.place: Any = None  # where it runs: where a paused expansion goes on
        self.paused: int | None = None  # its expansion waits for room, under this name
        self.trimmed = 0  # outputs of an expansion passed on and dropped from outs
        self.expanding: str | None = None  # the input an expansion last sent outputs of

    def where(self) -> str:
        """The input a failure of the whole chunk is placed at, as messages show it."""
        if self.expanding is not None:  # a part came: its input, or a later one
            return f"{self.expanding} or an input after it in its chunk"
        where = short_repr(self.first)
        if self.n_in > 1:
            where += f" or one of the {self.n_in - 1} inputs after it in its chunk"
        return where


class Shown:
    """Stands for an item in messages (its ``repr``) without keeping it alive."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Sink:
    """Outputs ready for the consumer, kept in the chunks they came in."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: deque[list[Any]] = deque()
        self.held = 0  # items in chunks, not yet handed to the consumer
        self.failure: Failure | None = None
        self.ended = False  # every output is in

    def room(self) -> int:
        return self.cap - self.held

    def put(self, items: list[Any]) -> None:
        self.chunks.append(items)
        self.held += len(items)

    def put_failure(self, failure: Failure) -> None:
        if self.failure is None:  # the first is the earliest in the stream
            self.failure = failure

    def end(self) -> None:
        self.ended = True
