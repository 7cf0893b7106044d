"""How each system runs each workload, and the table of benchmark rows.

A *row* is one system with one setting (``blpipe[bs=64]``, ``pool[cs=1024]``,
``mpire[spawn]``...). :func:`rows_for` lists the rows of a workload;
:func:`measure` runs one row once in the current process and returns the
time of the timed region, the time to the first output and the result's
digest. The timed region starts just before the pipeline or pool is created
and ends once it is shut down, so start-up and shut-down are part of every
measurement.

Systems:

* ``serial``: a plain chain of ``map`` calls in one process (the reference);
* ``blpipe``: ``blpipe.Pipeline`` with stages wrapped by ``blpipe.stage``;
* ``pool``: ``multiprocessing.Pool.imap``; stateful and window stages run
  as generators in the parent around it;
* ``blllib``: ``blllib.Pipeline`` (same attribute style as blpipe);
* ``pypeln``: ``pypeln.process.map``, put back in input order by a
  streaming reorder buffer; stateful stages run in the parent;
* ``mpire``: ``mpire.WorkerPool.imap``; stateful stages run in the parent.

Worker counts follow blpipe's default: every usable core
(``os.sched_getaffinity``) goes to the shared pool, and each stateful stage
gets a process of its own on top. ``multiprocessing.Pool`` keeps its own
default size (``os.cpu_count()``) except on W5, where it gets blpipe's.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import workloads as wl
from workloads import Workload

SYSTEMS = ("serial", "blpipe", "pool", "blllib", "pypeln", "mpire")
START_METHODS = ("fork", "spawn", "forkserver")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Row:
    """One system with one setting, as it appears in a results table.

    ``params`` holds the setting (``bs``: blpipe/blllib ``batch_size``;
    ``cs``: chunk size; ``maxsize``: pypeln queue bound; ``start``: start
    method). ``match`` groups rows that should be compared with each other
    (W5 compares like start methods). ``na`` explains why the system cannot
    run this workload, in which case the row is reported as n/a.
    """

    label: str
    system: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    match: str | None = None
    na: str | None = None


def _row(system: str, **params: Any) -> Row:
    shown = ",".join(f"{k}={v}" for k, v in params.items() if k != "start")
    if "start" in params:
        shown = params["start"] + ("," + shown if shown else "")
    label = f"{system}[{shown}]" if shown else system
    return Row(label, system, dict(params), match=params.get("start"))


def rows_for(workload: Workload) -> list[Row]:
    """Every row of ``workload``, serial first and blpipe second."""
    name = workload.name
    pool_size = usable_cores()
    if name == "W1":
        return [
            _row("serial"),
            _row("blpipe", bs=64), _row("blpipe", bs=1024),
            _row("pool", cs=64), _row("pool", cs=1024), _row("pool", cs=16384),
            _row("blllib", bs=64), _row("blllib", bs=1024),
            _row("pypeln", maxsize=1024),
            _row("mpire", cs=64), _row("mpire", cs=1024), _row("mpire", cs=16384),
        ]
    if name == "W2":
        bs = 4 * pool_size
        return [
            _row("serial"),
            _row("blpipe", bs=bs),
            _row("pool", cs=1), _row("pool", cs=4),
            _row("blllib", bs=bs),
            _row("pypeln", maxsize=bs),
            _row("mpire", cs=1), _row("mpire", cs=4),
        ]
    if name == "W3":
        return [
            _row("serial"),
            _row("blpipe", bs=64),
            _row("pool", cs=64),
            _row("blllib", bs=64),
            _row("pypeln", maxsize=64),
            _row("mpire", cs=64),
        ]
    if name in ("W4", "W4big"):
        return [
            _row("serial"),
            _row("blpipe", bs=8),
            _row("pool", cs=1),
            _row("blllib", bs=8),
            _row("pypeln", maxsize=8),
            _row("mpire", cs=1),
        ]
    if name == "W5":
        rows = [_row("serial")]
        for system in SYSTEMS[1:]:
            rows += [_row(system, start=m) for m in START_METHODS]
        return rows
    raise KeyError(name)


def find_row(workload: Workload, label: str) -> Row:
    for row in rows_for(workload):
        if row.label == label:
            return row
    raise KeyError(f"{workload.name} has no row {label!r}")


@dataclass
class Measurement:
    """What one run of one row produced."""

    seconds: float
    first_output_seconds: float | None
    digest: str


# --- helpers ----------------------------------------------------------------


class Attrs:
    """Picklable wrapper giving a callable blllib's ``stateful``/``batch_size`` attributes."""

    def __init__(self, func: Callable[..., Any], stateful: bool | int | None,
                 batch_size: int) -> None:
        self.func = func
        self.stateful = stateful
        self.batch_size = batch_size

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)


def in_source_order(elements: Iterable[Any]) -> Iterator[Any]:
    """Yield pypeln ``Element`` values in input order as soon as each is due."""
    pending: dict[int, Any] = {}
    due = 0
    for element in elements:
        pending[element.index[0]] = element.value
        while due in pending:
            yield pending.pop(due)
            due += 1


def _stages(name: str, iterations: int) -> list[tuple[Callable[..., Any], bool | int]]:
    """The workload's stages as ``(callable, stateful)`` pairs, for pipeline systems."""
    if name == "W1":
        return [(wl.add_one, False)]
    if name == "W2":
        return [(wl.Spin(iterations), False)]
    if name == "W3":
        return [(wl.Spin(iterations), False), (wl.RunningSum(), True),
                (wl.window_diff, 3), (wl.double, False)]
    if name in ("W4", "W4big"):
        return [(len, False)]
    if name == "W5":
        return [(wl.identity, False), (wl.CountingIdentity(), True), (wl.identity, False)]
    raise KeyError(name)


