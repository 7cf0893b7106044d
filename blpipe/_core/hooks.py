"""``setup()`` and ``teardown()``: what a stage makes once in each process that calls it.

A stage may have a ``setup()`` and a ``teardown()`` (methods of a stage object,
or ``stage(fn, setup=f0, teardown=f1)`` for a function), called with no
argument. Every process that will call the stage runs them around its calls,
whatever the placement: a worker process as it starts, the calling process
for master, thread and async stages, an executor's process before its first
chunk::

    start ─► setup() of each stage here, in stage order, retried as the stage's calls are
              │ fails: the stages set up so far are torn down; the run ends, naming the
              │        stage, setup and the process
              ▼
           calls ... ─► the last call, end of input, close(), or the run failing elsewhere
              ▼
           teardown() of each stage set up here, in reverse order; an error is raised
           to the consumer after a run that went well (a teardown often commits)

What ``setup()`` adds to its object's attributes is a *resource*: a checkpoint
pickles the object without them (:func:`without_resources`), and a resume
makes them again, by running ``setup()``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .failures import RemoteError, StageFailure
from .keyed import Keyed
from .messages import HookFailed, Ready
from .retry import Retrying, after
from .spec import Retry
from .stage import hook_of, hooks_of
from .timeout import Abandoning, Clocked
from .transport import dumps, write_frame


class Hook(NamedTuple):
    """One stage's ``setup`` and ``teardown`` where it runs."""

    label: str
    setup: Callable[[], Any] | None
    teardown: Callable[[], Any] | None
    retry: Retry | None  # the stage's retries apply to its setup() too


def bare(func: object) -> object:
    """``func`` without blpipe's wrappers of its calls."""
    while isinstance(func, (Retrying, Abandoning, Clocked)):
        func = func.func
    return func


def flush_of(func: object) -> Callable[[], Any] | None:
    """The ``flush`` of the stage ``func`` runs, or ``None``."""
    f: Callable[[], Any] | None = hook_of(bare(func), "flush")
    return f


def hook(label: str, func: object, retry: Retry | None = None) -> Hook | None:
    """The hook of the stage ``func`` runs, or ``None`` when it has neither."""
    if retry is None and isinstance(func, Retrying):
        retry = func.retry
    func = bare(func)
    if isinstance(func, Keyed) and hooks_of(func.template) == (None, None):
        return None  # its own setup() only runs the stage's
    setup, teardown = hooks_of(func)
    if setup is None and teardown is None:
        return None
    return Hook(label, setup, teardown, retry)


class HookFailure(Exception):
    """``hook`` (``'setup'`` or ``'teardown'``) of stage ``label`` raised ``error``."""

    def __init__(self, label: str, hook: str, error: BaseException) -> None:
        super().__init__(label, hook, error)
        self.label = label
        self.hook = hook
        self.error = error

    def message(self, where: str, packed: bool = True) -> HookFailed:
        """What tells the hub, from the process ``where``; ``packed`` to cross
        a process boundary."""
        failure = StageFailure(self.label, None, self.error)
        return HookFailed(self.label, self.hook, where,
                          RemoteError.pack(failure) if packed else failure)


# id(owner) -> (owner, the attributes its setup() made), in this process
_RESOURCES: dict[int, tuple[object, frozenset[str]]] = {}


def _owner(f: Callable[[], Any]) -> object | None:
    """The object a bound ``setup`` method puts its resources on."""
    owner = getattr(f, "__self__", None) if inspect.ismethod(f) else None
    return owner if hasattr(owner, "__dict__") else None


def _call(f: Callable[[], Any], retry: Retry | None) -> None:
    attempt = 0
    while True:
        attempt += 1
        try:
            f()
            return
        except Exception as e:
            pause = None if retry is None else after(retry, e, attempt)
            if pause is None:
                raise
            time.sleep(pause)


@dataclass(frozen=True)
class Where:
    """Where a stage's ``setup()`` or ``teardown()`` runs: see :func:`where`."""

    stage: str
    """The stage, as messages name it: ``'stage 1 (Model())'``."""
    replica: int
    """This process's index among those that run the stage, from 0: a
    replica's, or a pool worker's (a replacement takes the index of the one it
    replaces); 0 where one process runs it."""
    replicas: int
    """How many processes run the stage: its ``replicas``, the pool's size, or 1."""
    process: str
    """``'worker process 4242'``, ``'the calling process'``, or an executor's process."""


_WHERE: Where | None = None


