"""``Pipeline``: stages run concurrently in processes, outputs in input order.

The stages are cut into segments (:mod:`blpipe._hub.plan`): fused pool stages,
linked stateful stages, a thread stage, or master stages in the caller. The
calling process is the hub (:mod:`blpipe._hub.loop`), and it has no threads: the
generator that ``apply`` returns is its event loop. Each ``next`` pulls input
as far as the bounds allow, sends chunks to workers, puts the results back
in order, and waits in one ``select`` on every worker's pipe and sentinel, so
a dead worker is seen as soon as it dies.

A failure (a stage's exception, a dead worker, the input iterator raising)
travels down the stream as a marker in its place, so every output of earlier
inputs is yielded before it is raised.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from itertools import islice
from typing import Any

import multiprocess

from ._core.options import pipeline_options
from ._core.spec import Placement
from ._hub.assembly import Config
from ._hub.base import PipelineBase
from ._hub.checkpoints import Checkpoint, Keeper
from ._hub.executors import check_executor, width
from ._hub.flow import Cut, Failure
from ._hub.loop import Hub
from ._hub.plan import plan
from ._hub.progress import EVERY

__all__ = ["Pipeline"]

_TOP_UP = 0.001  # a consumer step longer than this is followed by a poll of the workers

# Iterators of builtin sequences never raise, so they need no guard.
_CANNOT_RAISE = {type(iter([])), type(iter(())), type(iter(range(0))),
                 type(iter(range(1 << 64)))}


class Pipeline(PipelineBase):
    """Run a chain of callables over a stream on every core, in order, with bounded memory.

    >>> from blpipe import Pipeline, stage
    >>> double = stage(lambda x: 2 * x, stateful=False, batch_size=8)
    >>> with Pipeline([double], n_cpu=2) as p:
    ...     list(p.apply(range(5)))
    [0, 2, 4, 6, 8]

    ``n_cpu`` is the total number of worker processes: the pool gets
    ``max(1, n_cpu - D)`` where ``D`` counts the dedicated (stateful) stages.
    Without it the pool gets every CPU this process may use; with ``"auto"``
    it starts that large and uses only part of it while dedicated stages are
    busy. ``start_method`` is ``'fork'``, ``'spawn'`` or ``'forkserver'``
    (default: the platform's). ``progress`` is ``True`` for a tqdm bar, or a
    callable that receives ``statistics()``.

    ``executor``, any ``concurrent.futures.Executor`` (a Dask cluster's
    ``client.get_executor()``, a ``ProcessPoolExecutor``...), runs the pool
    stages instead of blpipe's own pool, in chunks; stateful, thread and
    master stages stay where they are. The executor is the caller's to shut
    down.

    ``max_bytes_in_flight`` bounds the serialized bytes in flight, by
    withholding input; ``keep_errors`` is how many records of errors gone past
    (``on_error = "collect"``) ``errors`` keeps. ``max_tasks_per_child``
    replaces a pool worker once it has made that many calls, for stages
    that leak memory.

    ``checkpoint``, a file path, makes the run resumable after a crash of
    the whole program: every ``checkpoint_every`` seconds (and at
    :meth:`checkpoint`, and at the end) the file gets the number N of inputs
    whose outputs the consumer has all taken, and the stateful stages as
    they were after exactly those; ``on_checkpoint(N)`` runs first, in the
    consumer's thread, to commit the consumer's own output, and what it
    returns is kept as ``checkpointed.token``. A pipeline built over an
    existing file resumes from it: ``apply`` skips the first N inputs.
    """

    def __init__(self, operations: Iterable[Any], n_cpu: int | str | None = None, *,
                 start_method: str | None = None, progress: Any = None,
                 executor: Executor | None = None, keep_errors: int = 1000,
                 max_bytes_in_flight: int | None = None,
                 max_tasks_per_child: int | None = None,
                 checkpoint: str | os.PathLike[str] | None = None,
                 checkpoint_every: float | None = 60.0,
                 on_checkpoint: Callable[[int], Any] | None = None) -> None:
        # The options only a Pipeline takes; PipelineBase checks those it shares.
        where = type(self).__name__
        if executor is not None:
            check_executor(where, executor)
        opts = pipeline_options(where, executor is not None, n_cpu, max_tasks_per_child,
                                max_bytes_in_flight, checkpoint, checkpoint_every,
                                on_checkpoint)
        max_tasks_per_child, max_bytes_in_flight, checkpoint_every = opts
        super().__init__(operations, n_cpu, start_method=start_method, progress=progress,
                         keep_errors=keep_errors)
        copied = [s for s in self.stages
                  if s.placement is Placement.DEDICATED and s.replicas and not s.key]
        if checkpoint is not None and copied:
            raise ValueError(f"{where}: {copied[0].label} has replicas={copied[0].replicas}: "
                             f"its copies' states, each of some of the inputs, cannot be "
                             f"checkpointed yet; give it a key = fn (keyed state is "
                             f"checkpointed), or drop checkpoint=, or replicas")
        self._keeper = None if checkpoint is None else Keeper(checkpoint, checkpoint_every,
                                                               on_checkpoint, self.stages)
        self.checkpointed: Checkpoint | None = None
        """The last checkpoint written, or else the one this pipeline resumed from."""
        self._skip = 0  # inputs apply() skips: those of the checkpoint resumed from
        resume = None
        if self._keeper is not None and self._keeper.resume is not None:
            resume = self._keeper.resume
            self.checkpointed = self._keeper.last
            self._skip = resume["inputs"]
            self.stages = self._keeper.restored(self.stages)
            self.errors.counts[:] = resume["errors"]
        self._plan = plan(self.stages, "the pool" if executor is None else "the executor")
        if executor is not None:
            self._pool_size = self._recorder.pool_size = width(executor)
        self._config = Config(
            ctx=multiprocess.get_context(start_method), pool_size=self._pool_size,
            auto=self._auto, executor=executor, budget=max_bytes_in_flight,
            recorder=self._recorder, log=self.errors, max_tasks=max_tasks_per_child,
            # names this pipeline's stages in an executor's workers, which outlive it
            pool_key=hashlib.sha1(self._plan.pool_blob or b"").digest() + os.urandom(4),
            checkpoint_every=None if self._keeper is None else self._keeper.every,
            resume=resume)
        self._hub: Hub | None = None
        self._cut_asked = False
        self._built = True  # only a fully built pipeline can be left unclosed

    def __enter__(self) -> Pipeline:
        self._check_open()
        self._start()
        return self

    def _start(self) -> Hub:
        """Start the processes: at ``__enter__``, else at the first ``next``."""
        if self._hub is None:
            self._recorder.start()
            try:
                self._hub = Hub(self._plan, self._config)
            except BaseException:  # a setup() here failed, or a process would not start
                self.close()
                raise
            if self._cut_asked:
                self._hub.ask_cut()
        return self._hub

    def apply(self, inputs: Iterable[Any], *, skip: bool = True) -> Iterator[Any]:
        """Run the stages over ``inputs``; outputs come lazily, in input order.

        ``None`` inputs and outputs are dropped. It can be called once. After a
        resume from a checkpoint of N inputs, the first N of ``inputs`` are
        skipped; pass ``skip=False`` for inputs that already start at input N.
        """
        if self._skip and skip:
            inputs = islice(iter(inputs), self._skip, None)
        return super().apply(inputs)

    def checkpoint(self) -> None:
        """Take a checkpoint after the inputs read so far, without stopping the
        stream; it is written once the consumer has taken their outputs."""
        if self._keeper is None:
            raise RuntimeError("this Pipeline has no checkpoint file: pass checkpoint=path "
                               "to make it resumable")
        self._cut_asked = True
        if self._hub is not None:
            self._hub.ask_cut()

    def _complete(self, hub: Hub, cut: Cut) -> None:
        """The consumer asks for the output after a cut: once every dedicated
        stage's state is in, commit the checkpoint."""
        assert self._keeper is not None
        if hub.gather(cut):
            self.checkpointed = self._keeper.complete(cut, self.stages)
            hub.cut_written()

    def _outputs(self, it: Iterator[Any]) -> Iterator[Any]:
        """The outputs of ``apply``: the hub's event loop, run by the consumer's ``next``.

        Processes start at the first ``next`` (or at ``__enter__``), so an output
        iterator that is never used starts nothing.
        """
        self._check_open()
        hub = self._start()
        sink = hub.sink
        chunks = sink.chunks
        recorder = self._recorder
        clock = time.monotonic
        progress = self._progress is not None
        hub.feed(it if type(it) in _CANNOT_RAISE else _guarded(it), EVERY if progress else None)
        slow = False  # the consumer takes a while per output: watch each one
        ok = False
        try:
            while hub.setting_up():  # the work goes on meanwhile; the outputs wait
                hub.pump()
                hub.wait(None)
            failed = hub.setup_failed()
            if failed is not None:
                raise failed
            while True:
                hub.pump()
                if chunks:
                    while chunks:
                        chunk = chunks.popleft()
                        if type(chunk) is Cut:
                            self._complete(hub, chunk)
                            continue
                        started = polled = clock()
                        spent = 0.0  # time spent on the hub between outputs
                        if not slow:
                            yield from chunk  # at C speed; nothing enters the sink meanwhile
                            sink.held -= len(chunk)
                        else:
                            for x in chunk:
                                sink.held -= 1
                                yield x
                                if clock() - polled > _TOP_UP:
                                    # The consumer took a while: move finished work on
                                    # and refill the queues before its next step.
                                    self._check_not_closed()
                                    t = clock()
                                    hub.wait(0)
                                    hub.pump()
                                    polled = clock()
                                    spent += polled - t
                        held = clock() - started
                        recorder.yielded += len(chunk)
                        recorder.consumer += held - spent
                        slow = held > _TOP_UP
                        self._check_not_closed()
                elif sink.failure is not None:
                    raise sink.failure.exc
                elif hub.finished():
                    ok = True
                    return
                else:
                    hub.wait(None)
                hub.tick()
                if progress:
                    self._tick_progress(clock())
        finally:
            self._finish()
            hub.close(graceful=ok)

    def _check_not_closed(self) -> None:
        if self._closed:
            raise RuntimeError("the Pipeline was closed while its output was being read")

    def _active(self) -> int:
        active = self._hub.active() if self._hub is not None else None
        return self._pool_size if active is None else active

    def _live(self, segment: int) -> tuple[int, int, float, float]:
        return self._hub.live(segment) if self._hub is not None else (0, 0, 0.0, 0.0)

    def _stalls(self) -> dict[int, tuple[float, str | None]]:
        hub = self._hub
        return hub.stalls() if hub is not None and not hub.closing else {}

    def _bytes(self) -> tuple[int, int]:
        return self._hub.bytes_in_flight() if self._hub is not None else (0, 0)

    def close(self) -> None:
        """Stop every process; safe to call any number of times."""
        self._closed = True
        if self._hub is not None:
            self._hub.close(graceful=False)
        self._finish()

    def __del__(self) -> None:
        if getattr(self, "_built", False) and not self._closed:
            warnings.warn(f"{self!r} was never closed; use it in a 'with' block or call "
                          f"close()", ResourceWarning, stacklevel=2, source=self)
            self.close()


def _guarded(it: Iterator[Any]) -> Iterator[Any]:
    """The input, with its own error turned into a final marker, so that the
    items pulled before it are kept and it is raised after their outputs."""
    try:
        yield from it
    except Exception as e:
        yield Failure(e)
