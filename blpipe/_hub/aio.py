"""Async stages: their calls overlap on one event loop, in a thread of the calling process.

One :class:`LoopThread` per run serves every async stage of the pipeline: it
starts with the run, and is stopped and joined when the run ends or is
closed. Each async stage is a segment of its own, whose backend is a
:class:`Loop`::

   the hub (the consumer's thread)         the loop thread
   ───────────────────────────────         ───────────────────────────────────────────
   Segment ─dispatch()─► Loop.post ─soon─► Loop._start: a task per input, in input
            (concurrency chunks at most)   order, each taking the semaphore (at most
                                           concurrency calls in flight), then
                                           call_one(): the call, awaited (an async
                                           generator: what it yields, gathered)
                                              │ the chunk's last call ended
                                              ▼
                                           the replay: a one-step Chain over the
                                           inputs, whose step gives back each call's
                                           value, or raises its exception, in input
                                           order: on_error, groups, windows and
                                           expansions are the chain's, as for a
                                           thread stage
                                              │ a Result, as a thread stage's
   Segment.complete ◄─ Futures.on_wake ◄─ Waker ◄─ the chunk's future is done

The loop thread and the one place where a call happens are in
:mod:`blpipe._hub.loopthread`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from .._core.chain import Chain, formed, step_of
from .._core.failures import StageFailure
from .._core.messages import Broken, Result
from .._core.retry import after
from .._core.spec import StageSpec
from .._core.stage import unwrapped
from .._core.tasks import EXPANSION_CAP, local_result, too_many
from .._core.text import short_repr
from ..errors import StageTimeout
from .executors import Futures, Lane, _Lanes
from .loopthread import Called, LoopThread, call_one

T = TypeVar("T")

# Seconds of calls a chunk aims at, as a thread stage's: slow calls go one per
# chunk, so that each result is passed on as soon as its call ends.
_CHUNK_WORK = 0.0002
_ADVICE = ("yield lists of outputs instead, and expand them in a later stage that is not "
           "async")


class _Replay:
    """Stands for the stage in the replay chain: called with each input in
    turn, it gives back how that input's call ended."""

    __slots__ = ("_ends",)

    def __init__(self) -> None:
        self._ends: Iterator[Called] = iter(())

    def load(self, ends: list[Called]) -> None:
        self._ends = iter(ends)

    def __call__(self, item: Any) -> Any:
        end = next(self._ends)
        if end.error is None:
            return end.value
        if end.value is None:
            raise end.error
        return _then_raise(end.value, end.error)  # an async generator that failed midway


def _then_raise(values: list[Any], error: BaseException) -> Iterator[Any]:
    yield from values
    raise error


class _Chunk:
    """A chunk on the loop: its inputs and the ends of their calls so far."""

    __slots__ = ("items", "future", "ends", "left", "room")

    def __init__(self, items: list[Any], future: Future[Any]) -> None:
        self.items = items
        self.future = future
        self.ends: list[Called | None] = [None] * len(items)
        self.left = len(items)
        self.room = [EXPANSION_CAP + 1]  # outputs it may hold: one more fails it


