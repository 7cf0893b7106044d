"""The hub's side of executors: the user's ``executor=``, and thread stages' own.

Pool stages can run on any ``concurrent.futures.Executor``, and a thread
stage runs on a ``ThreadPoolExecutor`` of its own; both are *backends* of
segments. The hub has no threads of its own and waits in one ``select``, but
an executor completes futures on its threads: a done callback queues the
future and writes a byte to a pipe the hub selects on, so a finished chunk
is seen at once, without polling. The executor pickles what it sends; a
failure of the executor itself (a lost worker, something it could not
serialize) fails the chunk with blpipe's own exception types.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Callable, Sized
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .._core.chain import Chain
from .._core.failures import broken, cannot_load
from .._core.messages import Broken, Credit, HookFailed, LoadFailed, Part, call_failed
from .._core.options import wrong_type
from .._core.stall import in_chunk
from .._core.tasks import run_chunk, run_local, stream_local
from .._core.text import short_repr
from .._core.transport import Poller
from ..errors import BrokenPipeline, SerializationError, StageTimeout, WorkerDied
from .cpu import usable_cpu_count
from .waker import Tap, Waker

if TYPE_CHECKING:
    from .flow import Record
    from .segments import Segment

_CHUNK_WORK_REMOTE = 0.02  # seconds of work a chunk aims at on a user's executor...
_PER_LANE_REMOTE = 3  # ...with more queued per lane: a round trip costs milliseconds there
_CHUNK_WORK_LOCAL = 0.0002
_PER_LANE_LOCAL = 2


class _Place(Protocol):
    """Where a segment may send a chunk: a pool worker, or a lane."""

    @property
    def pending(self) -> Sized: ...  # the chunks queued there
    @property
    def left(self) -> int | None: ...  # the calls it may still take; None: no limit


P = TypeVar("P", bound=_Place)


class Spread(Generic[P]):
    """A segment's backend that spreads chunks over ``places``: the pool's
    workers, or lanes on an executor."""

    places: list[P]

    def pick(self, limit: int) -> P | None:
        """The first of ``places`` with the fewest chunks queued, if fewer than
        ``limit``, among those that may take calls; an empty one at once.

        It runs per chunk sent: one pass, no allocation, and no further call
        (a helper function called from here added up to a tenth)."""
        best = None
        for p in self.places:
            n = len(p.pending)
            if n < limit and (best is None or n < len(best.pending)) and p.left != 0:
                best = p
                if not n:
                    break
        return best


class Lane:
    """A place on an executor, as the hub sees it: the chunks queued there.

    An executor runs tasks in any order it likes; lanes only spread chunks
    over it the way workers do, so that ``batch_size`` and the per-worker
    queue depth mean the same thing on both.
    """

    __slots__ = ("pending",)
    left = None  # calls it may still take: no limit on an executor

    def __init__(self) -> None:
        self.pending: list[Any] = []


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


def check_executor(where: str, executor: object) -> None:
    """``executor=``, as a ``concurrent.futures.Executor`` or what acts like one."""
    if not (callable(getattr(executor, "submit", None)) and hasattr(executor, "shutdown")):
        raise wrong_type(where, "executor", executor, "a concurrent.futures.Executor, with "
                         "submit() and shutdown() (for Dask: client.get_executor()), or None")


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


class Futures:
    """The futures of one run, whatever executor runs them; their completions
    reach the hub's ``select`` through a :class:`Waker`."""

    def __init__(self, poller: Poller, parent_fds: list[int]) -> None:
        self.waker = Waker()
        parent_fds.append(self.waker.fd)
        poller.register(self.waker.fd, poller.READ, self.on_wake)
        self.pending: set[Future[Any]] = set()
        self.owned: list[ThreadPoolExecutor] = []  # thread stages' executors
        self.chains: list[Chain] = []  # and their chains, which may keep threads for calls
        # a timed stage's tasks: when each is given up on, and how to send it again
        self.deadlines: dict[Future[Any], tuple[float, Any, Lane, Segment, Record, Any]] = {}
        self.given_up: set[Future[Any]] = set()
        self.gave_up = False  # since the hub last looked: what was in flight has moved
        # the tasks on a user's executor: when each was sent, its stage, its chunk
        self.sent: dict[Future[Any], tuple[float, int, Record]] = {}
        self.taps: dict[int, Tap] = {}  # thread stages' expanding chunks, by id(record)

    def submit(self, submit: Callable[[list[Any]], Future[Any]], lane: Lane, segment: Segment,
               rec: Record, remote: bool = False) -> None:
        """Send a chunk; its future wakes the hub when done. A ``remote`` one is
        on the user's executor, where the watchdog sees only when it was sent."""
        payload, rec.frame = rec.frame, None
        try:
            future = submit(payload)
        except Exception as e:
            segment.fail(rec, lost(e, segment.label, short_repr(rec.first)))
            return
        lane.pending.append(rec)
        self.pending.add(future)
        if remote:
            self.sent[future] = time.monotonic(), segment.first, rec
        if segment.timeout is not None:
            self.deadlines[future] = (time.monotonic() + segment.timeout, submit, lane, segment,
                                      rec, payload)
        self.waker.watch(future, (lane, segment, rec))

    def watch(self, now: float) -> float | None:
        """Give up on the tasks of timed stages past their deadline, counted from
        when they were sent; returns when to look again."""
        due = None
        for future, (deadline, submit, lane, segment, rec, payload) in list(
                self.deadlines.items()):
            if now < deadline:
                due = deadline if due is None else min(due, deadline)
                continue
            del self.deadlines[future]
            self.gave_up = True
            self.pending.discard(future)
            self.sent.pop(future, None)
            self.given_up.add(future)
            future.cancel()  # a call already running goes on: its result is dropped
            lane.pending.remove(rec)
            recorder = segment.flow.recorder
            recorder.timeouts[segment.first] += 1
            if rec.tries < segment.retries:
                rec.tries += 1
                recorder.retries[segment.first] += 1
                rec.frame = payload
                self.submit(submit, lane, segment, rec, remote=True)
                continue
            exc = StageTimeout(segment.label, short_repr(rec.first), segment.timeout or 0.0,
                               "its result was given up on; the executor may still run the "
                               "call, and its result is dropped")
            if segment.catch:
                size = rec.n_in if segment.group else 1
                segment.complete(rec, call_failed(segment.label, rec.first, exc, size))
            else:
                segment.fail(rec, exc)
        return due

    def on_wake(self) -> None:
        for (lane, segment, rec), future in self.waker.drain():
            if type(future) is Part:  # a thread stage's part
                part: Part = future
                if part.paused is not None:
                    rec.paused = part.paused
                rec.expanding = part.expanding
                segment.extend(rec, part.outputs, part.skipped, 0)
                continue
            self.taps.pop(id(rec), None)
            if future in self.given_up:
                self.given_up.discard(future)
                continue
            self.deadlines.pop(future, None)
            self.sent.pop(future, None)
            lane.pending.remove(rec)
            self.pending.discard(future)
            if future.cancelled():
                continue
            exc = future.exception()
            if exc is not None:
                segment.fail(rec, lost(exc, segment.label, short_repr(rec.first)))
                continue
            result = future.result()
            if type(result) is Broken:
                segment.fail(rec, broken(segment.label, result.traceback))
            elif type(result) is LoadFailed:
                segment.fail(rec, cannot_load(segment.label, result.traceback))
            elif type(result) is HookFailed:  # a setup() on the executor
                segment.fail(rec, result.exception())
            else:
                segment.complete(rec, result)

    def calls(self) -> list[tuple[int, float, str]]:
        """The user's executor's tasks in flight, as calls: ``(stage, sent, input)``.
        A task may wait in the executor's queue before it runs, and may hold
        several inputs."""
        return [(stage, sent, in_chunk(rec.n_in, rec.first))
                for sent, stage, rec in list(self.sent.values())]

    def busy(self) -> bool:
        return bool(self.pending)

    def close(self, grace: float) -> None:
        for future in self.pending:
            future.cancel()  # a running one goes on: an executor cannot stop it
        for tap in list(self.taps.values()):
            tap.resume(None)  # a paused expansion's thread ends its run now
        deadline = time.monotonic() + grace
        for ex in self.owned:
            ex.shutdown(wait=False, cancel_futures=True)
        for ex in self.owned:  # a thread cannot be killed: give it time to finish its call
            for t in list(getattr(ex, "_threads", ())):
                t.join(max(0.0, deadline - time.monotonic()))
        for chain in self.chains:
            chain.close()
        self.waker.close()


