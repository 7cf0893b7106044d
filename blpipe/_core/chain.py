"""Consecutive stages applied to a chunk in one process.

The same code runs a fused run of pool stages in a worker, a stateful stage in
its dedicated process, master stages in the caller, and the whole of a
``SequentialPipeline``, so they cannot disagree on windows, groups or ``None``.

A chain of plain steps runs a chunk one step at a time over all of it, each
stage mapped at C speed. A chain with a step that expands its input into many
outputs, or groups inputs, runs *lazily* instead: each input goes through
every step before the next one comes in, and the outputs are produced as
they are asked for (:meth:`Chain.stream`, in :mod:`blpipe._core.run`), so an
expansion of any length flows out in bounded memory, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from threading import get_ident
from time import monotonic, perf_counter
from typing import Any

from .failures import Skipped, StageFailure
from .hooks import flush_of
from .keyed import Keyed
from .retry import Retrying
from .run import Outcome, Run, Step
from .spec import Placement, StageSpec
from .stage import unwrapped
from .timeout import Abandoning, Clocked

_WRAPPERS = (Retrying, Abandoning, Clocked)


def callable_of(spec: StageSpec) -> Callable[[Any], Any]:
    """What runs ``spec`` where it runs: its callable, wrapped to keep its
    ``retries`` and its ``timeout``, which count in a shared ``tally``."""
    func = unwrapped(spec.func)
    if spec.key is not None:  # each key its own copy: the wrappers see one callable
        func = Keyed(func, spec.key)
    tally = [0, 0]  # retries, calls timed out here
    limit = spec.timeout
    if limit is not None and spec.placement is Placement.THREAD:
        func = Abandoning(func, limit, spec.label, spec.expand, tally)
    if spec.retry is not None:
        func = Retrying(func, spec.retry, spec.expand, tally)
    if limit is not None and spec.placement in (Placement.POOL, Placement.DEDICATED):
        clocked = Clocked(func, spec.expand, tally)
        if isinstance(func, Retrying):
            func.restart = clocked.restart
        func = clocked
    return func if isinstance(func, (*_WRAPPERS, Keyed)) else spec.func


def step_of(spec: StageSpec, formed: bool = False) -> Step:
    """The step that runs ``spec`` (its windows and groups formed by the chain,
    or already ``formed`` by the hub)."""
    return Step(spec.label, callable_of(spec), None if formed else spec.window,
                spec.on_error != "raise", spec.expand, spec.group, formed and bool(spec.group),
                spec.group_wait, spec.index)


def sliding(items: Sequence[Any], k: int) -> list[tuple[Any, ...]]:
    """``[(x0..xk-1), (x1..xk), ...]``; none when fewer than ``k`` items."""
    return [tuple(items[i:i + k]) for i in range(len(items) - k + 1)]


def grouped(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``[[x0..xn-1], [xn..x2n-1], ...]``; the last may be shorter."""
    return [list(items[i:i + n]) for i in range(0, len(items), n)]


def formed(payload: list[Any], window: int | None, group: int | None) -> list[Any]:
    """What a chunk's one step is called with: the windows or groups of
    ``payload`` (which begins with a window's ``k - 1`` earlier inputs), or it."""
    if window:
        return sliding(payload, window)
    return grouped(payload, group) if group else payload