def where() -> Where:
    """Where the ``setup()`` or ``teardown()`` that calls it runs, for example
    to pick a GPU by replica::

        def setup(self):
            place = blpipe.where()
            self.device = f"cuda:{place.replica % 2}"

    Outside a stage's ``setup()`` or ``teardown()`` it raises ``RuntimeError``.
    """
    if _WHERE is None:
        raise RuntimeError("blpipe.where() tells a stage's setup() or teardown() where it "
                           "runs; it was called outside them. Call it in setup() and keep "
                           "what it says in an attribute")
    return _WHERE


class Lifecycle:
    """The hooks of the stages one process runs: set up once, torn down once.

    >>> log = []
    >>> class Model:
    ...     def setup(self):
    ...         self.weights = [1, 2]
    ...         log.append("setup")
    ...     def teardown(self):
    ...         log.append("teardown")
    >>> m = Model()
    >>> life = Lifecycle([hook("stage 0 (Model())", m)])
    >>> life.set_up()
    >>> "weights" in vars(without_resources(m)), m.weights
    (False, [1, 2])
    >>> life.tear_down(), log
    ([], ['setup', 'teardown'])
    """

    def __init__(self, hooks: Iterable[Hook | None], replica: tuple[int, int] = (0, 1),
                 process: str = "the calling process") -> None:
        self.hooks = [h for h in hooks if h is not None]
        self.replica = replica  # this process's index among those running its stages
        self.process = process
        self.done: list[Hook] = []  # set up, not yet torn down
        self.seconds = 0.0  # spent in setup()

    def __bool__(self) -> bool:
        return bool(self.hooks)

    @property
    def tears_down(self) -> bool:
        return any(h.teardown is not None for h in self.hooks)

    def set_up(self) -> None:
        """Run each ``setup``, in order; on an error, tear down what was set up
        and raise :class:`HookFailure`."""
        start = time.perf_counter()
        try:
            for h in self.hooks:
                if h.setup is not None:
                    owner = _owner(h.setup)
                    before = set(vars(owner)) if owner is not None else set()
                    try:
                        self._in(h, _call, h.setup, h.retry)
                    except Exception as e:
                        self.tear_down()
                        raise HookFailure(h.label, "setup", e) from None
                    if owner is not None:
                        _RESOURCES[id(owner)] = owner, frozenset(set(vars(owner)) - before)
                self.done.append(h)
        finally:
            self.seconds += time.perf_counter() - start

    def tear_down(self) -> list[HookFailure]:
        """Run each ``teardown`` of what was set up, in reverse order, once;
        every one runs, and the failures are returned."""
        failures = []
        while self.done:
            h = self.done.pop()
            if h.setup is not None:
                owner = _owner(h.setup)
                if owner is not None:
                    _RESOURCES.pop(id(owner), None)
            if h.teardown is not None:
                try:
                    self._in(h, _call, h.teardown, None)
                except Exception as e:
                    failures.append(HookFailure(h.label, "teardown", e))
        return failures


    def _in(self, h: Hook, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)``, with :func:`where` telling where ``h`` runs."""
        global _WHERE
        _WHERE = Where(h.label, self.replica[0], self.replica[1], self.process)
        try:
            call(*args)
        finally:
            _WHERE = None


def without_resources(obj: Any) -> Any:
    """``obj``, or a shallow copy of it without the attributes its ``setup()``
    made in this process: what a checkpoint pickles."""
    entry = _RESOURCES.get(id(obj))
    if entry is None or entry[0] is not obj or not entry[1]:
        return obj
    twin = copy.copy(obj)
    state = getattr(twin, "__dict__", None)
    if state is not None:
        for name in entry[1]:
            state.pop(name, None)
    return twin


# -- in a worker process --------------------------------------------------------


class Stop(BaseException):
    """Raised once by SIGTERM in a worker with a ``teardown``: the hub stops it
    midway, and it tears down on its way out."""


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a teardown is not cut short
    raise Stop


def stop_on_sigterm(life: Lifecycle) -> None:
    """Let SIGTERM raise :class:`Stop` in this process, if it has a teardown."""
    if life.tears_down:
        signal.signal(signal.SIGTERM, _stop)


def set_up(life: Lifecycle, fd: int, where: str) -> bool:
    """Set up; tell the hub, through ``fd``, that it is ready or why it is not."""
    try:
        life.set_up()
    except HookFailure as e:
        write_frame(fd, dumps(e.message(where)))
        return False
    write_frame(fd, dumps(Ready(life.seconds)))
    return True


def tear_down(life: Lifecycle, fd: int, where: str) -> None:
    """Tear down what is set up; write each failure to ``fd``, the hub's pipe.

    From here on SIGTERM is ignored: a Stop raised before this line is
    caught by the caller, which calls this again."""
    if life.tears_down:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for failure in life.tear_down():
        with contextlib.suppress(OSError):
            write_frame(fd, dumps(failure.message(where)))
