"""``SequentialPipeline``: the same contract, all in the calling process."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from ._core.chain import Chain, step_of
from ._core.hooks import HookFailure, Lifecycle, hook
from ._core.keyed import InOrder
from ._core.run import Run
from ._core.spec import Placement
from ._core.stage import hook_of, hooks_of
from ._hub.base import PipelineBase
from ._hub.loopthread import Awaited, LoopThread
from ._hub.settle import settle, settled

__all__ = ["SequentialPipeline"]


class SequentialPipeline(PipelineBase):
    """Runs every stage in the calling process, one item at a time.

    It validates the same attributes and gives the same outputs, windows,
    groups, expansions, ``None`` dropping and errors as :class:`~blpipe.Pipeline`,
    so it is the reference to test against and the place to debug a stage. It
    forms groups by count only: ``group_wait`` needs a clock running while the
    input waits, and here nothing runs then. An async stage's calls are
    awaited one at a time, on an event loop in a thread of its own, which
    lives as long as the run::

        >>> from blpipe import SequentialPipeline, stage
        >>> diff = stage(lambda w: w[1] - w[0], stateful=2)
        >>> with SequentialPipeline([diff]) as p:
        ...     list(p.apply([1, 4, None, 9]))
        [3, 5]
    """

    def __init__(self, operations: Iterable[Any], n_cpu: int | str | None = None, *,
                 start_method: str | None = None, progress: Any = None,
                 keep_errors: int = 1000) -> None:
        """``n_cpu`` and ``start_method`` are validated as by ``Pipeline`` and
        otherwise unused, so either class can replace the other."""
        super().__init__(operations, n_cpu, start_method=start_method, progress=progress,
                         keep_errors=keep_errors)
        # Every call runs to its end here, as a debugger would want: no timeouts.
        specs = [replace(s, timeout=None) for s in self.stages]
        # replicas of a stateful stage: copies that take the inputs in turn
        specs = [replace(s, func=_Copies(s.func, s.replicas))
                 if s.placement is Placement.DEDICATED and s.replicas and not s.key else s
                 for s in specs]
        # a keyed stage: a copy per key, and the same book of keys as Pipeline's hub
        specs = [replace(s, func=InOrder(s.func, s.key, s.key_idle, s.max_keys, s.label,
                                         s.expand), key=None, expand=True)
                 if s.key is not None else s for s in specs]
        self._aio: LoopThread | None = None
        if any(s.placement is Placement.ASYNC for s in specs):
            # awaited on a loop of its own, so that it works under the caller's running loop
            self._aio = LoopThread()
            specs = [replace(s, func=Awaited(s.func, self._aio))
                     if s.placement is Placement.ASYNC else s for s in specs]
        self._chain = Chain([step_of(s) for s in specs])
        self._life = Lifecycle(hook(s.label, s.func, s.retry) for s in specs)

    def __enter__(self) -> SequentialPipeline:
        super().__enter__()
        return self

    def _outputs(self, it: Iterator[Any]) -> Iterator[Any]:
        chain = self._chain
        rec = self._recorder
        clock = time.monotonic
        rec.start()
        if self._aio is not None:
            self._aio.start()
        try:
            try:
                self._life.set_up()
            except HookFailure as e:
                self._closed = True
                raise e.message(_CALLER, packed=False).exception() from None
            rec.setup_seconds += self._life.seconds
            while True:
                self._check_open()
                t = clock()
                try:
                    x = next(it, _END)
                except Exception:  # the partial groups hold earlier inputs: they go first
                    if chain.lazy:
                        yield from self._streamed(chain.flush(), 0)
                    raise
                now = clock()
                rec.input += now - t
                self._tick_progress(now)
                if x is _END:
                    if chain.lazy or chain.finishing:  # the partial groups, the flush()
                        yield from self._streamed(chain.flush(final=True), 0)
                    failures = self._life.tear_down()
                    if failures:  # after a run that went well: a teardown often commits
                        raise failures[0].message(_CALLER, packed=False).exception()
                    return
                if x is None:
                    continue
                if chain.lazy:
                    yield from self._streamed(chain.stream([x]), 1)
                    continue
                outputs, failure, stats, skipped = chain.run([x])
                exc = None if failure is None else failure.exception()
                if skipped:
                    outputs, over = settle(self.errors, 0, rec.n_in, outputs, skipped)
                    exc = over or exc
                y = outputs[0] if outputs else None
                rec.add(0, stats, 1, y is not None, 0.0)
                if exc is not None:
                    self._closed = True
                    raise exc
                if y is not None:
                    rec.yielded += 1
                    t = clock()
                    yield y
                    rec.consumer += clock() - t
        finally:
            self._finish()

    def _streamed(self, run: Run, n_in: int) -> Iterator[Any]:
        """A lazy chain's outputs for one input (``n_in`` = 1) or the partial
        groups (0), yielded as they are made: an expansion of any length."""
        rec = self._recorder
        clock = time.monotonic
        n_out = 0
        try:
            for y in settled(run, self.errors, 0):
                n_out += 1
                rec.yielded += 1
                t = clock()
                yield y
                rec.consumer += clock() - t
        except Exception:
            self._closed = True
            raise
        finally:
            rec.add(0, run.stats, n_in, n_out, 0.0)

    def _finish(self) -> None:
        self._life.tear_down()  # what the run failed or stopped on is what is raised
        if self._aio is not None:
            # Between outputs no call is in flight; an async generator left
            # midway is closed on the loop, given this long.
            self._aio.close(_GRACE)
        super()._finish()

    def close(self) -> None:
        super().close()
        self._finish()


class _Copies:
    """``replicas = n`` copies of a stateful stage, as ``SequentialPipeline`` runs
    them: each takes the inputs in turn; each sets up, tears down and flushes."""

    def __init__(self, func: Any, n: int) -> None:
        self.copies = [copy.deepcopy(func) for _ in range(n)]
        self.turn = 0

    def __call__(self, x: Any) -> Any:
        f = self.copies[self.turn]
        self.turn = (self.turn + 1) % len(self.copies)
        return f(x)

    def setup(self) -> None:
        for c in self.copies:
            f = hooks_of(c)[0]
            if f is not None:
                f()

    def teardown(self) -> None:
        for c in reversed(self.copies):
            f = hooks_of(c)[1]
            if f is not None:
                f()

    def flush(self) -> Iterator[Any]:
        for c in self.copies:
            f = hook_of(c, "flush")
            if f is not None:
                yield from f() or ()


_END = object()
_CALLER = "the calling process"
_GRACE = 1.0  # seconds the loop thread gets to close what the async stages left open
