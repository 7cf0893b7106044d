"""How blpipe names a value or a stage in a message: a leaf, imported by every side.

>>> describe(len)
'len'
"""

from __future__ import annotations

import reprlib

_reprs = reprlib.Repr()
_reprs.maxstring = 60
_reprs.maxother = 60
_reprs.maxlong = 40


def short_repr(obj: object) -> str:
    """A ``repr`` cut to a readable length, for error messages.

    >>> short_repr(b"ab" * 10**6)
    "b'abababababababababababab'... (2,000,000 bytes)"
    """
    if isinstance(obj, (bytes, bytearray)) and len(obj) > 60:
        # reprlib would build the whole repr first: seconds for a large buffer
        return f"{obj[:24]!r}... ({len(obj):,} bytes)"
    try:
        return _reprs.repr(obj)
    except Exception as e:  # a broken __repr__ must not hide the real error
        return f"<{type(obj).__name__} (repr failed: {e!r})>"


def describe(func: object) -> str:
    """A short human name for a stage: its qualified name, else its ``repr``.

    A wrapper (``blpipe.stage``, ``functools.wraps``) is named after what it wraps.
    """
    wrapped = getattr(func, "__wrapped__", None)
    if wrapped is not None and wrapped is not func:
        return describe(wrapped)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str) and not isinstance(func, type):
        return qualname
    cls = type(func)
    if cls.__repr__ is object.__repr__:
        return f"{cls.__qualname__}()"
    return short_repr(func)