class _Lanes(Spread[Lane]):
    """A segment's places on an executor."""

    death = None

    def __init__(self, futures: Futures, lanes: list[Lane], depth: int, work: float) -> None:
        self.futures = futures
        self.places = lanes
        self.depth = depth
        self.work = work

    def pack(self, segment: int, payload: list[Any], place: Lane,
             credit: Credit | None = None) -> tuple[Any, None, int]:
        return payload, None, 0  # the executor pickles, if it needs to

    def resume(self, segment: Segment, rec: Record, credit: Credit) -> None:
        """Never needed: a task returns all its outputs at once."""

    def last(self, segment: int) -> list[tuple[Any, Any]]:
        return []  # a stage that keeps state never runs here

    def post(self, place: Lane, segment: Segment, rec: Record) -> None:
        self.futures.submit(self._submit, place, segment, rec)

    def _submit(self, payload: list[Any]) -> Future[Any]:
        raise NotImplementedError


class Remote(_Lanes):
    """A pool segment on the user's executor: its workers load the pool's
    stages once per process and pipeline (``key``)."""

    def __init__(self, futures: Futures, lanes: list[Lane], executor: Executor, key: bytes,
                 blob: bytes, segment: int, timed: bool = False) -> None:
        # a timed stage's call must start when it is sent: its deadline counts from then
        super().__init__(futures, lanes, 1 if timed else _PER_LANE_REMOTE, _CHUNK_WORK_REMOTE)
        self.args = executor.submit, key, blob, segment

    def post(self, place: Lane, segment: Segment, rec: Record) -> None:
        self.futures.submit(self._submit, place, segment, rec, remote=True)

    def _submit(self, payload: list[Any]) -> Future[Any]:
        submit, key, blob, segment = self.args
        return submit(run_chunk, key, blob, segment, payload)


