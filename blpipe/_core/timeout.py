"""A call that runs past its stage's ``timeout``: how each placement sees it.

A worker process cannot interrupt a call from inside: a C call may hold the
GIL, and a pure-Python loop may catch any exception. So a worker only tells,
through its *clock* in shared memory, which call of which task runs since
when; the hub reads the clocks as it waits and kills a worker whose call is
late (:class:`Clocked`)::

    worker: Clocked call --writes--> clock [task, call, started]
    hub:    wait() wakes by the deadline --reads--> late? SIGKILL, then the
            chunk's other calls run again; the late one fails with StageTimeout

A thread cannot be killed: a thread stage's call runs in a thread of its own,
which is given up on when the call is late (:class:`Abandoning`), and the
stage goes on with a fresh one. The late call is also asked to stop: an
exception is raised in its thread at its next line of Python, so that a
pure-Python loop ends rather than hold the GIL from every other thread; a call
blocked in C runs on until it returns. While timed calls run in threads, the
interpreter's switch interval is 1 ms rather than 5: with the default, a
thread waiting on a call that spins in Python could wait seconds for the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import StageTimeout
from .text import short_repr

# -- in a worker process ------------------------------------------------------

CLOCK: Any = None  # this worker's clock: [task, call, started], set by worker_main
_task = 0  # the task whose calls run now
_call = 0  # calls of it so far


def set_clock(clock: Any) -> None:
    """This worker's clock, from the hub: its stages have a ``timeout``."""
    global CLOCK
    CLOCK = clock


def start_task(seq: int, call: int = 0) -> None:
    """A task starts, its calls counted from 0; or a paused one goes on."""
    global _task, _call
    _task, _call = seq, call


def position() -> tuple[int, int]:
    """The task that runs, and its calls so far: where a paused one goes on."""
    return _task, _call


class Clocked:
    """``func``, each call of it shown on this process's clock. Its calls that
    time out are counted by the hub, which kills them; ``tally`` is the
    retries' of what it wraps."""

    __slots__ = ("func", "expand", "tally")

    def __init__(self, func: Callable[[Any], Any], expand: bool, tally: list[int]) -> None:
        self.func = func
        self.expand = expand
        self.tally = tally

    def restart(self) -> None:
        """The call starts again (a retry): its time counts from now."""
        if CLOCK is not None:
            CLOCK[2] = time.monotonic()

    def __call__(self, value: Any) -> Any:
        global _call
        clock = CLOCK
        if clock is None:  # on an executor: the hub watches the result instead
            return self.func(value)
        clock[0], clock[1], clock[2] = _task, _call, time.monotonic()
        _call += 1
        try:
            out = self.func(value)
        finally:
            clock[2] = 0.0
        return self._clocked(iter(out), clock[1]) if self.expand else out

    def _clocked(self, it: Iterator[Any], call: float) -> Iterator[Any]:
        """An expansion, each step of it timed as its call."""
        clock = CLOCK
        task = _task
        try:
            while True:
                clock[0], clock[1], clock[2] = task, call, time.monotonic()
                try:
                    y = next(it)
                except StopIteration:
                    return
                finally:
                    clock[2] = 0.0
                yield y
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


# -- in a thread of the calling process ------------------------------------------

_END = object()
_SWITCH = 0.001  # seconds: the switch interval while timed calls run in threads
_switching = threading.Lock()
_timed = 0  # timed calls in threads now
_saved: float | None = None  # the switch interval they replaced


def _timing(delta: int) -> None:
    """Count timed calls in threads; the first lowers the switch interval, the
    last puts it back."""
    global _timed, _saved
    with _switching:
        _timed += delta
        if _timed == delta == 1 and sys.getswitchinterval() > _SWITCH:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(_SWITCH)
        elif _timed == 0 and _saved is not None:
            sys.setswitchinterval(_saved)
            _saved = None


def _step(it: Iterator[Any]) -> Any:
    return next(it, _END)


class _Box:
    __slots__ = ("done", "value", "error", "abandoned")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False


class Abandoned(BaseException):
    """Raised in a late call's thread to stop it; a ``BaseException``, so that
    the stage's ``except Exception`` does not catch it."""


class _Caller:
    """A thread that makes calls handed to it, one at a time."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                func, value, box = job
                try:
                    box.value = func(value)
                except BaseException as e:  # handed to the stage's thread
                    box.error = e
                box.done.set()
                if box.abandoned:
                    return  # a fresh thread took its place
        except Abandoned:  # it came just after the call returned: it was given up on
            return

    def stop(self) -> None:
        """Raise :class:`Abandoned` in its thread, at its next line of Python."""
        with contextlib.suppress(AttributeError, TypeError, ValueError):  # not CPython
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident or 0),
                                                       ctypes.py_object(Abandoned))


class Abandoning:
    """``func``, each call made in a thread that is given up on after ``limit``
    seconds: the call raises :class:`StageTimeout` and counts in ``tally[1]``."""

    def __init__(self, func: Callable[[Any], Any], limit: float, label: str, expand: bool,
                 tally: list[int]) -> None:
        self.func = func
        self.limit = limit
        self.label = label
        self.expand = expand
        self.tally = tally
        self._local = threading.local()  # each of the stage's threads has its caller
        self._callers: list[_Caller] = []
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> Any:
        out = self._call(self.func, value, value)
        return self._timed(iter(out), value) if self.expand else out

    def _call(self, func: Callable[[Any], Any], arg: Any, value: Any) -> Any:
        caller = getattr(self._local, "caller", None)
        if caller is None:
            caller = self._local.caller = _Caller(f"blpipe {self.label} call")
            with self._lock:
                self._callers.append(caller)
        box = _Box()
        _timing(1)
        caller.jobs.put((func, arg, box))
        try:
            done = box.done.wait(self.limit)
        finally:
            _timing(-1)
        if done:
            if box.error is not None:
                raise box.error
            return box.value
        box.abandoned = True
        caller.stop()
        caller.jobs.put(None)  # if the call ended just now, it waits for a job: end that
        self._local.caller = None
        with self._lock:
            self._callers.remove(caller)
            self.tally[1] += 1
        raise StageTimeout(self.label, short_repr(value), self.limit,
                           "the call was abandoned, and stopped at its next line of Python "
                           "(a call blocked in C runs on until it returns); the stage goes "
                           "on in a fresh thread")

    def _timed(self, it: Iterator[Any], value: Any) -> Iterator[Any]:
        while (y := self._call(_step, it, value)) is not _END:
            yield y

    def close(self) -> None:
        """End the threads that wait for calls (not those still in one)."""
        with self._lock:
            for caller in self._callers:
                caller.jobs.put(None)
            self._callers.clear()
