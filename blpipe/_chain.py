"""Consecutive stages applied to a chunk in one process.

The same code runs a fused run of pool stages in a worker, a stateful stage in
its dedicated process, master stages in the caller, and the whole of a
``SequentialPipeline``, so they cannot disagree on windows, groups or ``None``.

A chain of plain steps runs a chunk one step at a time over all of it, each
stage mapped at C speed. A chain with a step that expands its input into many
outputs, or groups inputs, runs *lazily* instead: each input goes through
every step before the next one comes in, and the outputs are produced one at
a time (:meth:`Chain.stream`), so an expansion of any length flows out in
bounded memory, in order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter
from typing import Any, NamedTuple

from ._failures import Skipped, StageFailure
from ._spec import StageSpec
from .stages import Stage


class Step(NamedTuple):
    label: str  # for messages
    func: Callable[[Any], Any]
    window: int | None = None  # called with tuples of the last k values
    catch: bool = False  # goes on past its errors: on_error 'skip' or 'collect'
    expand: bool = False  # returns an iterable; each element goes on
    group: int | None = None  # called with lists of this many consecutive values
    formed: bool = False  # its groups arrive formed (a worker's, cut by the hub)
    wait: float | None = None  # a partial group goes on after this many seconds


def step_of(spec: StageSpec, formed: bool = False) -> Step:
    """The step that runs ``spec`` (its windows and groups formed by the chain,
    or already ``formed`` by the hub)."""
    return Step(spec.label, spec.func, None if formed else spec.window,
                spec.on_error != "raise", spec.expand, spec.group, formed and bool(spec.group),
                spec.group_wait)


def sliding(items: Sequence[Any], k: int) -> list[tuple[Any, ...]]:
    """``[(x0..xk-1), (x1..xk), ...]``; none when fewer than ``k`` items."""
    return [tuple(items[i:i + k]) for i in range(len(items) - k + 1)]


def grouped(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``[[x0..xn-1], [xn..x2n-1], ...]``; the last may be shorter."""
    return [list(items[i:i + n]) for i in range(0, len(items), n)]