class Local(_Lanes):
    """A thread stage, on a thread pool of its own."""

    def __init__(self, futures: Futures, chain: Chain, window: int | None, group: int | None,
                 threads: int, name: str) -> None:
        super().__init__(futures, [Lane() for _ in range(threads)], _PER_LANE_LOCAL,
                         _CHUNK_WORK_LOCAL)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=f"blpipe {name}")
        futures.owned.append(self.executor)
        futures.chains.append(chain)
        self.chain = chain
        self.window = window
        self.group = group

    def _submit(self, payload: list[Any]) -> Future[Any]:
        return self.executor.submit(run_local, self.chain, self.window, self.group, payload)

    def post(self, place: Lane, segment: Segment, rec: Record) -> None:
        credit = segment.credit
        if credit is None or not self.chain.expands:
            super().post(place, segment, rec)
            return
        futures = self.futures
        tap = Tap(futures.waker, (place, segment, rec))
        futures.taps[id(rec)] = tap

        def submit(payload: list[Any]) -> Future[Any]:
            return self.executor.submit(stream_local, self.chain, self.window, self.group,
                                        payload, credit, tap)

        futures.submit(submit, place, segment, rec)

    def resume(self, segment: Segment, rec: Record, credit: Credit) -> None:
        """Wake the thread of ``rec``'s paused expansion."""
        rec.paused = None
        tap = self.futures.taps.get(id(rec))
        if tap is not None:
            tap.resume(credit)
