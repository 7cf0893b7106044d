"""Waking the hub from other threads: futures done, and a thread stage's expansion parts.

The hub has no threads of its own and waits in one ``select``; other threads
(an executor's, a thread stage's, the async stages' loop) hand it what they
finished through a :class:`Waker`'s pipe::

   other thread: future done / Part ──► Waker._done (a deque) + one byte ──► pipe
   hub: select sees the pipe ──► Waker.drain() ──► Futures.on_wake

A thread stage's expanding chunk waits on its :class:`Tap` for credit to go on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from .._core.messages import Part


class Waker:
    """Futures finished on other threads, handed to the hub through a pipe.

    A byte is written only for the first future of a batch the hub has not
    taken yet: a write is a system call, which lets other threads take the
    GIL, so a byte per future would slow a burst of them down.
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        for fd in (self.fd, self._w):
            os.set_blocking(fd, False)
        self._done: deque[tuple[Any, Any]] = deque()  # (tag, a future or a Part)
        # Both threads test and change _done under it, so that a future queued
        # behind others is never left without a byte; and no write lands on a
        # closed, reused fd.
        self._lock = threading.Lock()
        self._closed = False

    def watch(self, future: Future[Any], tag: Any) -> None:
        future.add_done_callback(lambda f: self._ready(tag, f))

    def _ready(self, tag: Any, future: Future[Any] | Part) -> None:
        with self._lock:
            first = not self._done
            self._done.append((tag, future))
            if first and not self._closed:
                with contextlib.suppress(BlockingIOError):  # a byte is already waiting
                    os.write(self._w, b"\0")

    def part(self, tag: Any, part: Part) -> None:
        """A thread stage's part of an expansion, queued like a finished future."""
        self._ready(tag, part)

    def drain(self) -> list[tuple[Any, Any]]:
        # The pipe is read before the batch is taken: a future queued in between
        # is taken now, and its byte only wakes the hub once more for nothing.
        # Read after, that byte could go while the future stayed queued.
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        with self._lock:
            done = list(self._done)
            self._done.clear()
        return done

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
                os.close(self._w)


class Tap:
    """A thread stage's expanding chunk: its parts go to the hub through the
    waker, and its thread waits here for the credit to go on."""

    def __init__(self, waker: Waker, tag: Any) -> None:
        self.waker = waker
        self.tag = tag
        self._credit: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

    def send(self, part: Part) -> None:
        self.waker.part(self.tag, part)

    def wait(self) -> tuple[int, int] | None:
        return self._credit.get()

    def resume(self, credit: tuple[int, int] | None) -> None:
        self._credit.put(credit)