def _pool_part(name: str, iterations: int) -> tuple[Callable[..., Any],
                                                     Callable[[Iterable[Any]], Iterator[Any]]]:
    """For pool-style systems: the function sent to the pool, and what runs after it
    in the parent (the stateful and window stages, and the cheap tail)."""
    stages = _stages(name, iterations)
    head = stages[0][0]

    def tail(stream: Iterable[Any]) -> Iterator[Any]:
        it: Iterable[Any] = stream
        for func, stateful in stages[1:]:
            if stateful is not True and stateful is not False:
                it = wl.sliding_windows(it, stateful)
            it = map(func, it)
        return iter(it)

    return head, tail


def _source(workload: Workload, n: int, bounded: bool) -> Iterator[Any]:
    """The workload's input; W4's endless source is cut to ``n`` items when ``bounded``."""
    if workload.endless:
        source = wl.big_items()
        return itertools.islice(source, n) if bounded else source
    return iter(range(n))


def _finish(collector: wl.Collector, t0: float) -> Measurement:
    elapsed = time.perf_counter() - t0
    first = None if collector.first_output_at is None else collector.first_output_at - t0
    return Measurement(elapsed, first, collector.digest())


# --- the systems ------------------------------------------------------------


def run_serial(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    t0 = time.perf_counter()
    collector.consume(wl.serial_stream(workload.name, n, iterations))
    return _finish(collector, t0)


def run_blpipe(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    import blpipe

    bs = row.params.get("bs", 1)
    stages = [blpipe.stage(func, stateful=stateful, batch_size=bs)
              for func, stateful in _stages(workload.name, iterations)]
    source = _source(workload, n, bounded=False)
    t0 = time.perf_counter()
    with blpipe.Pipeline(stages, start_method=row.params.get("start")) as pipeline:
        collector.consume(pipeline.apply(source))
    return _finish(collector, t0)


def run_pool(workload: Workload, row: Row, n: int, iterations: int,
             collector: wl.Collector) -> Measurement:
    ctx = multiprocessing.get_context(row.params.get("start"))
    head, tail = _pool_part(workload.name, iterations)
    # Pool's task feeder reads its input eagerly and cannot be stopped early,
    # so W4's endless source is cut to exactly n items first.
    source = _source(workload, n, bounded=True)
    t0 = time.perf_counter()
    # Pool's own default size on W1-W4; on W5 the size of blpipe's pool.
    processes = usable_cores() if workload.name == "W5" else None
    with ctx.Pool(processes) as pool:
        collector.consume(tail(pool.imap(head, source, chunksize=row.params.get("cs", 1))))
    return _finish(collector, t0)


def run_blllib(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    from blllib import Pipeline

    start = row.params.get("start")
    if start is not None:
        multiprocessing.set_start_method(start, force=True)
    bs = row.params.get("bs", 1)
    stages = [Attrs(func, stateful, bs) for func, stateful in _stages(workload.name, iterations)]
    dedicated = sum(1 for _, stateful in _stages(workload.name, iterations) if stateful is True)
    source = _source(workload, n, bounded=False)
    t0 = time.perf_counter()
    # blllib's pool gets n_cpu minus its stateful stages; ask for enough
    # that its pool is as large as blpipe's default one.
    with Pipeline(stages, n_cpu=usable_cores() + dedicated) as pipeline:
        collector.consume(pipeline.apply(source))
    return _finish(collector, t0)


def run_pypeln(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    import pypeln as pl

    start = row.params.get("start")
    if start is not None:
        multiprocessing.set_start_method(start, force=True)
    maxsize = row.params.get("maxsize", 1)
    head, tail = _pool_part(workload.name, iterations)
    # pypeln reads its source in a thread that cannot be stopped early, so
    # W4's endless source is cut to exactly n items first.
    source = _source(workload, n, bounded=True)
    t0 = time.perf_counter()
    stage = pl.process.map(head, source, workers=usable_cores(), maxsize=maxsize)
    elements = pl.process.to_iterable(stage, maxsize=maxsize, return_index=True)
    try:
        collector.consume(tail(in_source_order(elements)))
    finally:
        elements.close()  # stops pypeln's workers now, not at garbage collection
    return _finish(collector, t0)


def run_mpire(workload: Workload, row: Row, n: int, iterations: int,
              collector: wl.Collector) -> Measurement:
    from mpire import WorkerPool

    head, tail = _pool_part(workload.name, iterations)
    kwargs = {"start_method": row.params["start"]} if "start" in row.params else {}
    source = _source(workload, n, bounded=False)
    t0 = time.perf_counter()
    with WorkerPool(n_jobs=usable_cores(), **kwargs) as pool:
        collector.consume(tail(pool.imap(head, source, chunk_size=row.params.get("cs", 1))))
    return _finish(collector, t0)


Runner = Callable[[Workload, Row, int, int, wl.Collector], Measurement]

RUNNERS: dict[str, Runner] = {
    "serial": run_serial,
    "blpipe": run_blpipe,
    "pool": run_pool,
    "blllib": run_blllib,
    "pypeln": run_pypeln,
    "mpire": run_mpire,
}


def measure(workload: Workload, row: Row, n: int, iterations: int,
            on_consumed: Callable[[wl.Collector], None] | None = None) -> Measurement:
    """Run ``row`` on ``workload`` once, in this process.

    ``on_consumed`` is called once the last output has been consumed, before
    the system shuts down, so a hang in shut-down can be told apart.
    """
    collector = wl.new_collector(workload, n)
    collector.on_consumed = on_consumed
    return RUNNERS[row.system](workload, row, n, iterations, collector)
