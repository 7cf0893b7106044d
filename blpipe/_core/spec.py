"""Reading and validating what each stage asks for: ``StageSpec``.

A stage is any callable. How it may run is read from plain attributes with
``getattr``, so they can sit on a function, an instance or its class:

==================  ===========  ==============================================
attribute           default      meaning
==================  ===========  ==============================================
``stateful``        ``True``     ``True``: sequential, in a dedicated process;
                                 ``False``/``None``: stateless, shared pool;
                                 int ``k >= 1``: sliding windows of ``k``, pool
``batch_size``      ``1``        at most this many inputs of the stage in flight
``run_in_master``   absent       present and truthy: runs in the calling process
``threads``         absent       int ``n >= 1``: a stateless (or window) stage
                                 runs in ``n`` threads of the calling process
``ordered``         ``True``     ``False``: a stateless (or window) stage passes
                                 each chunk's outputs on as soon as they are
                                 done, not in input order
``on_error``        ``"raise"``  ``"skip"``: drop an input the stage raises on
                                 and go on; ``"collect"``: also record it
``max_errors``      ``None``     with ``"skip"``/``"collect"``: the error after
                                 this many fails the pipeline
``expand``          ``False``    ``True``: the stage returns an iterable for each
                                 input, and each of its elements goes on
``group``           ``None``     int ``n >= 1``: the stage is called with lists
                                 of ``n`` consecutive inputs (the last may be
                                 shorter); ``batch_size`` must hold a group
``group_wait``      ``None``     with ``group``: seconds after which a partial
                                 group goes on, counted from its oldest input
``retries``         ``0``        calls repeated on an input after an error in
                                 ``retry_on``, where the stage runs
``retry_on``        ``(Exception,)``  the exception types that are retried
``retry_backoff``   ``0.0``      seconds: the base of the sleep before a retry,
                                 doubling with each (full jitter, capped)
``timeout``         ``None``     seconds a call may run; past it, the input fails
                                 with ``StageTimeout``
``concurrency``     ``None``     an async stage's calls in flight at most: an
                                 int ``n >= 1``, at most ``batch_size``; its
                                 default is ``batch_size``
``setup``           ``None``     called once in each process that calls the
                                 stage, before its first call
``teardown``        ``None``     called once in each process whose ``setup``
                                 ran, after its last call
``flush``           ``None``     a stateful stage's last outputs (an iterable),
                                 at the end of a finite input
``replicas``        ``None``     int ``n >= 1``: ``n`` processes of the stage's
                                 own, each with one copy set up once
==================  ===========  ==============================================

A stage whose call is an ``async def`` (a coroutine or an async generator
function) is *async*: it runs on the run's event loop, in a thread of the
calling process, whatever ``stateful`` says (a window ``k`` still gives it
windows), with at most ``concurrency`` calls in flight.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .asyncs import ASYNC_GENERATOR, async_kind
from .keyed import keyed_attrs
from .options import count, seconds
from .stage import hook_of, hooks_of
from .text import describe, short_repr


class Retry(NamedTuple):
    """A stage's validated ``retries``, ``retry_on`` and ``retry_backoff``."""

    retries: int
    on: tuple[type[Exception], ...]
    backoff: float


BACKOFF_CAP = 60.0  # seconds: no sleep between tries is longer


class Placement(enum.Enum):
    """Where a stage runs."""

    MASTER = "master"
    DEDICATED = "dedicated"
    POOL = "pool"
    THREAD = "thread"
    ASYNC = "async"


@dataclass(frozen=True)
class StageSpec:
    """A validated stage: the callable and how it runs."""

    index: int
    func: Callable[[Any], Any]
    name: str
    placement: Placement
    window: int | None
    batch_size: int
    threads: int | None = None
    ordered: bool = True
    on_error: str = "raise"
    max_errors: int | None = None
    expand: bool = False
    group: int | None = None
    group_wait: float | None = None
    retry: Retry | None = None
    timeout: float | None = None
    concurrency: int | None = None  # an async stage's calls in flight at most
    setup: Callable[[], Any] | None = None  # run once in each process that calls it
    teardown: Callable[[], Any] | None = None  # and this, after its last call
    flush: Callable[[], Any] | None = None  # its last outputs, at the end of the input
    replicas: int | None = None  # processes of its own, rather than the shared pool's
    key: Callable[[Any], Any] | None = None  # each key its own copy of the stage
    key_idle: int | None = None  # a key idle for more inputs than this is retired
    max_keys: int | None = None  # live keys at most
    # a keyed stage resumed from a checkpoint: its keys' copies, and its book of keys
    resumed: tuple[dict[Any, Any], Any] | None = None

    @property
    def label(self) -> str:
        """``'stage 2 (Accumulator())'``: how messages name the stage."""
        return f"stage {self.index} ({self.name})"

    @property
    def shape(self) -> str:
        """Inputs per call to outputs per call: ``'1:1'``, ``'1:n'``, ``'64:1'``, ``'64:n'``."""
        return f"{self.group or 1}:{'n' if self.expand else 1}"


