"""Starting and stopping worker processes, with their pipes.

Each worker has a task pipe (hub -> worker) and a result pipe (worker -> hub)::

   hub: Worker.outbox ══ task pipe ══► worker_main ══ result pipe ══► Worker.inbox
                                        │ (a link's first and middle workers)
                                        ╚══ relay: the next worker's task pipe

The hub's ends are non-blocking, and registered by :class:`~blpipe._hub.procs.Procs`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from multiprocess.connection import wait as wait_sentinels

from .._core.messages import HookFailed, Role, Setup
from .._core.stall import SIZE, Board
from .._core.transport import Inbox, Outbox, loads
from .._core.worker import worker_main

if TYPE_CHECKING:
    from .flow import Record
    from .segments import Segment

GRACE = 1.0  # seconds an idle worker gets to exit on end of file after a normal run
KILL_AFTER = 0.5  # seconds between SIGTERM and SIGKILL, so everything is gone within 1 s
TEARDOWN = 10.0  # seconds a worker with a teardown() gets after SIGTERM, before SIGKILL
_PIPE_SIZE = 1 << 20


class Group(Protocol):
    """What a worker belongs to, the pool or a link: it decides what a death means."""

    def died(self, worker: Worker, exitcode: int | None) -> None: ...


class Worker:
    """A worker process as the hub sees it: its pipes and the chunks it holds."""

    __slots__ = ("proc", "task", "result", "outbox", "inbox", "pending", "unsent", "paused",
                 "label", "group", "freed", "left", "clock", "tasks", "late", "board", "since",
                 "asked", "hooked", "ready", "replica")

    def __init__(self, proc: Any, task: Any, result: Any, label: str, into: bytearray,
                 clock: Any, board: Board, hooked: bool = False) -> None:
        self.proc = proc
        self.task = task  # None for a linked worker, which the one before it feeds
        self.result = result
        self.outbox = Outbox(task.fileno()) if task is not None else None
        self.inbox = Inbox(result.fileno(), into)  # the hub reads one inbox at a time
        # (segment, chunk) sent and not yet back; the workers of a link share one
        self.pending: deque[tuple[Segment, Record]] = deque()
        self.unsent: list[tuple[Segment, Record]] = []  # posted after it died
        self.paused: list[tuple[Segment, Record]] = []  # expansions it holds, paused
        self.label = label
        self.group: Group | None = None  # its Pool or Link, which handles its death
        self.freed: list[tuple[int, int]] = []  # its result slots read since its last task
        self.left: int | None = None  # calls it may still take (max_tasks_per_child)
        self.clock = clock  # its [task, call, started] in shared memory, if timed
        self.board = board  # the call it had in hand when last asked
        self.since = 0.0  # when its first chunk in hand began, as far as the hub knows
        self.asked: tuple[Record, float] | None = None  # what it was last asked about, when
        self.tasks = 0  # tasks sent to it: the number of the next one
        self.late: tuple[Record, int] | None = None  # killed: this chunk's call ran late
        # its stages have setup() or teardown(): it says when they are set up, and
        # gets TEARDOWN seconds to tear them down when stopped
        self.hooked = hooked
        self.ready = not hooked  # set up, or failed to: its setup is settled
        self.replica = 0  # its index among its group's workers, kept by a replacement

    def fed(self) -> Outbox:
        """Its task pipe's outbox: only for a worker the hub feeds."""
        outbox = self.outbox
        assert outbox is not None, "a worker the hub does not feed"
        return outbox


def start(ctx: Any, blob: bytes, label: str, role: Role, relay: Any, timed: bool,
          parent_fds: list[int], into: bytearray, hooked: bool = False,
          replica: tuple[int, int] = (0, 1)) -> tuple[Worker, Any]:
    """Start a worker; returns it, and the write end of its task pipe when the
    hub does not feed it: the caller passes that on to the worker before it.
    A ``timed`` worker runs stages with a ``timeout``: it gets a clock."""
    fork = ctx.get_start_method() == "fork"
    fed = role in (Role.ALONE, Role.FIRST)
    clock = ctx.RawArray("d", 3) if timed else None
    # Under fork the child shares an anonymous mapping as it is; a RawArray's
    # first costs 2 ms, for the arena multiprocess keeps them in.
    board = mmap.mmap(-1, SIZE) if fork else ctx.RawArray("c", SIZE)
    task_r, task_w = ctx.Pipe(duplex=False)
    result_r, result_w = ctx.Pipe(duplex=False)
    # Under fork the child inherits the parent's ends of every pipe, its own
    # included; holding its own task pipe's write end, it would never see EOF.
    close_fds = (*parent_fds, task_w.fileno(), result_r.fileno()) if fork else ()
    # a worker's parent: this process, or the fork server (see die_with_parent)
    parent = 0 if ctx.get_start_method() == "forkserver" else os.getpid()
    proc = ctx.Process(target=worker_main,
                       args=(task_r, result_w, relay,
                             Setup(blob, role, close_fds, parent, clock, board, replica)),
                       name=f"blpipe {label}", daemon=True)
    try:
        proc.start()
    finally:
        task_r.close()
        result_w.close()
    worker = Worker(proc, task_w if fed else None, result_r, label, into, clock, Board(board),
                    hooked)
    worker.replica = replica[0]
    if not fed:  # a linked worker's: it stays blocking, for the worker that feeds it
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(task_w.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    for fd in ((task_w.fileno(),) if fed else ()) + (result_r.fileno(),):
        os.set_blocking(fd, False)
        # Linux pipes hold 64 KiB; a larger one takes a large item in fewer
        # round trips. Best effort: the limit is /proc/sys/fs/pipe-max-size.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        parent_fds.append(fd)
    return worker, None if fed else task_w


def stop(workers: list[Worker], graceful: bool) -> list[HookFailed]:
    """Stop every worker: let idle ones exit on end of file, terminate the rest.

    A worker with a ``teardown`` runs it on either, and gets ``TEARDOWN``
    seconds for it before it is killed. After a ``graceful`` stop, returns
    the teardowns' failures."""
    for w in workers:
        if w.task is not None:
            w.task.close()  # end of file: an idle worker exits by itself
    procs = [w.proc for w in workers]
    if graceful:
        _join_all(procs, GRACE)
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    tearing = any(w.hooked and w.proc.exitcode is None for w in workers)
    _join_all(procs, TEARDOWN if tearing else KILL_AFTER)
    for p in procs:
        if p.exitcode is None:
            p.kill()
    _join_all(procs, None)
    failures = [f for w in workers if graceful and w.hooked for f in _teardown_failures(w)]
    for w in workers:
        w.result.close()
        w.proc.close()
    return failures


def _teardown_failures(worker: Worker) -> list[HookFailed]:
    """What an exited worker said of its teardowns, last in its result pipe."""
    failures = []
    inbox = worker.inbox
    with contextlib.suppress(OSError):
        while not inbox.eof:
            frames = inbox.read()
            if not frames:
                break
            for word, payload in frames:
                try:
                    msg = loads(word, payload)
                except Exception:  # a result left over: not what is looked for
                    continue
                if type(msg) is HookFailed:
                    failures.append(msg)
    return failures


def _join_all(procs: list[Any], timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    alive = [p for p in procs if p.exitcode is None]
    while alive:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        wait_sentinels([p.sentinel for p in alive], left)
        alive = [p for p in alive if p.exitcode is None]
