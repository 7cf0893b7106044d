"""The exceptions blpipe raises itself.

A stage's own exception is re-raised with its original type, so these cover
only what is blpipe's to report: a pipeline that cannot go on, a worker that
died, and something that cannot cross a process boundary.
"""

from __future__ import annotations

import signal

__all__ = ["BrokenPipeline", "RemoteTraceback", "SerializationError", "StageTimeout",
           "WorkerDied"]


class BrokenPipeline(RuntimeError):
    """The pipeline cannot go on; it has been shut down."""


class WorkerDied(BrokenPipeline):
    """A worker process ended while it had work.

    ``stage`` names the stage it was running, ``exitcode`` is the process's
    exit code (negative: killed by that signal), and ``input_repr`` is a short
    ``repr`` of the input it was handling, or ``None`` when unknown. ``runs``
    is how many times that input's call ran, each time ending its worker: a
    pool stage's call runs again alone before it is blamed.
    """

    def __init__(self, stage: str, exitcode: int | None, input_repr: str | None,
                 runs: int = 1) -> None:
        self.stage = stage
        self.exitcode = exitcode
        self.input_repr = input_repr
        self.runs = runs
        super().__init__(_death_message(stage, exitcode, input_repr, runs))

    def __reduce__(self) -> tuple[type[WorkerDied], tuple[str, int | None, str | None, int]]:
        return type(self), (self.stage, self.exitcode, self.input_repr, self.runs)


class StageTimeout(TimeoutError):
    """A call ran past its stage's ``timeout``.

    ``stage`` names the stage, ``input_repr`` is a short ``repr`` of the
    input, ``limit`` the timeout in seconds, and ``what`` says what became of
    the call: its worker was killed, it was abandoned in its thread, its task
    was cancelled. It is a ``TimeoutError``, and the error policy applies to
    it like to any error of the stage.
    """

    def __init__(self, stage: str, input_repr: str, limit: float, what: str) -> None:
        self.stage = stage
        self.input_repr = input_repr
        self.limit = limit
        self.what = what
        super().__init__(f"{stage} ran past its timeout of {limit:g} s on input {input_repr}: "
                         f"{what}")

    def __reduce__(self) -> tuple[type[StageTimeout], tuple[str, str, float, str]]:
        return type(self), (self.stage, self.input_repr, self.limit, self.what)


class SerializationError(TypeError):
    """A stage, an item, a result or an exception could not be pickled.

    It is a ``TypeError``, like the error ``pickle`` itself raises.
    """


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker process.

    blpipe sets it as the ``__cause__`` of the re-raised exception, so the
    worker's traceback prints above the parent's.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _describe_exit(exitcode: int | None) -> str:
    """``'SIGKILL(-9)'`` for a signal death, ``'exit code 3'`` otherwise."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name}({exitcode})"
        except ValueError:
            return f"signal {-exitcode}({exitcode})"
    return f"exit code {exitcode}"


_HINTS = {
    -signal.SIGKILL: "SIGKILL usually means the out-of-memory killer: lower batch_size, "
    "or make items smaller (on Linux, under fork or spawn, it also comes when the thread "
    "that started the worker ends)",
    -signal.SIGSEGV: "a segmentation fault comes from native code called by the stage",
    -signal.SIGTERM: "something outside blpipe terminated the worker",
}


def _death_message(stage: str, exitcode: int | None, input_repr: str | None,
                   runs: int) -> str:
    what = f"the worker running {stage} died with {_describe_exit(exitcode)}"
    if input_repr is not None:
        what += f" while handling input {input_repr}"
    if runs > 1:
        what += (f", on each of the {runs} times it ran, "
                 + ("the second alone" if runs == 2 else f"the last {runs - 1} each alone"))
    hint = _HINTS.get(exitcode or 0, "the stage (or native code it calls) ended the process; "
                      "run it under SequentialPipeline to debug it in one process")
    return f"{what}; {hint}"