def _positive_int(value: object) -> int | None:
    """``int(value)`` for an integer that is not a bool, else ``None``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def read_stage(index: int | None, func: object) -> StageSpec:
    """Read and validate one stage's attributes; raise naming the stage.

    ``index`` is the stage's position, or ``None`` when validating alone.
    """
    name = describe(func)
    where = f"stage({name})" if index is None else f"stage {index} ({name})"
    if not callable(func):
        raise TypeError(f"{where} is not callable: got {short_repr(func)} of type "
                        f"{type(func).__name__}; a stage must be a function or an object "
                        f"with __call__")

    stateful = getattr(func, "stateful", True)
    window: int | None = None
    if stateful is True:
        placement = Placement.DEDICATED
    elif stateful is False or stateful is None:
        placement = Placement.POOL
    else:
        k = _positive_int(stateful)
        if k is None:
            raise TypeError(f"{where}: stateful={stateful!r} is a {type(stateful).__name__}; "
                            f"use True (stateful), False or None (stateless), or a window "
                            f"size k >= 1 (an int)")
        if k < 1:
            raise ValueError(f"{where}: stateful={stateful!r} is not a valid window size; "
                             f"a window needs k >= 1 inputs")
        window = k
        placement = Placement.POOL

    batch_size = count(where, "batch_size", getattr(func, "batch_size", 1), 1)

    kind = async_kind(func)
    threads = getattr(func, "threads", None)
    if kind is not None:
        _async_only(where, func, threads)
        placement = Placement.ASYNC
    elif hasattr(func, "run_in_master"):
        flag = func.run_in_master
        if not flag:
            raise ValueError(
                f"{where}: run_in_master={flag!r} is present but falsy. blllib ran such a "
                f"stage in the master process anyway; blpipe does not guess: set it to True "
                f"to run the stage in the calling process, or delete the attribute")
        placement = Placement.MASTER

    if threads is not None and kind is None:
        n = count(where, "threads", threads, 1, " (or None for no threads)")
        if placement is not Placement.POOL:
            raise ValueError(f"{where}: threads={threads!r} runs a stateless stage in threads, "
                             f"but this one is {_kind(placement)}; set stateful=False (or a "
                             f"window size), or delete threads")
        placement, threads = Placement.THREAD, n

    ordered = getattr(func, "ordered", True)
    if not isinstance(ordered, bool):
        raise TypeError(f"{where}: ordered={ordered!r} is a {type(ordered).__name__}; use True "
                        f"or False")
    if not ordered and placement not in (Placement.POOL, Placement.THREAD, Placement.ASYNC):
        raise ValueError(f"{where}: ordered=False lets a stateless stage pass outputs on as "
                         f"they complete, but this one is {_kind(placement)} and runs one "
                         f"input at a time, in order; delete ordered or set stateful=False")

    on_error = getattr(func, "on_error", "raise")
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise ValueError(f"{where}: on_error={on_error!r}; use 'raise' (the default: the "
                         f"first error ends the stream), 'skip' (drop the input and go on) or "
                         f"'collect' (drop it and record it in Pipeline.errors)")
    max_errors = getattr(func, "max_errors", None)
    if max_errors is not None:
        n = count(where, "max_errors", max_errors, 0, " (or None for no limit)")
        if on_error == "raise":
            raise ValueError(f"{where}: max_errors={max_errors!r} is a budget for "
                             f"on_error='skip' or 'collect', but on_error is 'raise', which "
                             f"fails on the first error; set on_error, or delete max_errors")
        max_errors = n

    expand, group, group_wait = _shape(where, func, window, batch_size)
    if kind == ASYNC_GENERATOR and not expand:
        raise ValueError(f"{where} is an async generator function, which yields outputs "
                         f"rather than returning one; set expand = True so that each "
                         f"element it yields goes on")
    concurrency = _concurrency(where, func, kind, batch_size)
    setup, teardown = hooks_of(func)
    flush = hook_of(func, "flush")
    for hook, f in (("setup", setup), ("teardown", teardown), ("flush", flush)):
        if f is not None and not callable(f):
            raise TypeError(f"{where}: {hook}={short_repr(f)} is not callable; {hook} must "
                            f"be a method of the stage, or a function given as stage(fn, "
                            f"{hook}=f), called with no argument")
    if flush is not None and placement not in (Placement.DEDICATED, Placement.MASTER):
        raise ValueError(f"{where}: flush() gives a stage's last outputs from the state it "
                         f"kept, at the end of the input; but this stage is "
                         f"{_keeps_none(placement, window)}, so it keeps no state that could "
                         f"be left over: delete flush, or make the stage stateful "
                         f"(stateful = True, or run_in_master)")
    return StageSpec(index or 0, func, name, placement, window, batch_size, threads, ordered,
                     on_error, max_errors, expand, group, group_wait, _retry(where, func),
                     _timeout(where, func, placement), concurrency, setup, teardown, flush,
                     _replicas(where, func, placement),
                     *keyed_attrs(where, func, _held(placement), group))


def _replicas(where: str, func: object, placement: Placement) -> int | None:
    value = getattr(func, "replicas", None)
    if value is None:
        return None
    n = count(where, "replicas", value, 1, " (or None: the shared pool)")
    if placement not in (Placement.POOL, Placement.DEDICATED):
        raise ValueError(f"{where}: replicas={n} gives a stage processes of its own, but this "
                         f"one runs in the calling process ({_kind(placement)}); delete "
                         f"replicas, or set stateful=False to run it in processes")
    return n


def _held(placement: Placement) -> str | None:
    """How a stage that keeps no state of its own is named; ``None`` for a dedicated one."""
    if placement is Placement.DEDICATED:
        return None
    return "run_in_master" if placement is Placement.MASTER else _keeps_none(
        placement, None).split(",")[0]


def _keeps_none(placement: Placement, window: int | None) -> str:
    if placement is Placement.ASYNC:
        return "async, its calls overlapping on the event loop,"
    if window is not None:
        return f"a window stage (stateful={window}), a function of each window,"
    return "stateless (stateful=False), its calls spread over processes or threads,"


def _timeout(where: str, func: object, placement: Placement) -> float | None:
    limit = getattr(func, "timeout", None)
    if limit is None:
        return None
    limit = seconds(where, "timeout", limit, ", or None")
    if placement is Placement.MASTER:
        raise ValueError(f"{where}: timeout={limit!r} cannot be kept by a run_in_master stage: "
                         f"blpipe cannot safely interrupt the calling process; run the stage "
                         f"in the pool (stateful=False), in threads, or in a process of its "
                         f"own, or delete timeout")
    return limit


def _retry(where: str, func: object) -> Retry | None:
    """``retries``, ``retry_on`` and ``retry_backoff``, validated; ``None`` for no retries."""
    retries = count(where, "retries", getattr(func, "retries", 0), 0)
    on = getattr(func, "retry_on", None)
    backoff = getattr(func, "retry_backoff", None)
    if not retries:
        for name, value in (("retry_on", on), ("retry_backoff", backoff)):
            if value is not None:
                raise ValueError(f"{where}: {name}={value!r} says how to retry, but retries "
                                 f"is 0; set retries = n (calls repeated after an error), or "
                                 f"delete {name}")
        return None
    kinds = on if isinstance(on, tuple) else (Exception,) if on is None else (on,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"{where}: retry_on={on!r}; it must be an exception class or a "
                            f"tuple of them (subclasses of Exception), such as "
                            f"(ConnectionError, TimeoutError)")
    if not kinds:
        raise ValueError(f"{where}: retry_on=() retries no error; name the exception types to "
                         f"retry, or delete retry_on for (Exception,)")
    if backoff is None:
        backoff = 0.0
    if isinstance(backoff, bool) or not isinstance(backoff, numbers.Real):
        raise TypeError(f"{where}: retry_backoff={backoff!r} is a {type(backoff).__name__}; it "
                        f"must be a number of seconds >= 0")
    if not 0 <= float(backoff) <= BACKOFF_CAP:
        raise ValueError(f"{where}: retry_backoff={backoff!r}; it must be a number of seconds "
                         f">= 0 and <= {BACKOFF_CAP:g}, the longest sleep between tries")
    return Retry(retries, kinds, float(backoff))


def _async_only(where: str, func: object, threads: object) -> None:
    """Refuse what places a stage elsewhere on an async stage."""
    if threads is not None:
        raise ValueError(f"{where}: threads={threads!r} runs a blocking stage in threads, but "
                         f"this one is async (an async def): its calls overlap on the "
                         f"pipeline's event loop instead; delete threads, and set concurrency "
                         f"= n for at most n calls in flight")
    if hasattr(func, "run_in_master"):
        raise ValueError(f"{where}: run_in_master={func.run_in_master!r}, but this stage is "
                         f"async (an async def): it runs in the calling process already, on "
                         f"the pipeline's event loop thread, where its calls overlap; delete "
                         f"run_in_master")


def _concurrency(where: str, func: object, kind: str | None, batch_size: int) -> int | None:
    """An async stage's ``concurrency``, validated; its default is ``batch_size``."""
    value = getattr(func, "concurrency", None)
    if kind is None:
        if value is not None:
            raise ValueError(f"{where}: concurrency={value!r} bounds the calls in flight of an "
                             f"async stage, but this stage is not async (its call is not an "
                             f"async def); delete concurrency, or set threads = n to run a "
                             f"blocking stage in n threads")
        return None
    if value is None:
        return batch_size
    n = count(where, "concurrency", value, 1, " (or None for batch_size)")
    if n > batch_size:
        raise ValueError(f"{where}: concurrency={n} is larger than batch_size={batch_size}, "
                         f"which bounds the inputs in flight, so no more than {batch_size} "
                         f"calls could ever overlap; set batch_size >= {n} (twice concurrency "
                         f"keeps inputs waiting for each call that ends), or lower "
                         f"concurrency")
    return n


