"""The input side of one ``apply``: how much input the first segment takes, and when.

The consumer's loop pulls a chunk at a time into the first segment, as far as
its bound has room, by one of three ways::

   plain                  islice(inputs, room)               the cheapest, and lazy
   max_bytes_in_flight    take_within: stop once the bytes   one chunk sent at a time,
                          of what was taken reach the budget so each is counted
   a group_wait           a Feeder thread calls next()       a live source may block
                                                             while a group is due

A checkpoint's cut is placed behind the inputs pulled when it falls due.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._core.transport import Poller
from .feeder import Feeder, take_within
from .flow import Failure, Flow
from .segments import Segment

if TYPE_CHECKING:
    from .checkpoints import Cuts
    from .flow import Downstream


class Intake:
    """Pulls the input into the head of the stream (the first segment, or the sink)."""

    def __init__(self, flow: Flow, head: Downstream, first: Segment | None, threaded: bool,
                 cuts: Cuts | None, poller: Poller, parent_fds: list[int]) -> None:
        self.inputs: Iterator[Any] = iter(())  # set by the consumer's loop
        self.flow = flow
        self.head = head
        self.first = first  # the first segment outside the caller: chunks are its size
        self.threaded = threaded  # a group_wait: read in a Feeder thread
        self.cuts = cuts
        self.poller = poller
        self.parent_fds = parent_fds
        self.feeder: Feeder | None = None
        self.done = False  # the input is exhausted, or failed

    def more(self) -> bool:
        """Input may still come."""
        return not self.done and self.flow.stop_upto < 0

    def reading(self) -> bool:
        """A thread reads the input: it wakes the hub when it has read."""
        return self.feeder is not None and not self.done

    def pull(self) -> bool:
        """Pull up to a chunk of input into the head; ``True`` when it took all
        it asked for, so more may be taken now."""
        if not self.more():
            return False
        flow = self.flow
        first = self.first
        room = min(self.head.room(), first.chunk if first is not None else 64)
        if room <= 0:
            return False
        start = perf_counter()
        if self.threaded:
            if self.feeder is None:
                self.feeder = Feeder(self.inputs, self.poller, self.parent_fds)
            raw, ended = self.feeder.take_within(room, *self._budget())
            if not (raw or ended):
                return False
        elif flow.budget is None:
            raw = list(islice(self.inputs, room))
            ended = len(raw) < room
        elif first is not None and first.in_buf:
            return False  # what was pulled last is not sent yet, and so not counted
        else:
            raw, ended = take_within(self.inputs, room, *self._budget())
        flow.recorder.input += perf_counter() - start
        failure = None
        if raw and type(raw[-1]) is Failure:  # the input's error ends it, full batch or not
            failure = raw.pop()
            self.done = True
        elif ended:
            self.done = True
        batch = [x for x in raw if x is not None]
        if batch:
            self.head.put(batch)
        if failure is not None:
            self.head.put_failure(failure)
            return False
        if self.cuts is not None:
            self.cuts.pulled(len(raw), self.done, flow, self.head)
        if self.done:
            self.head.end()
        return not self.done and len(raw) == room

    def _budget(self) -> tuple[float | None, float]:
        """Bytes the budget has room for now (``None``: no budget; ``0``: none,
        while something is in flight), and the recent bytes per input item."""
        first = self.first
        avg = (first.item_bytes if first is not None else None) or 0.0
        if self.flow.budget is None:
            return None, avg
        meter = self.flow.meter
        left = self.flow.budget - meter.now
        return (0.0 if left <= 0 and meter.now else max(left, 1.0)), avg

    def close(self, grace: float) -> None:
        if self.feeder is not None:
            self.feeder.close(grace)
