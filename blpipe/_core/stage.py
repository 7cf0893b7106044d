"""``Stage``: a callable with blpipe's attributes attached, as ``blpipe.stages.stage`` makes it.

It is defined here, with the contract, because every process that calls a
stage unwraps it (:func:`unwrapped`); it is exported by :mod:`blpipe.stages`,
and says so in its ``__module__``.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from typing import Any

from .text import describe

# Every attribute but run_in_master, which counts by its presence, with its default.
DEFAULTS: dict[str, Any] = {
    "stateful": True, "batch_size": 1, "threads": None, "ordered": True, "on_error": "raise",
    "max_errors": None, "expand": False, "group": None, "group_wait": None,
    "retries": 0, "retry_on": None, "retry_backoff": None, "timeout": None, "concurrency": None,
    "replicas": None, "key": None, "key_idle": None, "max_keys": None,
    "setup": None, "teardown": None, "flush": None,
}
HOOKS = ("setup", "teardown", "flush")  # called, not read: a Stage looks them up in what it wraps


class Stage:
    """A callable with blpipe's attributes attached; see :func:`stage`.

    It pickles whenever the wrapped callable does, so it can run in any
    process.
    """

    stateful: bool | int | None
    batch_size: int
    run_in_master: object
    threads: int | None
    ordered: bool
    on_error: str
    max_errors: int | None
    expand: bool
    group: int | None
    group_wait: float | None
    retries: int
    retry_on: type[Exception] | tuple[type[Exception], ...] | None
    retry_backoff: float | None
    timeout: float | None
    concurrency: int | None
    replicas: int | None
    key: Callable[[Any], Any] | None
    key_idle: int | None
    max_keys: int | None
    setup: Callable[[], Any] | None
    teardown: Callable[[], Any] | None
    flush: Callable[[], Any] | None
    __wrapped__: Callable[..., Any]

    def __init__(self, func: Callable[..., Any], attrs: dict[str, Any]) -> None:
        functools.update_wrapper(self, func, updated=())
        for name, default in DEFAULTS.items():
            setattr(self, name, attrs.get(name, default))
        if "run_in_master" in attrs:
            self.run_in_master = attrs["run_in_master"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        extra = ", run_in_master=True" if hasattr(self, "run_in_master") else ""
        for name, default in DEFAULTS.items():
            value = getattr(self, name)
            if name not in ("stateful", "batch_size") and value != default:
                extra += f", {name}={value!r}"
        return (f"stage({describe(self.__wrapped__)}, stateful={self.stateful!r}, "
                f"batch_size={self.batch_size!r}{extra})")


def hook_of(func: object, name: str) -> Any:
    """A stage's ``setup``, ``teardown`` or ``flush`` (``name``), or ``None``; a
    ``Stage`` without its own has that of what it wraps (looked up each time,
    so that a copy with another object inside has that object's)."""
    f = getattr(func, name, None)
    if f is None and isinstance(func, Stage):
        f = getattr(func.__wrapped__, name, None)
    return f


def hooks_of(func: object) -> tuple[Any, Any]:
    """A stage's ``setup`` and ``teardown``, ``None`` for each it lacks."""
    return hook_of(func, "setup"), hook_of(func, "teardown")


def unwrapped(func: Any) -> Any:
    """The callable a ``Stage`` wraps, else ``func`` itself. A Stage only
    delegates, so calling what it wraps saves a Python call per item."""
    return func.__wrapped__ if isinstance(func, Stage) else func


# Its annotations resolved here, where their names are: typing.get_type_hints looks
# for them in the module it names, where it is exported (what pickle and reprs name).
Stage.__annotations__ = typing.get_type_hints(Stage)
Stage.__module__ = "blpipe.stages"
