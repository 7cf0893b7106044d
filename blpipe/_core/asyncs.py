"""Whether a stage is async: calling it gives a coroutine or an async generator.

An async stage runs on the run's event loop (:mod:`blpipe._hub.aio`), whatever
its ``stateful`` says; this is how a callable is judged to be one, looking
through the wrappers users put around an ``async def``.
"""

from __future__ import annotations

import functools
import inspect

COROUTINE = "coroutine"
ASYNC_GENERATOR = "async generator"


def async_kind(func: object) -> str | None:
    """``COROUTINE`` or ``ASYNC_GENERATOR`` when calling ``func`` gives one,
    else ``None``.

    It looks through ``functools.partial``, at an object's ``__call__``, and
    through the ``__wrapped__`` of a callable object, which is taken to call
    what it wraps, as a ``blpipe.stage`` does. A function is judged by itself
    only: one made with ``functools.wraps`` may be a plain wrapper around an
    ``async def``.
    """
    for _ in range(100):  # a cycle of wrappers ends here
        while isinstance(func, functools.partial):
            func = func.func
        kind = _kind_of(func)
        if kind is not None or inspect.isroutine(func) or isinstance(func, type) or \
                not callable(func):
            return kind
        kind = _kind_of(type(func).__call__)
        if kind is not None:
            return kind
        wrapped = getattr(func, "__wrapped__", None)
        if wrapped is None or wrapped is func:
            return None
        func = wrapped
    return None


def _kind_of(f: object) -> str | None:
    if inspect.iscoroutinefunction(f):
        return COROUTINE
    return ASYNC_GENERATOR if inspect.isasyncgenfunction(f) else None
