"""The stall watchdog: how long each stage's oldest call in flight has run, on what.

No call is timed for it. A chain shows what each thread running it has in
hand (``Chain.hands``, set once per step of a chunk, and per call only on the
lazy path), and a *watcher* thread looks at it every ``PERIOD`` seconds: a
call still in hand at its next look began before the last one. So an age is
known to within ``PERIOD``, at no cost per mapped call::

    worker process   main thread: Chain.run --hands--> watcher thread --writes--> Board
                                                                       (shared memory)
    calling process  thread and master stages' chains --hands--> watcher thread
                     async stages: each call's start, kept on the loop (Loop.running)
                     an executor's tasks: when each was sent (Futures.sent)
    hub              statistics() --Hub.stalls()--> per stage: oldest call, age, input

A call that holds the GIL in C (a regular expression gone exponential) keeps
its worker's watcher from running: the board's heartbeat stops, and the hub
then tells the call from its own side, as running since that heartbeat, in
the chunk the worker holds.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from ._chain import Chain
from ._spec import short_repr

PERIOD = 0.2  # seconds between two looks at what the chains have in hand
NAMED_AFTER = 0.5  # seconds in hand before a worker's watcher writes the input's repr
STALE = 3 * PERIOD  # a heartbeat older than this: the watcher cannot run

Call = tuple[int, float, Any]
"""A call in flight: its stage's index, when it began, the value it was given."""


def in_chunk(n: int, first: Any) -> str:
    """The input of a call known only by its chunk: ``n`` inputs from ``first``."""
    return short_repr(first) if n == 1 else f"one of {n} inputs from {short_repr(first)}"


def oldest(calls: Iterable[tuple[int, float, Any]]) -> dict[int, tuple[float, Any]]:
    """Per stage, its oldest call: ``{stage: (since, input)}``."""
    out: dict[int, tuple[float, Any]] = {}
    for stage, since, value in calls:
        if stage not in out or since < out[stage][0]:
            out[stage] = since, value
    return out


class Watcher:
    """What some chains have in hand, and since when, as seen at each :meth:`look`."""

    def __init__(self, chains: Iterable[Chain]) -> None:
        self.chains: list[Chain] = []
        for chain in chains:  # with the plain steps that run over an expansion's blocks
            self.chains.append(chain)
            self.chains.extend(t for t in chain.tails if isinstance(t, Chain))
        self.seen: dict[tuple[int, int], tuple[Any, float]] = {}
        self.last = time.monotonic()
        self.calls: list[Call] = []  # at the last look

    def look(self, now: float) -> list[Call]:
        seen = {}
        calls = []
        for n, chain in enumerate(self.chains):
            for me, hand in list(chain.hands.items()):  # one step, under the GIL
                if len(hand) == 3:  # a lazy run's call, timed as it began
                    step, value, since = hand
                else:  # a step mapped over values: its call on the first without output
                    step, values, outs, began = hand
                    k = len(outs)
                    if k >= len(values):
                        continue
                    value = values[k]
                    key = (step, began, k)
                    prev = self.seen.get((n, me))
                    since = (prev[1] if prev is not None and prev[0] == key else
                             began if k == 0 else max(began, self.last))
                    seen[n, me] = key, since
                calls.append((chain.steps[step].number, since, value))
        self.seen = seen
        self.last = now
        self.calls = calls
        return calls


class Looker:
    """A daemon thread that runs ``then(watcher.look(now))`` every ``PERIOD``."""

    def __init__(self, watcher: Watcher, then: Any = None) -> None:
        self.watcher = watcher
        self.then = then
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="blpipe watchdog", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while not self._stop.wait(PERIOD):
            now = time.monotonic()
            with contextlib.suppress(Exception):  # a repr that fails: look again later
                calls = self.watcher.look(now)
                if self.then is not None:
                    self.then(now, calls)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


# -- a worker process's board --------------------------------------------------

SIZE = 256  # bytes of shared memory per worker
_HEAD = struct.Struct("<5d")  # version (odd while written), heartbeat, stage, since, length


class Board:
    """One worker's oldest call, as its watcher last saw it, in shared memory.

    Written by the worker's watcher, read by the hub: a version that is odd
    while a write is under way tells the reader to read again.
    """

    def __init__(self, raw: Any) -> None:
        self.buf = memoryview(raw).cast("B")
        self.named: tuple[int, float] | None = None  # the call whose input is written
        self._length = 0.0

    def write(self, now: float, calls: list[Call]) -> None:
        buf = self.buf
        version = _HEAD.unpack_from(buf)[0]
        struct.pack_into("<d", buf, 0, version + 1)
        stage, since, length = -1.0, 0.0, 0.0
        if calls:
            s, since, value = min(calls, key=lambda c: c[1])
            stage = float(s)
            if now - since >= NAMED_AFTER:
                if self.named != (s, since):
                    text = short_repr(value).encode("utf-8", "replace")[:SIZE - _HEAD.size]
                    buf[_HEAD.size:_HEAD.size + len(text)] = text
                    self.named = s, since
                    self._length = float(len(text))
                length = self._length
        _HEAD.pack_into(buf, 0, version + 1, now, stage, since, length)
        struct.pack_into("<d", buf, 0, version + 2)

    def read(self) -> tuple[float, int, float, str | None] | None:
        """``(heartbeat, stage, since, input)``: ``stage`` is -1 between calls, and
        ``input`` is ``None`` until the call has run ``NAMED_AFTER``; ``None``
        when no consistent copy could be read."""
        buf = self.buf
        for _ in range(3):
            version, beat, stage, since, length = _HEAD.unpack_from(buf)
            text = bytes(buf[_HEAD.size:_HEAD.size + int(length)])
            if version % 2 == 0 and _HEAD.unpack_from(buf)[0] == version:
                return beat, int(stage), since, text.decode("utf-8", "replace") if length \
                    else None
        return None


def watch_worker(raw: Any, chains: Iterable[Chain]) -> Looker:
    """In a worker process: show its chains' oldest call on the board in ``raw``."""
    board = Board(raw)
    board.write(time.monotonic(), [])  # a heartbeat at once: a call may take the GIL next
    return Looker(Watcher(chains), board.write)
