"""What flows between segments, what they share with the hub, and where they send chunks.

A :class:`Record` is a chunk in flight, counted against its segment's bound
until its results are released downstream; the :class:`Sink` holds outputs
for the consumer; :class:`Flow` is all a segment may touch of the run: where
the stream is cut after a failure, the figures, the error log and the byte
:class:`Meter`.
"""

from __future__ import annotations

import enum
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._core.failures import Skipped
from .._core.text import short_repr

if TYPE_CHECKING:
    from .._core.messages import Credit
    from ..errorlog import ErrorLog
    from .recorder import Recorder
    from .segments import Segment


@dataclass
class Cut:
    """A checkpoint under way, filled in as it passes each segment."""

    inputs: int
    states: dict[int, bytes] = field(default_factory=dict)  # stage -> pickled callable
    chains: dict[int, bytes] = field(default_factory=dict)  # master segment -> windows, groups
    buffers: dict[int, list[Any]] = field(default_factory=dict)  # segment -> history, group
    errors: dict[int, int] = field(default_factory=dict)  # stage -> errors before the cut
    keyed: dict[int, list[bytes]] = field(default_factory=dict)  # stage -> replicas' keys
    books: dict[int, Any] = field(default_factory=dict)  # keyed stage -> its book of keys
    waiting: set[tuple[int, int]] = field(default_factory=set)  # (stage, replica) to come
    failed: str | None = None  # why a stage's state would not pickle

    def leave(self, first: int, last: int, counts: Sequence[int]) -> None:
        """It leaves the segment of stages ``first`` to ``last``, behind all that
        segment released: their error counts are final."""
        for i in range(first, last + 1):
            self.errors[i] = counts[i]


class Failure:
    """An exception travelling down the stream in place of an item."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


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

    __slots__ = ("stop_upto", "recorder", "log", "meter", "budget", "cut")

    def __init__(self, recorder: Recorder, log: ErrorLog, budget: int | None) -> None:
        self.stop_upto = -1  # segments up to this one take no more input
        self.recorder = recorder
        self.log = log
        self.meter = Meter()
        self.budget = budget
        self.cut: Cut | None = None  # the checkpoint under way

    def stop(self, index: int) -> None:
        """A failure at segment ``index``: what is upstream of it is later in the
        stream and no longer needed, so stop feeding it."""
        if index > self.stop_upto:
            self.stop_upto = index

    def stop_all(self) -> None:
        """A failure of the run itself (a worker could not load its stages): no
        segment takes more input."""
        self.stop_upto = sys.maxsize


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
                 "skipped", "nbytes", "done", "place", "paused", "trimmed", "expanding", "calls",
                 "tries", "seq", "cuts")

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
        self.calls = 0  # 1 for a chunk of one call: one run again after its worker died
        self.tries = 0  # times it ran before, each ended by its worker's death
        self.seq = 0  # its number among the tasks sent to its worker
        self.cuts: list[Any] = []  # checkpoints that follow it downstream, once released

    def where(self) -> str:
        """The input a failure of the whole chunk is placed at, as messages show it."""
        if self.expanding is not None:  # a part came: its input, or a later one
            return f"{self.expanding} or an input after it in its chunk"
        where = short_repr(self.first)
        if self.n_in > 1:
            where += f" or one of the {self.n_in - 1} inputs after it in its chunk"
        return where


class Arrivals:
    """When inputs came, for a partial group's ``group_wait``."""

    __slots__ = ("wait", "_times")

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._times: deque[tuple[int, float]] = deque()  # (first input of a put, when)

    def came(self, index: int) -> None:
        self._times.append((index, time.monotonic()))

    def due(self, oldest: int) -> float:
        """When input ``oldest``, the oldest still waiting, is due to go."""
        times = self._times
        while len(times) > 1 and times[1][0] <= oldest:
            times.popleft()
        return times[0][1] + self.wait


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
        self.chunks: deque[Any] = deque()  # lists of outputs, and checkpoints' cuts
        self.held = 0  # items in chunks, not yet handed to the consumer
        self.failure: Failure | None = None
        self.ended = False  # every output is in

    def room(self, spare: int = 0) -> int:
        """How many more outputs it takes: ``spare`` is an expansion's room
        for small outputs, which it holds either way (see ``Segment._room``)."""
        return max(self.cap, spare) - self.held

    def put(self, items: list[Any]) -> None:
        self.chunks.append(items)
        self.held += len(items)

    def put_failure(self, failure: Failure) -> None:
        if self.failure is None:  # the first is the earliest in the stream
            self.failure = failure

    def mark(self, cut: Cut) -> None:
        """A checkpoint's cut, behind the outputs before it: the consumer's loop
        completes it when the consumer asks for the output after them."""
        self.chunks.append(cut)

    def end(self) -> None:
        self.ended = True


class Downstream(Protocol):
    """What a segment hands its outputs to: the next segment, or the sink."""

    def room(self) -> int:
        """How many more items it takes now."""

    def put(self, items: list[Any]) -> None:
        """Items, in stream order, after all put before."""

    def put_failure(self, failure: Failure) -> None:
        """The stream fails here, after all put before."""

    def mark(self, cut: Cut) -> None:
        """A checkpoint's cut, after all put before."""

    def end(self) -> None:
        """Nothing more comes."""


class Backend(Protocol):
    """Where a segment's chunks run: pool workers, a link, an executor, threads."""

    depth: int  # chunks queued per place: one running, the rest ready behind it
    work: float  # seconds of stage work a chunk aims at
    death: tuple[str, int | None] | None  # a dedicated worker died: which stage's, and how

    def pick(self, limit: int) -> Any:
        """The least loaded place with fewer than ``limit`` chunks, or ``None``."""

    def pack(self, segment: int, payload: list[Any], place: Any,
             credit: Credit | None = None) -> tuple[Any, int | None, int]:
        """What to send, its shared memory slot and its bytes; raises when it won't
        pickle. An expansion may send what ``credit`` allows, then pauses."""

    def post(self, place: Any, segment: Segment, rec: Record) -> None:
        """Send ``rec`` to ``place``; the result comes back through ``complete``."""

    def resume(self, segment: Segment, rec: Record, credit: Credit) -> None:
        """Let ``rec``'s paused expansion send what ``credit`` allows."""

    def last(self, segment: int) -> list[tuple[Any, Any]]:
        """What to ask for a ``flush()`` at the end of the input: each place that
        holds a copy of a stateful stage, with its ``Flush`` message."""


class Wait(enum.Enum):
    """What a segment was doing at the last sample, for its starved and blocked time."""

    BUSY = 0  # working, or idle because the stream is over
    STARVED = 1  # nothing to do while more input may come
    BLOCKED = 2  # a finished chunk held back by a full downstream


class Waits:
    """A segment's waiting figures: its peak in flight, and the seconds it sat
    starved or blocked, sampled by the hub's ticks."""

    __slots__ = ("peak", "starved", "blocked", "state")

    def __init__(self) -> None:
        self.peak = 0
        self.starved = 0.0
        self.blocked = 0.0
        self.state = Wait.BUSY  # at the last sample

    def sample(self, dt: float, state: Wait) -> None:
        """The ``dt`` seconds since the last sample go to what it was doing then."""
        if self.state is Wait.STARVED:
            self.starved += dt
        elif self.state is Wait.BLOCKED:
            self.blocked += dt
        self.state = state
