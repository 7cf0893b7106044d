"""The event loop thread of a run's async stages, and the one place where an async call happens.

One :class:`LoopThread` per run serves every async stage (:mod:`blpipe._hub.aio`);
each call is :func:`call_one`, awaited to its end::

   the hub ─ LoopThread.soon(callback) ─► the loop thread: tasks, each call_one(func, item)
   SequentialPipeline ─ Awaited(item) ─ LoopThread.run(coro) ─► awaited there, one at a time

``SequentialPipeline`` calls an async stage through :class:`Awaited`: each
call awaited to its end on a loop thread of its own, before the next input.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from time import perf_counter
from typing import Any, NamedTuple, TypeVar

from .._core.asyncs import ASYNC_GENERATOR, async_kind
from .._core.stage import unwrapped

T = TypeVar("T")


class LoopThread:
    """An event loop in a thread of its own, for one run: :meth:`start` it,
    :meth:`close` it; closed, it leaves no thread behind."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # Callbacks handed over, not yet run. The loop is woken only for the
        # first of a batch: a wake is a system call, which lets other threads
        # take the GIL, so one per chunk would slow a burst of chunks down.
        self._queued: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references

    def start(self) -> None:
        if self._thread is None and not self._closed:
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._main, name="blpipe event loop",
                                            daemon=True)
            self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        assert loop is not None
        try:
            loop.run_forever()
        finally:
            loop.close()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop, from any thread."""
        if not self.running():
            raise RuntimeError("the pipeline's event loop is closed")
        with self._lock:
            first = not self._queued
            self._queued.append(callback)
        if first:
            self._loop().call_soon_threadsafe(self._run_queued)

    def _run_queued(self) -> None:
        with self._lock:
            queued = list(self._queued)
            self._queued.clear()
        for callback in queued:
            callback()

    def task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """On the loop: run ``coro`` as a task, held until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop, and wait here for its result."""
        if not self.running():
            coro.close()
            raise RuntimeError("the pipeline's event loop is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop()).result()

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        assert loop is not None, "the loop thread has not started"
        return loop

    def close(self, grace: float) -> None:
        """Cancel what runs on the loop, give it ``grace`` seconds to end, stop
        the loop and join its thread. A call that blocks the thread itself (a
        ``time.sleep`` in an ``async def``) cannot be stopped: after ``grace``
        its thread is left to end with it."""
        thread = self._thread
        if self._closed or thread is None:
            self._closed = True
            return
        self._closed = True
        deadline = time.monotonic() + grace
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # its loop is closed: the thread has ended
            asyncio.run_coroutine_threadsafe(self._shutdown(deadline), self.loop)
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()) + 0.1)

    @staticmethod
    async def _shutdown(deadline: float) -> None:
        loop = asyncio.get_running_loop()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        # what the stages left open: their async generators, asyncio.to_thread's threads
        for closing in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, max(0.01, deadline - time.monotonic()))
        loop.stop()


class Called(NamedTuple):
    """How one call ended: its value (an async generator's: the list of what it
    yielded), or the exception it raised; its seconds; and whether its chunk's
    room for outputs ran out while it yielded (``cut``)."""

    value: Any
    error: BaseException | None
    seconds: float
    cut: bool = False


async def call_one(func: Callable[[Any], Any], item: Any, room: list[int] | None) -> Called:
    """Call an async stage on ``item`` and await its end: the one place where a
    call happens.

    An async generator's outputs are gathered while ``room`` (the outputs its
    chunk may still hold) lasts. Any exception is the call's, even one that is
    not an ``Exception``: out of a task, ``SystemExit`` would stop the loop. A
    cancellation goes on, to end the task.
    """
    start = perf_counter()
    got: list[Any] | None = None
    try:
        out = func(item)
        if not hasattr(out, "__anext__"):
            value = await out
            return Called(value, None, perf_counter() - start)
        got = []
        while room is None or room[0] > 0:
            try:
                y = await out.__anext__()
            except StopAsyncIteration:
                return Called(got, None, perf_counter() - start)
            got.append(y)
            if room is not None:
                room[0] -= 1
        with contextlib.suppress(Exception):  # cut short: let it clean up now
            await out.aclose()
        return Called(got, None, perf_counter() - start, cut=True)
    except asyncio.CancelledError:
        raise
    except BaseException as e:
        return Called(got, e, perf_counter() - start)


async def _caught(aw: Awaitable[T]) -> tuple[T | None, BaseException | None]:
    """What ``aw`` gives, or the exception it raises, whatever it is."""
    try:
        return await aw, None
    except BaseException as e:
        return None, e


class Awaited:
    """An async stage as a blocking callable, for ``SequentialPipeline``: each
    call is awaited to its end on ``thread`` before the next, and an async
    generator's elements are awaited one at a time, as the chain asks."""

    def __init__(self, func: Callable[[Any], Any], thread: LoopThread) -> None:
        self.generator = async_kind(func) == ASYNC_GENERATOR
        self.func = unwrapped(func)
        self.thread = thread

    def __call__(self, item: Any) -> Any:
        if self.generator:
            return self._elements(self.func(item))
        end, error = self.thread.run(_caught(call_one(self.func, item, None)))
        if end is not None:
            error = end.error
        if error is not None:
            raise error
        assert end is not None  # else it raised
        return end.value

    def _elements(self, agen: Any) -> Iterator[Any]:
        try:
            while True:
                value, error = self.thread.run(_caught(agen.__anext__()))
                if isinstance(error, StopAsyncIteration):
                    return
                if error is not None:
                    raise error
                yield value
        finally:
            if self.thread.running():  # left early: let it clean up now, on its loop
                self.thread.run(_caught(agen.aclose()))
