"""The input, read in a thread of its own, when a group may go on after a wait.

The hub pulls input with ``next()`` in its own loop, which is the cheapest
way and the laziest. But a live source blocks in ``next()`` until its next
item comes, and with ``group_wait`` a partial group must go on while it
does. So then a :class:`Feeder` thread calls ``next()``, only as far as the
hub has asked (the bounds hold as before), and wakes the hub through a pipe
in its ``select`` for each item it gets.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from .._core.transport import Poller

END = object()  # the input is exhausted


class Feeder:
    """Calls ``next()`` on the input in a thread, for the hub to take from."""

    def __init__(self, inputs: Iterator[Any], poller: Poller, parent_fds: list[int]) -> None:
        self.inputs = inputs
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
            parent_fds.append(fd)
        poller.register(self._r, poller.READ, self._drain)
        self._items: deque[Any] = deque()  # read, not yet taken
        self._asked = 0  # items the hub has room for, beyond those
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="blpipe input", daemon=True)
        self._thread.start()

    def take(self, room: int) -> list[Any]:
        """Up to ``room`` items read so far (``END`` last, once the input is done);
        the thread reads on until ``room`` items wait."""
        with self._cond:
            items = self._items
            taken = [items.popleft() for _ in range(min(room, len(items)))]
            self._asked = max(0, room - len(taken) - len(items))
            if self._asked:
                self._cond.notify()
        return taken

    def take_within(self, room: int, left: float | None,
                    avg: float) -> tuple[list[Any], bool]:
        """What the thread has read, up to ``room`` items (fewer under a byte
        budget with ``left`` bytes, by their average size ``avg``), and whether
        the input ended."""
        if left is not None:
            if not left:
                return [], False
            if avg:
                room = max(1, min(room, int(left // avg)))
        raw = self.take(room)
        ended = bool(raw) and raw[-1] is END
        if ended:
            raw.pop()
        return raw, ended

    def _read(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._asked and not self._closed:
                    cond.wait()
                if self._closed:
                    return
                self._asked -= 1
            x = next(self.inputs, END)  # the input is guarded: its error is an item
            with cond:
                if self._closed:  # its pipe may be gone, and its number reused
                    return
                self._items.append(x)
                with contextlib.suppress(BlockingIOError):  # a byte already waits
                    os.write(self._w, b"\0")
            if x is END:
                return

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._r, 4096):
                pass

    def close(self, grace: float) -> None:
        """Stop reading; a thread blocked in the input's ``next()`` ends when it returns."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            os.close(self._r)
            os.close(self._w)
        self._thread.join(grace)


def take_within(it: Iterator[Any], room: int, left: float | None,
                avg: float) -> tuple[list[Any], bool]:
    """Up to ``room`` items of ``it`` that a byte budget with ``left`` bytes
    has room for, and whether the input ended.

    Each item is reckoned at ``sys.getsizeof`` (the whole buffer for bytes,
    bytearray, str and NumPy arrays) or at the recent average serialized size
    per item ``avg``, whichever is larger, and items are taken until the room
    left is used up: the last one may pass it. With nothing in flight one is
    always taken, so that an item larger than the budget still goes alone.
    """
    if left is not None and not left:
        return [], False
    raw: list[Any] = []
    room_left = float("inf") if left is None else left
    while len(raw) < room and (room_left > 0 or not raw):
        x = next(it, END)
        if x is END:
            return raw, True
        raw.append(x)
        room_left -= max(sys.getsizeof(x), avg)
    return raw, False
