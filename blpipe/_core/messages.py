"""The messages between the hub and its workers (the data flow is drawn in :mod:`blpipe._hub.loop`).

=====================  ===========================  ===========================================
from -> to             message                      fields
=====================  ===========================  ===========================================
hub -> worker          ``Task``                     segment, items, freed slots, ``None``,
                                                    an expansion's ``Credit``
worker -> next linked  ``Task`` (relayed)           ``None``, outputs, ``[]``, ``Carry`` (error,
                                                    stats, seconds so far)
worker -> hub          ``Result``                   outputs, error, stats, seconds, skipped
worker -> hub          ``Part``                     an expanding chunk's outputs so far
hub -> worker          ``Resume``                   a paused expansion's new ``Credit``, freed
                                                    slots
worker -> hub          ``Loaded``                   slot: a huge input is read, free it now
worker -> hub          ``LoadFailed``               traceback: the stages could not load
worker -> hub          ``Unloadable``               traceback: a task could not be unpickled
worker -> hub          ``Broken``                   traceback: blpipe's own code failed
worker -> hub          ``Ready``                    its stages' ``setup()`` ran, in seconds
worker -> hub          ``HookFailed``               a stage's ``setup()`` or ``teardown()``
                                                    raised: stage, hook, process, error
hub -> dedicated       ``Snapshot`` (relayed)       segment: a checkpoint's cut is here
hub -> keyed replica   ``Adopt``                    a key's copy, from the checkpoint resumed
                                                    from
hub -> dedicated       ``Flush``                    segment: the input ended; a ``Result``
                                                    of the stage's ``flush()`` comes back
dedicated -> hub       ``State``                    stage, its pickled state (or the error)
a future -> hub        ``Result`` or ``Broken``     an executor's, a thread's, the loop's
hub -> worker          end of file on its task pipe stop
=====================  ===========================  ===========================================

Each is a ``NamedTuple``. The two sent once per chunk, :class:`Task` and
:class:`Result`, travel as plain tuples and are rebuilt with
``tuple.__new__``: pickling a class by reference costs about a microsecond
at each end, a share of a chunk's round trip worth saving. The rare ones
travel as themselves, so their type tells them apart from a result.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, NamedTuple

from .failures import StageFailure

if TYPE_CHECKING:
    from .failures import RemoteError, Skipped


class Carry(NamedTuple):
    """What a linked worker passes on with its outputs: the error and figures so far."""

    error: RemoteError | None
    stats: list[list[Any]]
    seconds: float


class Credit(NamedTuple):
    """How much of an expansion a worker may send before it pauses: the hub
    holds up to this many outputs, and about this many bytes of them (a part
    holds at least one output, however large)."""

    outputs: int
    nbytes: int


class Task(NamedTuple):
    """hub -> worker (or worker -> the next linked worker): a chunk to run."""

    segment: int | None  # the segment that runs it; None in a relayed task
    items: list[Any]  # the inputs (a window segment's: the k-1 before them too)
    freed: list[tuple[int, int]]  # (pid, slot) of this worker's results the hub has read
    carry: Carry | None = None  # in a relayed task
    credit: Credit | None = None  # for an expansion: what it may send before it pauses


class Result(NamedTuple):
    """worker -> hub, and an executor's or thread's task -> hub: a chunk's results.

    ``outputs`` have ``None`` dropped, unless ``skipped`` lists errors a stage
    went on past: then they are aligned with the chunk's inputs, so that the
    hub can cut them at an error over its budget.
    """

    outputs: list[Any]
    error: RemoteError | StageFailure | None  # the chunk failed after its outputs
    stats: list[list[Any]]  # per stage: [busy seconds, inputs, outputs (-1: the caller counts)]
    seconds: float  # spent unpickling this chunk and pickling the last result
    skipped: list[Skipped]


def call_failed(label: str, item: Any, exc: Exception, size: int) -> Result:
    """The ``Result`` of a chunk of one call that failed with ``exc`` out of the
    stage's sight (its worker died, the hub gave up on it), for a stage with
    ``on_error``: no output, and the error gone past in place of the ``size``
    inputs the call took (a group's, else one)."""
    return Result([None], None, [[0.0, 0, 0, 0, 0]], 0.0,
                  [(0, 0, 0, StageFailure(label, item, exc), size)])


class Part(NamedTuple):
    """worker -> hub: outputs of a chunk that is still expanding, and the errors
    gone past among them; the chunk's ``Result`` comes after its last part.
    A part that fills the task's ``credit`` pauses the expansion (``paused``
    names it); the worker runs other chunks meanwhile."""

    outputs: list[Any]
    skipped: list[Skipped]
    paused: int | None
    expanding: str  # the input whose expansion it is, as messages show it


class Resume(NamedTuple):
    """hub -> worker: go on with a paused expansion, within ``credit``. The
    slots of the parts read since carry on their way back with it (``freed``),
    as with a task: a long expansion from one input sends no other message
    that could free them, and would hold a slot per part until it ends."""

    ident: int
    credit: Credit
    freed: list[tuple[int, int]]


class Flush(NamedTuple):
    """hub -> dedicated worker: the input has ended; answer with the stage's
    ``flush()`` outputs, as a ``Result``. For a keyed stage, those of ``keys``,
    which are retired."""

    segment: int
    keys: tuple[Any, ...] | None = None


class Adopt(NamedTuple):
    """hub -> keyed replica: a key's copy from the checkpoint resumed from, sent
    to the replica that now owns the key, before anything else of that key."""

    segment: int
    key: Any
    blob: bytes  # the copy, pickled (with dill)


class Snapshot(NamedTuple):
    """hub -> a dedicated worker, relayed along a link: a checkpoint's cut comes
    after the chunks before it; answer with the stage's ``State``."""

    segment: int


class State(NamedTuple):
    """worker -> hub: its stage pickled at a cut, or why it would not pickle."""

    stage: int
    blob: bytes | None
    error: str | None = None
    replica: int = 0  # which of a keyed stage's replicas: each sends its keys' copies


class Loaded(NamedTuple):
    """worker -> hub: a task's huge shared memory slot is read, and can go now."""

    slot: int


class LoadFailed(NamedTuple):
    """worker -> hub: the worker could not load its stages."""

    traceback: str


class Unloadable(NamedTuple):
    """worker -> hub: a task could not be unpickled (its items' classes are missing)."""

    traceback: str


class Broken(NamedTuple):
    """worker or task -> hub: blpipe's own code failed there, not a stage."""

    traceback: str


class Ready(NamedTuple):
    """worker -> hub: its stages' ``setup()`` ran, in this many seconds."""

    seconds: float


class HookFailed(NamedTuple):
    """worker or task -> hub: a stage's ``setup()`` or ``teardown()`` raised."""

    label: str
    hook: str  # "setup" or "teardown"
    where: str  # the process: "worker process 1234", "the calling process"
    error: RemoteError | StageFailure

    def exception(self) -> BaseException:
        """The stage's exception, with a note naming the stage, the hook and the process."""
        return self.error.exception(f"in {self.hook}(), in {self.where}")


new = tuple.__new__  # Task or Result from the plain tuple that carried it


class Role(enum.Enum):
    """A worker's place: alone (the pool's, or one dedicated stage's), or in a
    link of dedicated workers, each feeding the next through a pipe."""

    ALONE = "alone"  # the hub sends its tasks and reads its results
    FIRST = "first"  # the hub sends its tasks; it relays its outputs to the next
    MIDDLE = "middle"  # fed by the one before it; relays to the next
    LAST = "last"  # fed by the one before it; the hub reads its results

    @staticmethod
    def of(i: int, n: int) -> Role:
        """The role of worker ``i`` of a link of ``n``."""
        if n == 1:
            return Role.ALONE
        return Role.FIRST if i == 0 else Role.LAST if i == n - 1 else Role.MIDDLE


class Setup(NamedTuple):
    """What a worker process is started with, besides its pipes."""

    blob: bytes  # its stages, pickled
    role: Role
    close_fds: tuple[int, ...]  # the parent's ends of other workers' pipes, under fork
    parent: int  # the pid to die with (0: the fork server's child, see die_with_parent)
    clock: Any  # shared [task, call, started], for stages with a timeout; else None
    board: Any  # shared memory where it shows the call in hand when asked
    replica: tuple[int, int] = (0, 1)  # its index among the processes running its stages
