"""Chunks run on a ``concurrent.futures.Executor``: a thread stage's, or the user's.

The hub has no threads of its own and waits in one ``select``, but an
executor completes futures on its threads. A done callback queues the future
and writes a byte to a pipe the hub selects on, so a finished chunk is seen
at once, without polling.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections import deque
from concurrent.futures import BrokenExecutor, Executor, Future
from typing import Any

from ._cpu import usable_cpu_count
from .errors import BrokenPipeline, SerializationError, WorkerDied


class Lane:
    """A place on an executor, as the hub sees it: the chunks queued there.

    An executor runs tasks in any order it likes; lanes only spread chunks
    over it the way workers do, so that ``batch_size`` and the per-worker
    queue depth mean the same thing on both.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[Any] = []


class Waker:
    """Futures finished on other threads, handed to the hub through a pipe."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        for fd in (self.fd, self._w):
            os.set_blocking(fd, False)
        self._done: deque[tuple[Any, Future[Any]]] = deque()
        self._lock = threading.Lock()  # so no write lands on a closed, reused fd
        self._closed = False

    def watch(self, future: Future[Any], tag: Any) -> None:
        future.add_done_callback(lambda f: self._ready(tag, f))

    def _ready(self, tag: Any, future: Future[Any]) -> None:
        self._done.append((tag, future))
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # a byte is already waiting
                    os.write(self._w, b"\0")

    def drain(self) -> list[tuple[Any, Future[Any]]]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
                os.close(self._w)


def width(executor: Executor) -> int:
    """How many tasks ``executor`` runs at once, as far as it tells."""
    n = getattr(executor, "_max_workers", None)  # ProcessPoolExecutor, ThreadPoolExecutor, loky
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(executor, "_client", None)  # dask.distributed's ClientExecutor
    if client is not None:
        with contextlib.suppress(Exception):
            n = sum(client.nthreads().values())
            if n > 0:
                return int(n)
    return usable_cpu_count()


def check_executor(executor: object) -> None:
    if not (callable(getattr(executor, "submit", None)) and hasattr(executor, "shutdown")):
        raise TypeError(f"executor={executor!r} is not a concurrent.futures.Executor: it needs "
                        f"submit() and shutdown(); for Dask, pass client.get_executor()")


def lost(exc: BaseException, label: str, where: str) -> BaseException:
    """What the consumer gets when the executor, not the stage, failed a chunk.

    A stage's own exception travels inside the task's result; anything the
    future itself raises comes from the executor: a lost worker, or an item
    or result it could not serialize.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, pickle.PicklingError) or "pickl" in text.lower() or "serializ" in \
            text.lower():
        err: BaseException = SerializationError(
            f"the executor could not send the chunk starting at input {where} of {label} or "
            f"its results: {text}")
    elif isinstance(exc, BrokenExecutor) or type(exc).__name__ == "KilledWorker":
        err = WorkerDied(label, None, f"{where} (the executor reports {text})")
    else:
        err = BrokenPipeline(f"the executor failed to run {label} on the chunk starting at "
                             f"input {where}: {text}")
    err.__cause__ = exc
    return err
