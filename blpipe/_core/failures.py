"""How an exception crosses a process boundary, and where it lands in the stream.

A stage's exception is caught where the stage ran (``Chain.run``) as a
:class:`StageFailure`. In the calling process (master and thread stages,
``SequentialPipeline``) the stage's own exception is raised, with a note
naming the stage and the input. A worker packs it as a :class:`RemoteError`:
the pickled exception, checked to survive the trip, its formatted traceback
and the input's ``repr``; the caller rebuilds it with the worker's traceback
as its ``__cause__``. Both kinds answer ``exception()``, ``input_repr`` and
``traceback``, so the code that places errors never asks which one it has.

In the calling process a failure travels down the stream as a
:class:`~blpipe._hub.flow.Failure` marker in the place of the input it
failed on, so every output of earlier inputs goes out
before it is raised. :mod:`blpipe._hub.settle` places the errors a stage
went on past (``on_error``) in stream order and counts them against
``max_errors``.
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any, NamedTuple, TypeVar

from ..errors import BrokenPipeline, RemoteTraceback, SerializationError
from .text import short_repr
from .transport import HEADER, Frame, dumps, loads


def formatted(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it."""
    return "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10, which has no notes, the list alone is kept."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


class StageFailure(Exception):
    """A stage raised ``exc`` on ``item``; ``label`` names the stage."""

    def __init__(self, label: str, item: Any, exc: BaseException) -> None:
        super().__init__(label, exc)
        self.label = label
        self.item = item
        self.exc = exc

    @property
    def input_repr(self) -> str:
        return short_repr(self.item)

    @property
    def traceback(self) -> str:
        return formatted(self.exc)

    def exception(self, where: str | None = None) -> BaseException:
        """The stage's own exception, with a note naming the stage and ``where``
        it raised (by default: on which input)."""
        where = where or f"on input {self.input_repr}"
        add_note(self.exc, f"raised by blpipe {self.label} {where}")
        return self.exc


class RemoteError(NamedTuple):
    """A stage's exception, packed in a worker to be rebuilt in the caller."""

    label: str
    input_repr: str
    frame: Frame | None  # the pickled exception; None when it could not make the trip
    traceback: str
    reason: str | None  # why it could not

    @classmethod
    def pack(cls, failure: StageFailure) -> RemoteError:
        """Pack ``failure``, checking that it survives the trip.

        An exception can pickle yet fail to unpickle (an ``__init__`` that
        takes other arguments than ``args``, cpython #103061), so the round
        trip is tried here, where the failure can still name the stage and input.
        """
        exc = failure.exc
        frame: Frame | None
        try:
            frame = dumps(exc)
            loads(HEADER.unpack(frame[0])[0], frame[1])
            reason = None
        except Exception as why:
            frame, reason = None, f"{type(why).__name__}: {why}"
        return cls(failure.label, failure.input_repr, frame, formatted(exc), reason)

    def exception(self, where: str | None = None) -> BaseException:
        """The worker's exception, with its traceback as ``__cause__`` and a note
        naming the stage and ``where`` it raised (by default: on which input)."""
        where = where or f"on input {self.input_repr}"
        note = f"raised by blpipe {self.label} {where}"
        exc: BaseException
        if self.frame is None:
            exc = SerializationError(
                f"{self.label} raised an exception that cannot be sent to the calling process "
                f"({self.reason}), {where}; its traceback is above")
        else:
            exc = loads(HEADER.unpack(self.frame[0])[0], self.frame[1])
        exc.__cause__ = RemoteTraceback(f'\n"""\n{self.traceback}"""  ({note})')
        add_note(exc, note)
        return exc


# An error a stage went on past: (where it sits among the chunk's outputs, the
# step, its index among the step's inputs in the chunk (a window's newest, a
# group's first), the error, how many inputs it covers (a group's size)).
Skipped = tuple[int, int, int, "StageFailure | RemoteError", int]


E = TypeVar("E", bound=BaseException)


def _caused(exc: E, tb: str) -> E:
    """``exc``, with the worker's traceback ``tb`` as its cause."""
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def broken(label: str, tb: str) -> BrokenPipeline:
    """blpipe's own code failed where ``label`` runs: not the stage's doing."""
    return _caused(BrokenPipeline(f"blpipe itself failed in the worker running {label} (its "
                                  f"traceback is above); this is a bug in blpipe, not in the "
                                  f"stage: please report it"), tb)


def cannot_load(label: str, tb: str) -> BrokenPipeline:
    """A worker could not load ``label``'s stages."""
    return _caused(BrokenPipeline(f"{label} could not be loaded in its worker process; see the "
                                  f"traceback above. Under spawn and forkserver, stages must "
                                  f"be importable or pickle by value"), tb)


def cannot_unpickle(label: str, first_input: str, tb: str) -> SerializationError:
    """A worker could not unpickle a chunk of ``label``'s inputs."""
    return _caused(SerializationError(f"the chunk starting at input {first_input} of {label} "
                                      f"cannot be unpickled in its worker process (see the "
                                      f"traceback above): its items' classes must be "
                                      f"importable there"), tb)
