"""A stage's state at a checkpoint's cut, taken in whatever process the stage runs.

A dedicated worker takes its stages' state when a ``Snapshot`` reaches it; a
master segment takes its own when the cut reaches it. Both pickle the same
thing, the user's object inside blpipe's wrappers, without the resources its
``setup()`` made (:mod:`blpipe._core.hooks`)::

   Retrying ─► Abandoning ─► Clocked ─► Stage ─► the user's object: its state
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .hooks import without_resources
from .keyed import Keyed
from .retry import Retrying
from .stage import Stage, unwrapped
from .timeout import Abandoning, Clocked
from .transport import dumps_stage

if TYPE_CHECKING:
    from .chain import Chain


def innermost(func: Any) -> Any:
    """The user's callable inside blpipe's wrappers: what holds the state."""
    while isinstance(func, (Retrying, Abandoning, Clocked)):
        func = func.func
    return unwrapped(func)


def with_state(func: Any, state: Any) -> Any:
    """``func`` (a spec's) with its user callable replaced by ``state``."""
    if isinstance(func, Stage):
        func = copy.copy(func)
        func.__wrapped__ = state
        return func
    return state


def has_state(obj: Any) -> bool:
    """Whether a stage's callable may hold state: an object, not a plain function."""
    return not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType,
                                functools.partial))


def states(chain: Chain) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Each of ``chain``'s stages: its number, its state pickled (``None`` for a
    plain function), and why it would not pickle (else ``None``)."""
    for step, func in zip(chain.steps, chain.funcs, strict=True):
        obj = innermost(func)
        if not has_state(obj):
            yield step.number, None, None
            continue
        try:
            if isinstance(obj, Keyed):  # its keys' copies, not what it was built as
                yield step.number, dumps_stage(obj.saved()), None
                continue
            yield step.number, dumps_stage(without_resources(obj)), None
        except Exception as e:
            yield step.number, None, f"{step.label}: {type(e).__name__}: {e}"


def chain_state(windows: Sequence[Any], groups: Sequence[list[Any]]) -> bytes:
    """A master chain's open windows and partial groups."""
    return dumps_stage(([None if w is None else list(w) for w in windows],
                        [list(g) for g in groups]))