class Chain:
    """Applies steps in order; ``None`` from any step drops the item.

    A step with a window receives tuples of the last ``k`` values that reached
    it, and a step with a group lists of ``n`` of them: it keeps what it needs
    of them between chunks.
    """

    __slots__ = ("_steps", "_funcs", "_windows", "_single", "lazy", "expands", "_groups",
                 "_started", "_seen")

    def __init__(self, steps: Sequence[Step]) -> None:
        self._steps = list(steps)
        # A Stage only delegates: calling what it wraps saves a Python call per item.
        self._funcs = [s.func.__wrapped__ if isinstance(s.func, Stage) else s.func
                       for s in steps]
        self._windows: list[deque[Any] | None] = [deque(maxlen=s.window) if s.window else None
                                                  for s in steps]
        self.lazy = any(s.expand or s.group for s in steps)
        self.expands = any(s.expand for s in steps)
        self._single = (self._funcs[0] if len(steps) == 1 and not self.lazy
                        and not steps[0].window and not steps[0].catch else None)
        self._groups: list[list[Any]] = [[] for _ in steps]  # partial groups
        self._started = [0.0] * len(steps)  # when each partial group began
        self._seen = [0] * len(steps)  # values that reached each step, ever

    @property
    def steps(self) -> list[Step]:
        return self._steps

    def run(self, items: Iterable[Any]) -> tuple[list[Any], StageFailure | None, list[Any],
                                                 list[Skipped]]:
        """Run the steps over a chunk, one step at a time over all of it.

        Returns the outputs, that failure, ``[seconds, inputs, outputs]``
        for each step, and the errors gone past. The outputs are aligned with
        ``items`` up to the first failure in stream order (``None`` where an
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
        if self._single is not None:  # one step, no window: the common case, kept short
            func = self._single
            done: list[Any] = []
            start = perf_counter()
            try:
                done.extend(map(func, items))
            except Exception as e:
                return done, StageFailure(self._steps[0].label, items[len(done)], e), [
                    [perf_counter() - start, len(items), -1]], []
            return done, None, [[perf_counter() - start, len(items), -1]], []
        return self._run_steps(items)

    def _run_steps(self, items: list[Any]) -> tuple[list[Any], StageFailure | None,
                                                    list[Any], list[Skipped]]:
        vals = items
        pos: list[int] | None = None  # where each of vals came from in items; None: in place
        limit = len(items)
        failure = None
        stats: list[Any] = []
        skipped: list[Skipped] = []
        last = len(self._steps) - 1
        for i, (step, func, window) in enumerate(zip(self._steps, self._funcs, self._windows,
                                                     strict=True)):
            n_in = len(vals)
            shift = 0  # a window's index among this step's inputs: its newest one's
            if window is not None:
                vals, pos = _windows(window, vals, pos)
                shift = n_in - len(vals)
            out: list[Any] = []
            start = perf_counter()
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
                stats.append([seconds, n_in, -1])
                vals = out
                break
            # By identity only: `None in out` would compare items with ==, which
            # an array answers elementwise and any object may refuse.
            vals = [y for y in out if y is not None]
            if len(vals) < len(out):
                keep = [j for j, y in enumerate(out) if y is not None]
                pos = keep if pos is None else [pos[j] for j in keep]
            stats.append([seconds, n_in, len(vals)])
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

    def flush(self, now: float | None = None) -> Run:
        """The outputs of the partial groups: all of them (the stream has
        ended, or failed upstream), or with ``now`` those whose ``wait`` has passed."""
        return Run(self, None, now)

    def holds(self) -> bool:
        """Whether a partial group waits in it."""
        return any(self._groups)

    def deadline(self) -> float | None:
        """When the first partial group with a ``wait`` is due, if any."""
        due = [self._started[i] + s.wait for i, s in enumerate(self._steps)
               if s.wait is not None and self._groups[i]]
        return min(due) if due else None


class _Stop(Exception):
    """A step failed: the run ends there."""


_END = object()


class Run:
    """One chunk through a lazy chain: iterate it for the outputs, in order.

    Once it is exhausted, ``failure``, ``skipped`` and ``stats`` are as
    :meth:`Chain.run` returns them; ``item`` is the input in hand.
    """

    def __init__(self, chain: Chain, items: Iterable[Any] | None,
                 due: float | None = None) -> None:
        self.chain = chain
        self.failure: StageFailure | None = None
        self.skipped: list[Skipped] = []
        self.stats: list[list[Any]] = [[0.0, 0, 0] for _ in chain._steps]
        self.item: Any = None
        self.base = list(chain._seen)  # where this chunk starts in each step's stream
        self._count = [0] * len(chain._steps)  # what reached each step in this run
        self._n = 0  # outputs so far
        self.told = 0  # errors gone past that a worker has sent
        self._failed = 0  # the step that failed
        self.label = ""  # a worker's: how messages name its segment's last stage
        self.seconds = 0.0  # a worker's: unpickling and pickling, for the figures
        self._it = self._outputs(items) if items is not None else self._flushed(due)

    def __iter__(self) -> Iterator[Any]:
        return self._it

    def close(self) -> None:
        """Stop where it is: what the stages hold open is closed now."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def _outputs(self, items: Iterable[Any]) -> Iterator[Any]:
        try:
            for x in items:
                self.item = x
                yield from self._feed(0, x)
        except _Stop:
            # The groups after the failing step hold earlier inputs: they go on
            # first. Those before it hold later ones, which the failure cuts off.
            yield from self._flushed(None, self._failed + 1)
        self.stats[-1][2] = -1

    def _flushed(self, due: float | None, start: int = 0) -> Iterator[Any]:
        chain = self.chain
        try:
            for i in range(start, len(chain._steps)):
                step, group = chain._steps[i], chain._groups[i]
                if group and (due is None or (step.wait is not None and
                                              due >= chain._started[i] + step.wait)):
                    chain._groups[i] = []
                    self.item = group
                    local = chain._seen[i] - len(group) - self.base[i]
                    yield from self._call(i, group, local, len(group))
        except _Stop:  # a failure in a group that went on early is earlier still
            yield from self._flushed(None, self._failed + 1)
        self.stats[-1][2] = -1

    def _feed(self, i: int, value: Any) -> Iterator[Any]:
        """The outputs of ``value`` entering step ``i``, through the steps after it."""
        chain = self.chain
        if i == len(chain._steps):
            self._n += 1
            yield value
            return
        step = chain._steps[i]
        size = len(value) if step.formed else 1
        # Counted by the run, not the chain: a worker may run another chunk on
        # it while this one's expansion is paused.
        first = self._count[i]
        self._count[i] = first + size
        chain._seen[i] += size
        self.stats[i][1] += size
        if step.window is not None:
            window = chain._windows[i]
            window.append(value)  # type: ignore[union-attr]
            if len(window) < step.window:  # type: ignore[arg-type]
                return
            value = tuple(window)  # type: ignore[arg-type]
        elif step.group is not None and not step.formed:
            group = chain._groups[i]
            if not group:
                chain._started[i] = time.monotonic()
            group.append(value)
            if len(group) < step.group:
                return
            chain._groups[i] = []
            first, size = first + 1 - len(group), len(group)
            value = group
        yield from self._call(i, value, first, size)

    def _call(self, i: int, value: Any, local: int, size: int) -> Iterator[Any]:
        """Call step ``i`` on ``value``; its outputs go on through the next steps."""
        step = self.chain._steps[i]
        stat = self.stats[i]
        start = perf_counter()
        try:
            out = self.chain._funcs[i](value)
            it = iter(out) if step.expand else None
        except Exception as e:
            stat[0] += perf_counter() - start
            self._error(i, value, e, local, size)
            return
        stat[0] += perf_counter() - start
        if it is None:
            if out is not None:
                stat[2] += 1
                yield from self._feed(i + 1, out)
            return
        try:
            while True:
                start = perf_counter()
                try:
                    y = next(it, _END)
                except Exception as e:
                    stat[0] += perf_counter() - start
                    self._error(i, value, e, local, size)  # what it gave already went on
                    return
                stat[0] += perf_counter() - start
                if y is _END:
                    return
                if y is not None:
                    stat[2] += 1
                    yield from self._feed(i + 1, y)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator left early: let it clean up now
                close()

    def _error(self, i: int, value: Any, exc: Exception, local: int, size: int) -> None:
        step = self.chain._steps[i]
        failure = StageFailure(step.label, value, exc)
        if step.catch:
            self.skipped.append((self._n, i, local, failure, size))
        else:
            self.failure, self._failed = failure, i
            raise _Stop


def _windows(window: deque[Any], vals: list[Any],
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
