"""One chunk through a lazy chain, input by input: expansions and groups.

:meth:`Chain.stream <blpipe._core.chain.Chain.stream>` starts a :class:`Run`; the
run's generators take each input through every step before the next one
comes in::

    input --> _feed(0) --> _call(0) --> _feed(1) --> ... --> a piece of outputs
                 |             |
          window or group   an expansion: each of its outputs goes on,
          (the chain keeps  or with only plain steps after it, blocks
          them between      of them through those steps (_blocks)
          chunks)

Where nothing waits on each output (a chain made with ``ahead``: in a worker
process or a thread), an expansion that only plain steps follow is read in
blocks, which those steps map at C speed. A block grows while the expansion
yields fast and its items are small, so a slow expansion is still read item
by item; what a block read before the expansion stalls waits with it.

A run reads the chain's steps and the windows and partial groups it keeps:
it is the chain's lazy half, kept apart for its size.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import chain as flatten
from itertools import islice
from threading import get_ident
from time import monotonic, perf_counter
from typing import Any, NamedTuple, Protocol

from .failures import Skipped, StageFailure


class Step(NamedTuple):
    label: str  # for messages
    func: Callable[[Any], Any]
    window: int | None = None  # called with tuples of the last k values
    catch: bool = False  # goes on past its errors: on_error 'skip' or 'collect'
    expand: bool = False  # returns an iterable; each element goes on
    group: int | None = None  # called with lists of this many consecutive values
    formed: bool = False  # its groups arrive formed (a worker's, cut by the hub)
    wait: float | None = None  # a partial group goes on after this many seconds
    number: int = -1  # the stage's index in its pipeline, for the watchdog



Outcome = tuple[list[Any], StageFailure | None, list[Any], list[Skipped]]
"""A chunk's outputs, failure, figures and errors gone past: see :meth:`Chain.run
<blpipe._core.chain.Chain.run>`."""


class ChainState(Protocol):
    """What a run reads of its :class:`~blpipe._core.chain.Chain`, and what the chain
    keeps between runs: the windows and the partial groups."""

    steps: list[Step]
    funcs: list[Callable[[Any], Any]]
    windows: list[deque[Any] | None]
    groups: list[list[Any]]  # the partial groups
    started: list[float]  # when each began
    seen: list[int]  # values that reached each step, ever
    hands: dict[int, tuple[Any, ...]]  # what each thread has in hand, for the watchdog
    finishes: list[Callable[[], Any] | None]  # each stage's flush(), if it has one

    @property
    def tails(self) -> Sequence[ChainState | None]:
        """For an expansion that plain steps follow: a chain of those steps."""

    def run(self, items: Iterable[Any]) -> Outcome: ...

    def count_calls(self, stats: list[list[Any]]) -> None: ...


_BLOCK = 1024  # outputs of an expansion read at once, at most
_BLOCK_SECONDS = 0.0002  # a block doubles while reading it takes less than this
_BLOCK_BYTES = 1 << 20  # and while its outputs come to less than this, by the last one's size


class _AtEnd:
    """Where a ``flush()`` runs in the stream: what its errors name as their input."""

    def __repr__(self) -> str:
        return "<the end of the input: flush()>"


AT_END = _AtEnd()


class _Stop(Exception):
    """A step failed: the run ends there."""


_END = object()


class Run:
    """One chunk through a lazy chain: iterate it for the outputs, in order, or
    ``pieces`` for lists of them (a worker's parts are made of those).

    Once it is exhausted, ``failure``, ``skipped`` and ``stats`` are as
    :meth:`Chain.run` returns them; ``item`` is the input in hand.
    """

    def __init__(self, chain: ChainState, items: Iterable[Any] | None,
                 due: float | None = None, start: int = 0, final: bool = False) -> None:
        self.chain = chain
        self.failure: StageFailure | None = None
        self.skipped: list[Skipped] = []
        self.stats: list[list[Any]] = [[0.0, 0, 0, 0, 0] for _ in chain.steps]
        self.item: Any = None
        self.base = list(chain.seen)  # where this chunk starts in each step's stream
        self._count = [0] * len(chain.steps)  # what reached each step in this run
        self._n = 0  # outputs so far
        self.told = 0  # errors gone past already sent with an expansion's parts
        self._failed = 0  # the step that failed
        # In the caller an error gone past is judged at once, so that an error over
        # the budget stops the run before later inputs reach the steps after it:
        # it returns the exception to raise then, or None once the error is recorded.
        self.judge: Callable[[Skipped], BaseException | None] | None = None
        self.over: BaseException | None = None
        self.pieces = (self._outputs(items) if items is not None
                       else self._flushed(due, start, final))
        self._it = flatten.from_iterable(self.pieces)

    def __iter__(self) -> Iterator[Any]:
        return self._it

    def close(self) -> None:
        """Stop where it is: what the stages hold open is closed now."""
        self.pieces.close()

    def _outputs(self, items: Iterable[Any]) -> Generator[list[Any], None, None]:
        try:
            for x in items:
                self.item = x
                yield from self._feed(0, x)
        except _Stop:
            # The groups after the failing step hold earlier inputs: they go on
            # first. Those before it hold later ones, which the failure cuts off.
            yield from self._flushed(None, self._failed + 1)
        self._end()

    def _flushed(self, due: float | None, start: int = 0,
                 final: bool = False) -> Generator[list[Any], None, None]:
        chain = self.chain
        try:
            for i in range(start, len(chain.steps)):
                step, group = chain.steps[i], chain.groups[i]
                if group and (due is None or (step.wait is not None and
                                              due >= chain.started[i] + step.wait)):
                    chain.groups[i] = []
                    self.item = group
                    local = chain.seen[i] - len(group) - self.base[i]
                    yield from self._call(i, group, local, len(group))
                if final and chain.finishes[i] is not None:
                    self.item = AT_END
                    yield from self._call(i, None, chain.seen[i] - self.base[i], 1,
                                          chain.finishes[i])
        except _Stop:  # a failure in a group that went on early is earlier still
            yield from self._flushed(None, self._failed + 1)
        self._end()

    def _end(self) -> None:
        self.stats[-1][2] = -1
        self.chain.count_calls(self.stats)

    def _feed(self, i: int, value: Any) -> Iterator[list[Any]]:
        """The outputs of ``value`` entering step ``i``, through the steps after it."""
        chain = self.chain
        if i == len(chain.steps):
            self._n += 1
            yield [value]
            return
        step = chain.steps[i]
        size = len(value) if step.formed else 1
        # Counted by the run, not the chain: a worker may run another chunk on
        # it while this one's expansion is paused.
        first = self._count[i]
        self._count[i] = first + size
        chain.seen[i] += size
        self.stats[i][1] += size
        k = step.window
        if k is not None:
            window = chain.windows[i]
            assert window is not None  # a window step has one
            window.append(value)
            if len(window) < k:
                return
            value = tuple(window)
        elif step.group is not None and not step.formed:
            group = chain.groups[i]
            if not group:
                chain.started[i] = time.monotonic()
            group.append(value)
            if len(group) < step.group:
                return
            chain.groups[i] = []
            first, size = first + 1 - len(group), len(group)
            value = group
        yield from self._call(i, value, first, size)

    def _call(self, i: int, value: Any, local: int, size: int,
              last: Callable[[], Any] | None = None) -> Iterator[list[Any]]:
        """Call step ``i`` on ``value``; its outputs go on through the next steps.
        With ``last``, call that instead, the stage's ``flush()``: each of the
        outputs it gives goes on, as an expansion's would."""
        step = self.chain.steps[i]
        stat = self.stats[i]
        hands, me = self.chain.hands, get_ident()
        hands[me] = (i, value if last is None else AT_END, monotonic())
        start = perf_counter()
        try:
            if last is None:
                out = self.chain.funcs[i](value)
                it = iter(out) if step.expand else None
            else:
                value = AT_END
                it = iter(last() or ())
        except Exception as e:
            stat[0] += perf_counter() - start
            self._error(i, value, e, local, size)
            return
        finally:
            hands.pop(me, None)
        stat[0] += perf_counter() - start
        if it is None:
            if out is not None:
                stat[2] += 1
                yield from self._feed(i + 1, out)
            return
        tail = self.chain.tails[i] if last is None else None
        try:
            if tail is not None:
                yield from self._blocks(i, it, tail, value, local, size)
                return
            while True:
                hands[me] = (i, value, monotonic())
                start = perf_counter()
                try:
                    y = next(it, _END)
                except Exception as e:
                    stat[0] += perf_counter() - start
                    self._error(i, value, e, local, size)  # what it gave already went on
                    return
                finally:
                    hands.pop(me, None)
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

    def _blocks(self, i: int, it: Iterator[Any], tail: ChainState, value: Any, local: int,
                size: int) -> Iterator[list[Any]]:
        """Step ``i``'s expansion ``it`` in blocks, each through the plain ``tail``."""
        stat = self.stats[i]
        hands, me = self.chain.hands, get_ident()
        after = i + 1
        n = 1
        while True:
            block: list[Any] = []
            error = None
            hands[me] = (i, value, monotonic())
            start = perf_counter()
            try:
                block.extend(islice(it, n))  # keeps what it read before a raise
            except Exception as e:
                error = e
            finally:
                hands.pop(me, None)
            took = perf_counter() - start
            stat[0] += took
            ended = error is not None or len(block) < n
            if block and not ended and n < _BLOCK and took < _BLOCK_SECONDS and \
                    sys.getsizeof(block[-1]) * n < _BLOCK_BYTES // 2:
                n *= 2
            vals = [y for y in block if y is not None]
            stat[2] += len(vals)
            if vals:
                for j in range(after, len(self._count)):
                    self._count[j] += len(vals)  # as a worker's other chunk may run, see _feed
                    self.chain.seen[j] += len(vals)
                outs, failure, stats, _ = tail.run(vals)
                for total, figures in zip(self.stats[after:], stats, strict=True):
                    for k, x in enumerate(figures):
                        total[k] += x
                outs = [y for y in outs if y is not None]
                if outs:
                    self._n += len(outs)
                    yield outs
                if failure is not None:
                    self.failure, self._failed = failure, len(self.stats) - 1
                    raise _Stop
            if error is not None:
                self._error(i, value, error, local, size)  # what it gave already went on
            if ended:
                return

    def _error(self, i: int, value: Any, exc: Exception, local: int, size: int) -> None:
        step = self.chain.steps[i]
        failure = StageFailure(step.label, value, exc)
        if not step.catch:
            self.failure = failure
        elif self.judge is None:
            self.skipped.append((self._n, i, local, failure, size))
            return
        elif (over := self.judge((self._n, i, local, failure, size))) is None:
            return  # recorded
        else:  # over its budget: that ends the run like a failure
            self.over = over
        self._failed = i
        raise _Stop