def _shape(where: str, func: object, window: int | None,
           batch_size: int) -> tuple[bool, int | None, float | None]:
    """``expand``, ``group`` and ``group_wait``, validated."""
    expand = getattr(func, "expand", False)
    if not isinstance(expand, bool):
        raise TypeError(f"{where}: expand={expand!r} is a {type(expand).__name__}; use True "
                        f"(the stage returns an iterable of outputs for each input) or False")
    group = getattr(func, "group", None)
    if group is not None:
        group = count(where, "group", group, 1, " (or None for one input per call)")
        if window is not None:
            raise ValueError(f"{where}: group={group} calls the stage with lists of {group} "
                             f"consecutive inputs, and stateful={window} with windows of "
                             f"{window}; a stage takes one or the other")
        if group > batch_size:
            raise ValueError(f"{where}: group={group} is larger than batch_size={batch_size}, "
                             f"which bounds the inputs in flight, so no group could form; set "
                             f"batch_size to a multiple of group (batch_size = k * {group} "
                             f"lets k groups be in flight)")
    wait = getattr(func, "group_wait", None)
    if wait is not None:
        if group is None:
            raise ValueError(f"{where}: group_wait={wait!r} bounds how long a partial group "
                             f"waits, but the stage has no group; set group, or delete "
                             f"group_wait")
        wait = seconds(where, "group_wait", wait, ", or None")
    return expand, group, wait


ON_ERROR = ("raise", "skip", "collect")


def _kind(placement: Placement) -> str:
    return {Placement.DEDICATED: "stateful (stateful=True, the default)",
            Placement.THREAD: "threads", Placement.ASYNC: "async"}.get(placement,
                                                                       "run_in_master")


def read_stages(operations: Iterable[object]) -> list[StageSpec]:
    """Validate a sequence of stages."""
    if isinstance(operations, (str, bytes)) or not hasattr(operations, "__iter__"):
        raise TypeError(f"operations must be a sequence of callables, got "
                        f"{type(operations).__name__}")
    return [read_stage(i, f) for i, f in enumerate(operations)]
