"""``stage()`` and ``Stage``: blpipe's attributes attached to any callable.

A stage is any callable; how it may run is read from plain attributes
(``stateful``, ``batch_size``, ``run_in_master``, ``threads``, ``ordered``,
``on_error``, ``max_errors``), which can sit on a function, an instance or its
class. ``stage()`` sets them on callables that cannot take attributes, such as
builtins and lambdas, and validates them at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._spec import describe, read_stage

__all__ = ["Stage", "stage"]


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
    __wrapped__: Callable[..., Any]

    def __init__(self, func: Callable[..., Any], *, stateful: bool | int | None,
                 batch_size: int, run_in_master: bool, threads: int | None = None,
                 ordered: bool = True, on_error: str = "raise",
                 max_errors: int | None = None) -> None:
        functools.update_wrapper(self, func, updated=())
        self.stateful = stateful
        self.batch_size = batch_size
        self.threads = threads
        self.ordered = ordered
        self.on_error = on_error
        self.max_errors = max_errors
        if run_in_master:
            self.run_in_master = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        extra = ", run_in_master=True" if hasattr(self, "run_in_master") else ""
        if self.threads is not None:
            extra += f", threads={self.threads!r}"
        if self.ordered is not True:
            extra += f", ordered={self.ordered!r}"
        if self.on_error != "raise":
            extra += f", on_error={self.on_error!r}"
        if self.max_errors is not None:
            extra += f", max_errors={self.max_errors!r}"
        return (f"stage({describe(self.__wrapped__)}, stateful={self.stateful!r}, "
                f"batch_size={self.batch_size!r}{extra})")


_F = TypeVar("_F", bound=Callable[..., Any])
_UNSET: Any = object()


@overload
def stage(func: Callable[..., Any], /, *, stateful: bool | int | None = ...,
          batch_size: int = ..., run_in_master: bool = ..., threads: int | None = ...,
          ordered: bool = ..., on_error: str = ..., max_errors: int | None = ...) -> Stage: ...
@overload
def stage(func: None = None, /, *, stateful: bool | int | None = ...,
          batch_size: int = ..., run_in_master: bool = ..., threads: int | None = ...,
          ordered: bool = ..., on_error: str = ..., max_errors: int | None = ...,
          ) -> Callable[[Callable[..., Any]], Stage]: ...


def stage(func: Callable[..., Any] | None = None, /, *, stateful: bool | int | None = _UNSET,
          batch_size: int = _UNSET, run_in_master: bool = _UNSET, threads: int | None = _UNSET,
          ordered: bool = _UNSET, on_error: str = _UNSET, max_errors: int | None = _UNSET,
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

    Attributes not given keep the callable's own, else the defaults. The values
    are validated at once, so a bad one fails here rather than in a pipeline.
    """

    def wrap(f: Callable[..., Any]) -> Stage:
        inner = f.__wrapped__ if isinstance(f, Stage) else f
        s = Stage(inner,
                  stateful=getattr(f, "stateful", True) if stateful is _UNSET else stateful,
                  batch_size=getattr(f, "batch_size", 1) if batch_size is _UNSET else batch_size,
                  run_in_master=run_in_master is not _UNSET and run_in_master,
                  threads=getattr(f, "threads", None) if threads is _UNSET else threads,
                  ordered=getattr(f, "ordered", True) if ordered is _UNSET else ordered,
                  on_error=getattr(f, "on_error", "raise") if on_error is _UNSET else on_error,
                  max_errors=(getattr(f, "max_errors", None) if max_errors is _UNSET
                              else max_errors))
        if run_in_master is _UNSET and hasattr(f, "run_in_master"):
            s.run_in_master = f.run_in_master  # a falsy one is refused just below
        read_stage(None, s)
        return s

    return wrap if func is None else wrap(func)