class Loop(_Lanes):
    """An async stage's segment: chunks on the run's event loop, at most
    ``concurrency`` calls of the stage in flight."""

    def __init__(self, futures: Futures, thread: LoopThread, spec: StageSpec) -> None:
        # As many chunks in flight as calls may be, each started at once: the
        # semaphore paces the calls in them. They share one lane, as there is
        # nothing to balance, so that picking one costs no scan of the lanes.
        super().__init__(futures, [Lane()], 1, _CHUNK_WORK)
        self.most = spec.concurrency or 1
        self.thread = thread
        self.spec = spec
        self.func = unwrapped(spec.func)
        self.replay = _Replay()
        self.chain = Chain([step_of(spec, formed=True)._replace(func=self.replay)], ahead=True)
        self.calls: asyncio.Semaphore | None = None  # made on the loop, by the first chunk
        self.tally = [0, 0]  # retries and timeouts, counted on the loop
        self.running: dict[int, tuple[float, Any]] = {}  # calls in flight: since, input
        self.ids = itertools.count()

    def pick(self, limit: int) -> Lane | None:
        lane = self.places[0]
        return lane if len(lane.pending) < self.most * limit else None

    def _submit(self, payload: list[Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self.thread.soon(partial(self._start, payload, future))
        return future

    def _start(self, payload: list[Any], future: Future[Any]) -> None:
        """On the loop: a task for each input's call, started in input order.
        A future cancelled before (the run is closing) starts none."""
        if not future.set_running_or_notify_cancel():
            return
        try:
            chunk = _Chunk(formed(payload, self.spec.window, self.spec.group), future)
            if self.calls is None:
                self.calls = asyncio.Semaphore(self.most)
            for i, x in enumerate(chunk.items):
                self.thread.task(self._call(x, chunk.room)).add_done_callback(
                    partial(self._ended, chunk, i))
            if not chunk.items:
                future.set_result(self._replayed(chunk.items, []))
        except Exception:
            future.set_result(Broken(traceback.format_exc()))

    async def _call(self, item: Any, room: list[int]) -> Called:
        calls = self.calls
        assert calls is not None  # made by the chunk this call is of
        async with calls:
            key = next(self.ids)
            self.running[key] = time.monotonic(), item
            try:
                return await self._tries(item, room)
            finally:
                del self.running[key]

    async def _tries(self, item: Any, room: list[int]) -> Called:
        """The call, cancelled past the stage's ``timeout``, and tried again on an
        error in ``retry_on`` while ``retries`` last, as in any placement."""
        spec = self.spec
        retry, limit = spec.retry, spec.timeout
        attempt = 0
        while True:
            attempt += 1
            if limit is None:
                end = await call_one(self.func, item, room)
            else:
                try:
                    end = await asyncio.wait_for(call_one(self.func, item, room), limit)
                except asyncio.TimeoutError:  # call_one returns the stage's own
                    self.tally[1] += 1
                    end = Called(None, StageTimeout(spec.label, short_repr(item), limit,
                                                    "its task was cancelled"), limit)
            error = end.error
            if error is None or retry is None or end.value:  # it yielded: too late to retry
                return end
            pause = after(retry, error, attempt)
            if pause is None:
                return end
            self.tally[0] += 1
            if pause:
                await asyncio.sleep(pause)

    def _ended(self, chunk: _Chunk, i: int, task: asyncio.Task[Called]) -> None:
        """A call ended. A cancelled one raised ``CancelledError`` itself, or the
        run is closing and its result no longer matters."""
        try:
            chunk.ends[i] = task.result()
        except BaseException as e:  # call_one lets nothing else out
            chunk.ends[i] = Called(None, e, 0.0)
        chunk.left -= 1
        if not chunk.left:
            try:
                ends = [end for end in chunk.ends if end is not None]  # all in: left is 0
                result: Result | Broken = self._replayed(chunk.items, ends)
            except Exception:  # the stage's are in the ends: this is blpipe's own
                result = Broken(traceback.format_exc())
            chunk.future.set_result(result)

    def _replayed(self, items: list[Any], ends: list[Called]) -> Result:
        """The chunk's ``Result``: the replay chain run over ``items``.

        A call that must end the run, whatever ``on_error`` says, cuts the
        chunk at its input, after the outputs of the inputs before it: one
        that raised what is not an ``Exception`` (``SystemExit``, its own
        ``CancelledError``), as it would in the calling process, and one cut
        short because its chunk's outputs passed the cap.
        """
        k = next((i for i, e in enumerate(ends)
                  if e.cut or not isinstance(e.error, (Exception, type(None)))), len(ends))
        self.replay.load(ends[:k])
        label = self.spec.label
        result = local_result(self.chain, items[:k], "an async stage", _ADVICE)
        if k < len(ends) and result.error is None:
            end = ends[k]
            fatal = too_many(label, "an async stage", _ADVICE) if end.cut else end.error
            assert fatal is not None
            result = result._replace(error=StageFailure(label, items[k], fatal))
        figures = result.stats[0]
        figures[0] = sum(e.seconds for e in ends)  # the calls' own, overlapping
        figures[3], figures[4] = self.tally  # the retries and timeouts since the last chunk
        self.tally[:] = [0, 0]
        return result