class Chain:
    """Applies steps in order; ``None`` from any step drops the item.

    A step with a window receives tuples of the last ``k`` values that reached
    it, and a step with a group lists of ``n`` of them: it keeps what it needs
    of them between chunks.
    """

    __slots__ = ("steps", "funcs", "windows", "_single", "lazy", "expands", "groups",
                 "started", "seen", "tails", "tallies", "hands", "finishes", "finishing")

    def __init__(self, steps: Sequence[Step], ahead: bool = False) -> None:
        self.steps = list(steps)
        self.funcs = [unwrapped(s.func) for s in steps]
        # the wrapped steps: their retries and timeouts are counted for the figures
        self.tallies = [(i, f.tally) for i, f in enumerate(self.funcs)
                        if isinstance(f, _WRAPPERS)]
        self.windows: list[deque[Any] | None] = [deque(maxlen=s.window) if s.window else None
                                                  for s in steps]
        self.lazy = any(s.expand or s.group for s in steps)
        # each stage's flush(): its last outputs, once the input has ended
        self.finishes = [flush_of(s.func) for s in steps]
        self.finishing = any(f is not None for f in self.finishes)
        self.expands = any(s.expand for s in steps)
        self._single = (self.funcs[0] if len(steps) == 1 and not self.lazy
                        and not steps[0].window and not steps[0].catch else None)
        self.groups: list[list[Any]] = [[] for _ in steps]  # partial groups
        self.started = [0.0] * len(steps)  # when each partial group began
        self.seen = [0] * len(steps)  # values that reached each step, ever
        # What each thread running it has in hand, for the stall watchdog
        # (blpipe._core.stall): (step, values, outputs so far, when the step began on
        # them) while a step maps over a chunk; (step, value, since) for a call
        # of a lazy run. Set per step and per lazy call, never per mapped call.
        self.hands: dict[int, tuple[Any, ...]] = {}
        # for an expanding step that only plain steps follow: those steps, which
        # then run over blocks of its outputs
        self.tails: list[Chain | None] = [Chain(steps[i + 1:]) if ahead and s.expand and
                       all(_plain(t) for t in steps[i + 1:]) else None
                       for i, s in enumerate(steps)]

    def run(self, items: Iterable[Any]) -> Outcome:
        """Run the steps over a chunk, one step at a time over all of it.

        Returns the outputs, that failure, ``[seconds, inputs, outputs,
        retries, timeouts]`` for each step, and the errors gone past. The outputs are
        aligned with ``items`` up to the first failure in stream order (``None`` where an
        item was dropped); a lazy chain's are its outputs, in order. An error
        gone past, ``(at, step, local, error, size)``, sits before
        ``outputs[at]``; ``local`` places it among the step's inputs in this
        chunk, ``size`` is how many of them it covers (a group's). The last
        step's output count is ``-1``: its outputs are counted by the caller,
        which drops the ``None`` anyway. A step that fails stops the chunk at
        the failing item, so later steps see only what came before it, and a
        later step's failure is earlier in the stream than an earlier step's.
        """
        items = items if isinstance(items, list) else list(items)
        if self.lazy:
            run = self.stream(items)
            outputs = list(run)
            return outputs, run.failure, run.stats, run.skipped
        if self._single is None:
            try:
                outcome = self._run_steps(items)
            finally:
                self.hands.pop(get_ident(), None)
            if self.tallies:
                self.count_calls(outcome[2])
            return outcome
        func = self._single  # one step, no window: the common case, kept short
        done: list[Any] = []
        start = perf_counter()
        failure = None
        hands, me = self.hands, get_ident()
        hands[me] = (0, items, done, monotonic())
        try:
            done.extend(map(func, items))
        except Exception as e:
            failure = StageFailure(self.steps[0].label, items[len(done)], e)
        finally:
            del hands[me]
        stats = [[perf_counter() - start, len(items), -1, 0, 0]]
        if self.tallies:
            self.count_calls(stats)
        return done, failure, stats, []

    def count_calls(self, stats: list[list[Any]]) -> None:
        """Add the retries and timeouts of each step since the last count to ``stats``."""
        for i, tally in self.tallies:
            stats[i][3] += tally[0]
            stats[i][4] += tally[1]
            tally[0] = tally[1] = 0

    def close(self) -> None:
        """End the threads its steps keep for calls that may time out."""
        for f in self.funcs:
            if isinstance(f, Abandoning):
                f.close()
            elif isinstance(f, Retrying) and isinstance(f.func, Abandoning):
                f.func.close()

    def _run_steps(self, items: list[Any]) -> Outcome:
        vals = items
        pos: list[int] | None = None  # where each of vals came from in items; None: in place
        limit = len(items)
        failure = None
        stats: list[Any] = []
        skipped: list[Skipped] = []
        last = len(self.steps) - 1
        hands, me = self.hands, get_ident()
        for i, (step, func, window) in enumerate(zip(self.steps, self.funcs, self.windows,
                                                     strict=True)):
            n_in = len(vals)
            shift = 0  # a window's index among this step's inputs: its newest one's
            if window is not None:
                vals, pos = _windowed(window, vals, pos)
                shift = n_in - len(vals)
            out: list[Any] = []
            start = perf_counter()
            hands[me] = (i, vals, out, monotonic())
            if step.catch:
                for j, v in enumerate(vals):
                    try:
                        out.append(func(v))
                    except Exception as e:
                        out.append(None)
                        skipped.append((j if pos is None else pos[j], i, j + shift,
                                        StageFailure(step.label, v, e), 1))
            else:
                try:
                    out.extend(map(func, vals))  # keeps what it appended before a raise
                except Exception as e:
                    k = len(out)
                    failure = StageFailure(step.label, vals[k], e)
                    limit = k if pos is None else pos[k]
                    if pos is not None:
                        pos = pos[:k]
            seconds = perf_counter() - start
            if i == last:
                stats.append([seconds, n_in, -1, 0, 0])
                vals = out
                break
            # By identity only: `None in out` would compare items with ==, which
            # an array answers elementwise and any object may refuse.
            vals = [y for y in out if y is not None]
            if len(vals) < len(out):
                keep = [j for j, y in enumerate(out) if y is not None]
                pos = keep if pos is None else [pos[j] for j in keep]
            stats.append([seconds, n_in, len(vals), 0, 0])
        if skipped:  # in stream order, and none after a failure
            skipped = sorted((e for e in skipped if e[0] < limit), key=lambda e: (e[0], e[1]))
        if pos is None:
            return vals, failure, stats, skipped
        aligned = [None] * limit
        for j, y in zip(pos, vals, strict=True):
            aligned[j] = y
        return aligned, failure, stats, skipped

    # -- the lazy path -------------------------------------------------------------

    def stream(self, items: Iterable[Any]) -> Run:
        """The outputs of ``items``, produced one at a time as they are asked for."""
        return Run(self, items)

    def flush(self, now: float | None = None, after: int = -1, final: bool = False) -> Run:
        """The outputs of the partial groups: all of them (the stream has
        ended, or failed upstream), or with ``now`` those whose ``wait`` has
        passed, or those of the steps after step ``after`` (it failed). With
        ``final``, the input has ended: each stage's ``flush()`` follows its
        partial group, its outputs going through the steps after it."""
        return Run(self, None, now, after + 1, final)

    def holds(self) -> bool:
        """Whether a partial group waits in it."""
        return any(self.groups)

    def deadline(self) -> float | None:
        """When the first partial group with a ``wait`` is due, if any."""
        due = [self.started[i] + s.wait for i, s in enumerate(self.steps)
               if s.wait is not None and self.groups[i]]
        return min(due) if due else None


def _plain(step: Step) -> bool:
    return not (step.window or step.group or step.expand or step.catch)


def _windowed(window: deque[Any], vals: list[Any],
             pos: list[int] | None) -> tuple[list[Any], list[int] | None]:
    """The windows that ``vals`` complete, after the values ``window`` holds, and
    where each came from; ``window`` then holds the newest values."""
    k = window.maxlen
    assert k is not None
    seq = [*window, *vals]
    held = len(window)
    first = max(0, k - 1 - held)  # the first of vals that completes a window
    wins = [tuple(seq[held + j - k + 1:held + j + 1]) for j in range(first, len(vals))]
    window.extend(vals)
    if first:
        pos = list(range(first, len(vals))) if pos is None else pos[first:]
    return wins, pos
