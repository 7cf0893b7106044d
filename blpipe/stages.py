"""``stage()`` and ``Stage``: blpipe's attributes attached to any callable.

A stage is any callable; how it may run is read from plain attributes
(``stateful``, ``batch_size``, ``run_in_master``, ``threads``, ``ordered``,
``on_error``, ``max_errors``, ``expand``, ``group``, ``group_wait``, ``retries``,
``retry_on``, ``retry_backoff``, ``timeout``, ``concurrency``), which can sit on
a function, an instance or its class. ``stage()`` sets them on callables that
cannot take attributes, such as builtins and lambdas, and validates them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from ._core.hooks import Where, where
from ._core.spec import read_stage
from ._core.stage import DEFAULTS, HOOKS, Stage, unwrapped

__all__ = ["Stage", "Where", "stage", "where"]

# defined with the hooks, in any process; exported here, and named so
Where.__module__ = where.__module__ = __name__


_UNSET: Any = object()


@overload
def stage(func: Callable[..., Any], /, *, stateful: bool | int | None = ...,
          batch_size: int = ..., run_in_master: bool = ..., threads: int | None = ...,
          ordered: bool = ..., on_error: str = ..., max_errors: int | None = ...,
          expand: bool = ..., group: int | None = ..., group_wait: float | None = ...,
          retries: int = ..., retry_on: type[Exception] | tuple[type[Exception], ...] = ...,
          retry_backoff: float = ..., timeout: float | None = ...,
          concurrency: int | None = ..., replicas: int | None = ...,
          key: Callable[[Any], Any] | None = ..., key_idle: int | None = ...,
          max_keys: int | None = ..., setup: Callable[[], Any] | None = ...,
          teardown: Callable[[], Any] | None = ...,
          flush: Callable[[], Any] | None = ...) -> Stage: ...
@overload
def stage(func: None = None, /, *, stateful: bool | int | None = ...,
          batch_size: int = ..., run_in_master: bool = ..., threads: int | None = ...,
          ordered: bool = ..., on_error: str = ..., max_errors: int | None = ...,
          expand: bool = ..., group: int | None = ..., group_wait: float | None = ...,
          retries: int = ..., retry_on: type[Exception] | tuple[type[Exception], ...] = ...,
          retry_backoff: float = ..., timeout: float | None = ...,
          concurrency: int | None = ..., replicas: int | None = ...,
          key: Callable[[Any], Any] | None = ..., key_idle: int | None = ...,
          max_keys: int | None = ..., setup: Callable[[], Any] | None = ...,
          teardown: Callable[[], Any] | None = ...,
          flush: Callable[[], Any] | None = ...) -> Callable[[Callable[..., Any]], Stage]: ...


def stage(func: Callable[..., Any] | None = None, /, *, stateful: bool | int | None = _UNSET,
          batch_size: int = _UNSET, run_in_master: bool = _UNSET, threads: int | None = _UNSET,
          ordered: bool = _UNSET, on_error: str = _UNSET, max_errors: int | None = _UNSET,
          expand: bool = _UNSET, group: int | None = _UNSET, group_wait: float | None = _UNSET,
          retries: int = _UNSET,
          retry_on: type[Exception] | tuple[type[Exception], ...] = _UNSET,
          retry_backoff: float = _UNSET, timeout: float | None = _UNSET,
          concurrency: int | None = _UNSET, replicas: int | None = _UNSET,
          key: Callable[[Any], Any] | None = _UNSET, key_idle: int | None = _UNSET,
          max_keys: int | None = _UNSET, setup: Callable[[], Any] | None = _UNSET,
          teardown: Callable[[], Any] | None = _UNSET, flush: Callable[[], Any] | None = _UNSET
          ) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Attach blpipe's attributes to any callable, builtins included.

    Use it as a function or as a decorator::

        >>> from blpipe import stage
        >>> n = stage(len, stateful=False, batch_size=64)
        >>> n("abc"), n.stateful, n.batch_size
        (3, False, 64)
        >>> @stage(stateful=3)
        ... def diff2(w):
        ...     return w[2] - w[0]
        >>> diff2((1, 4, 9))
        8
        >>> fetch = stage(str.upper, stateful=False, threads=16, ordered=False)
        >>> fetch
        stage(str.upper, stateful=False, batch_size=1, threads=16, ordered=False)
        >>> stage(str.split, stateful=False, expand=True)
        stage(str.split, stateful=False, batch_size=1, expand=True)
        >>> async def get(url):
        ...     return url
        >>> stage(get, batch_size=64, concurrency=32)
        stage(get, stateful=True, batch_size=64, concurrency=32)

    Attributes not given keep the callable's own, else the defaults. The values
    are validated at once, so a bad one fails here rather than in a pipeline.
    """
    given = {name: value for name, value in locals().items()
             if name in DEFAULTS and value is not _UNSET}
    if run_in_master is not _UNSET and run_in_master:
        given["run_in_master"] = True

    def wrap(f: Callable[..., Any]) -> Stage:
        inner = unwrapped(f)
        # a Stage's hooks are its own; an object's methods stay where they are, found
        # through the Stage, so that they stay bound to the object it wraps
        attrs = {name: getattr(f, name) for name in DEFAULTS
                 if hasattr(f, name) and (name not in HOOKS or isinstance(f, Stage))}
        if run_in_master is _UNSET and hasattr(f, "run_in_master"):
            attrs["run_in_master"] = f.run_in_master  # a falsy one is refused just below
        s = Stage(inner, {**attrs, **given})
        read_stage(None, s)
        return s

    return wrap if func is None else wrap(func)
