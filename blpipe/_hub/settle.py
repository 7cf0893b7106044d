"""The errors a stage went on past (``on_error``), placed in the stream and counted.

Where a stage runs, an error it goes on past is kept as a ``Skipped`` entry
beside the outputs; in the calling process, as its chunk is released (or, for
a lazy run in the caller, as it happens), each is recorded in the
:class:`~blpipe.errorlog.ErrorLog` at its place in the stage's stream, and the
one over ``max_errors`` cuts the outputs there and is raised in their place::

   worker or thread: outputs + skipped ──► Segment.release ──► settle() ──► next
   master stage, SequentialPipeline: Run ──► settled() ──► each error as it comes
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._core.failures import Skipped, add_note

if TYPE_CHECKING:
    from .._core.run import Run
    from ..errorlog import ErrorLog
    from .flow import Record


def settle(log: ErrorLog, first: int, bases: Sequence[int], outputs: list[Any],
           skipped: list[Skipped]) -> tuple[list[Any], BaseException | None]:
    """Count the errors a chunk's stages went on past, in stream order.

    An error sits before ``outputs[at]``. Step ``s`` is stage ``first + s``,
    and ``bases[s]`` is its position in that stage's stream at the chunk's
    first input, which places each error recorded. At an error over its
    stage's budget the outputs are cut there, and that error is returned, to
    be raised in their place.
    """
    for at, step, local, err, size in skipped:
        stage = first + step
        if not log.admit(stage):
            exc = err.exception()
            add_note(exc, log.over_budget(stage))
            return outputs[:at], exc
        if log.wants(stage):
            tb = err.traceback
            log.record(stage, bases[step] + local, err.input_repr, err.exception(), tb, size)
    return outputs, None


def settle_chunk(log: ErrorLog, first: int, rec: Record) -> BaseException | None:
    """:func:`settle` a released chunk's errors gone past, in place: ``rec.outs``
    keeps its outputs up to the error over budget, if any, which is returned."""
    skipped, outs = rec.skipped, rec.outs
    assert skipped is not None  # it has errors gone past
    assert outs is not None  # and its results are in
    if rec.trimmed:  # an expansion's outputs passed on are gone from the list
        t = rec.trimmed
        skipped = [(at - t, step, local, err, n) for at, step, local, err, n in skipped]
    outs, exc = settle(log, first, (rec.start + rec.offset,), outs, skipped)
    rec.skipped = None
    rec.outs = [y for y in outs if y is not None]
    return exc


def settled(run: Run, log: ErrorLog, first: int) -> Iterator[Any]:
    """The outputs of a lazy run, each error gone
    past recorded as it happens. An error over its budget, or the run's
    failure, is raised after every output before it."""
    run.judge = lambda entry: settle(log, first, run.base, [], [entry])[1]
    yield from run
    if run.over is not None:
        raise run.over
    if run.failure is not None:
        raise run.failure.exception()
