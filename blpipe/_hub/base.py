"""What every pipeline shares: validation, the one-shot ``apply``, statistics and closing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, NoReturn

import multiprocess

from .._core.options import choice, count, cpus, wrong_type
from .._core.spec import Placement, StageSpec, read_stages
from ..errorlog import ErrorLog
from ..statistics import Statistics
from .cpu import pool_size, usable_cpu_count
from .progress import EVERY, make_progress
from .recorder import Recorder


class PipelineBase:
    """Validation at construction, one ``apply`` per pipeline, idempotent ``close``."""

    def __init__(self, operations: Iterable[Any], n_cpu: int | str | None = None, *,
                 start_method: str | None = None, progress: Any = None,
                 keep_errors: int = 1000) -> None:
        self._closed = False
        self._applied = False
        where = type(self).__name__
        self.stages: tuple[StageSpec, ...] = tuple(read_stages(operations))
        # the processes the stages have of their own: one per dedicated stage, and replicas
        dedicated = sum(s.replicas or 1 for s in self.stages
                        if s.placement is Placement.DEDICATED or s.replicas)  # keyed: 1 or n
        n_cpu = cpus(where, n_cpu)
        self._pool_size = pool_size(n_cpu, dedicated)
        self._auto = n_cpu == "auto"
        if start_method is not None:
            choice(where, "start_method", start_method, multiprocess.get_all_start_methods(),
                   " (the start methods available here), or None for the platform's default")
        self._start_method = start_method
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise wrong_type(where, "progress", progress, "True for a tqdm bar, a callable "
                             "that takes a blpipe.statistics.Statistics record, or None")
        self._progress = make_progress(progress)
        self._next_progress = 0.0
        self._recorder = Recorder(self.stages, self._pool_size, usable_cpu_count())
        keep_errors = count(where, "keep_errors", keep_errors, 0,
                            ", the number of error records kept in memory")
        self.errors = ErrorLog(self.stages, keep_errors)
        """Errors the stages went on past (``on_error``): counts and records."""

    @property
    def n_cpu(self) -> int:
        """The size of the shared pool (see the CPU budget rule)."""
        return self._pool_size

    def __repr__(self) -> str:
        state = "closed" if self._closed else "applied" if self._applied else "ready"
        names = ", ".join(s.name for s in self.stages)
        return f"<{type(self).__name__} [{names}] {state}>"

    def statistics(self) -> Statistics:
        """What each stage did so far; callable at any time, from any thread."""
        rec = self._recorder
        running = rec.started is not None and rec.ended is None
        return rec.snapshot(self._live, running, self.errors.counts, self._bytes(),
                            self._active(), self._stalls() if running else {})

    def report(self) -> str:
        """``statistics()`` as a table, with the bottleneck and advice."""
        return self.statistics().report()

    def _live(self, segment: int) -> tuple[int, int, float, float]:
        """A segment's in flight, peak in flight, starved and blocked seconds."""
        return 0, 0, 0.0, 0.0

    def _stalls(self) -> dict[int, tuple[float, str | None]]:
        """Per stage, its oldest call in flight: since when, on what input."""
        return {}

    def _active(self) -> int:
        """Pool workers that get work now."""
        return self._pool_size

    def _bytes(self) -> tuple[int, int]:
        """Serialized bytes in flight, and their peak."""
        return 0, 0

    def _tick_progress(self, now: float, final: bool = False) -> None:
        """Feed ``progress`` at most every ``EVERY`` seconds, and once at the end."""
        if self._progress is not None and (final or now >= self._next_progress):
            self._next_progress = now + EVERY
            self._progress(self.statistics())

    def _finish(self) -> None:
        """The run is over: stop the clock, tell ``progress``."""
        rec = self._recorder
        if rec.started is not None and rec.ended is None:
            rec.end()
            self._tick_progress(0.0, final=True)

    def __enter__(self) -> PipelineBase:
        self._check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release everything; safe to call any number of times."""
        self._closed = True

    def apply(self, inputs: Iterable[Any]) -> Iterator[Any]:
        """Run the stages over ``inputs``; outputs come lazily, in input order.

        ``None`` inputs and outputs are dropped. It can be called once.
        """
        self._check_open()
        if self._applied:
            raise RuntimeError(f"apply() was already called on this {type(self).__name__}; "
                               f"it runs one stream only: create a new one for another stream")
        it = iter(inputs)
        self._applied = True
        return self._outputs(it)

    def _outputs(self, it: Iterator[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; create a new one")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} objects cannot be pickled: they own processes "
                        f"and a one-shot stream; pickle the stages instead")
