"""The stall watchdog: how long each stage's oldest call in flight has run, on what.

No call is timed for it, and no thread watches: a thread in a process makes
every ``malloc`` of that process take locks, which costs a pool worker about
15 % on cheap items. Instead::

    chain (any process)   Chain.hands: per thread, the step and the values it maps,
                          the outputs so far and when the step began (set per step
                          of a chunk; per call only on the lazy path)
    the caller's stages   statistics() reads their hands directly
    a worker process      the hub knows when its chunk began (chunks are sized
                          to a fraction of a millisecond of work); once that is
                          NAMED_AFTER ago it sends SIGUSR1, and the worker's
                          handler writes its hand on its Board (shared memory)
    async stages          each call's start, kept on the loop (Loop.running)
    an executor's tasks   when each was sent (Futures.sent)

A call's start is its step's start plus the stage's usual call for each
call before it in the chunk. A call that holds the GIL in C (a regular
expression gone exponential) keeps the handler from running: it is then
told by its chunk.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .chain import Chain
from .text import short_repr

NAMED_AFTER = 0.5  # seconds a worker's chunk runs before the hub asks which call is in hand
PROBE = signal.SIGUSR1
_ANSWER = 0.05  # seconds the hub waits for a worker's answer

Call = tuple[int, float, Any]
"""A call in flight: its stage's index, when it began, what it was given."""

Hand = tuple[int, int, float, Any]
"""What a thread has in hand: stage, calls before it in its step, when the step began
(the call's own start when that count is -1), the value."""


def in_chunk(n: int, first: Any) -> str:
    """The input of a call known only by its chunk: ``n`` inputs from ``first``."""
    return short_repr(first) if n == 1 else f"one of {n} inputs from {short_repr(first)}"


def oldest(calls: Iterable[Call]) -> dict[int, tuple[float, Any]]:
    """Per stage, its oldest call: ``{stage: (since, input)}``."""
    out: dict[int, tuple[float, Any]] = {}
    for stage, since, value in calls:
        if stage not in out or since < out[stage][0]:
            out[stage] = since, value
    return out


def hands(chains: Iterable[Chain], only: int | None = None) -> list[Hand]:
    """What the threads running ``chains`` (or thread ``only``) have in hand."""
    found: list[Hand] = []
    for chain in chains:
        for sub in (chain, *(t for t in chain.tails if isinstance(t, Chain))):
            for me, hand in list(sub.hands.items()):  # one step, under the GIL
                if only is not None and me != only:
                    continue
                if len(hand) == 3:  # a lazy run's call, timed as it began
                    step, value, since = hand
                    found.append((sub.steps[step].number, -1, since, value))
                    continue
                step, values, outs, began = hand
                k = len(outs)
                if k < len(values):  # else between two steps
                    found.append((sub.steps[step].number, k, began, values[k]))
    return found


def since(hand: Hand, usual: Sequence[float], now: float) -> float:
    """When the call in ``hand`` began: after the ``k`` calls before it, at the
    stage's ``usual`` pace."""
    stage, k, began, _ = hand
    return began if k <= 0 else min(now, began + k * usual[stage])


# -- a worker process's board --------------------------------------------------

SIZE = 256  # bytes of shared memory per worker
_HEAD = struct.Struct("<6d")  # version (odd while written), task, stage, calls before, began,
# length of the input's repr, which follows


class Board:
    """What a worker had in hand when the hub last asked, in shared memory.

    Written by the worker's signal handler, read by the hub: a version that is
    odd while a write is under way tells the reader to read again.
    """

    def __init__(self, raw: Any) -> None:
        self.buf = memoryview(raw).cast("B")

    def write(self, task: int, hand: Hand | None) -> None:
        buf = self.buf
        version = _HEAD.unpack_from(buf)[0]
        struct.pack_into("<d", buf, 0, version + 1)
        stage, k, began, text = -1, 0, 0.0, b""
        if hand is not None:
            stage, k, began, value = hand
            text = short_repr(value).encode("utf-8", "replace")[:SIZE - _HEAD.size]
            buf[_HEAD.size:_HEAD.size + len(text)] = text
        _HEAD.pack_into(buf, 0, version + 1, task, stage, k, began, len(text))
        struct.pack_into("<d", buf, 0, version + 2)

    def version(self) -> float:
        return float(_HEAD.unpack_from(self.buf)[0])

    def read(self) -> tuple[int, Hand | None] | None:
        """``(task, hand)``, the hand's value as text; ``None`` when no consistent
        copy could be read."""
        buf = self.buf
        for _ in range(3):
            version, task, stage, k, began, length = _HEAD.unpack_from(buf)
            text = bytes(buf[_HEAD.size:_HEAD.size + int(length)])
            if version % 2 == 0 and _HEAD.unpack_from(buf)[0] == version:
                hand = None if stage < 0 else (int(stage), int(k), began,
                                                text.decode("utf-8", "replace"))
                return int(task), hand
        return None


def answer_probes(raw: Any, chains: Sequence[Chain], task: Any) -> None:
    """In a worker process: on the hub's ``PROBE``, write the main thread's hand,
    and ``task()`` (the task it runs), on the board in ``raw``. Its calls'
    system calls are restarted after the handler, not interrupted."""
    board = Board(raw)
    main = threading.get_ident()

    def show(signum: int, frame: Any) -> None:
        with contextlib.suppress(Exception):  # a repr that fails: the hub falls back
            found = hands(chains, main)
            board.write(task(), min(found, key=lambda h: h[2]) if found else None)

    signal.signal(PROBE, show)
    signal.siginterrupt(PROBE, False)
    board.write(-1, None)  # ready: until then, a probe would end the process


def ask(boards: list[Board]) -> None:
    """Wait, briefly, for the workers just probed to write their boards."""
    before = [b.version() for b in boards]
    deadline = time.monotonic() + _ANSWER
    while time.monotonic() < deadline:
        if all(b.version() != v and b.version() % 2 == 0
               for b, v in zip(boards, before, strict=True)):
            return
        time.sleep(0.002)
