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
* ``mpire``: ``mpire.WorkerPool.imap``; stateful stages run in the parent;
* ``blpipe-dask``: ``blpipe.Pipeline(..., executor=client.get_executor())``
  on a Dask ``LocalCluster`` of one single-threaded worker process per usable
  core (the opt-in workloads W2dask and W1dask only). The cluster is started
  before the timed region and closed after it; both times are reported
  separately;
* ``floor`` (W1 only, not run unless asked for): ``floor.py``'s bare loop of
  fork, pipes, pickle and epoll, holding as many items in flight on as many
  workers as blpipe's pool at the row's ``batch_size``: what blpipe's round
  trips cannot beat.

Worker counts follow blpipe's default: every usable core
(``os.sched_getaffinity``) goes to the shared pool, and each stateful stage
gets a process of its own on top. ``multiprocessing.Pool`` keeps its own
default size (``os.cpu_count()``) except on W5, where it gets blpipe's.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import workloads as wl
from workloads import Workload

SYSTEMS = ("serial", "blpipe", "pool", "blllib", "pypeln", "mpire", "blpipe-dask", "floor")
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "floor")
"""What ``run.py`` runs without ``--systems`` (``floor`` is asked for, or ``--floor``)."""
START_METHODS = ("fork", "spawn", "forkserver")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Row:
    """One system with one setting, as it appears in a results table.

    ``params`` holds the setting (``bs``: blpipe/blllib ``batch_size``;
    ``cs``: chunk size; ``maxsize``: pypeln queue bound; ``start``: start
    method; ``workers``: Dask worker processes; ``group``: W8's stage called
    on lists of that many inputs). ``match`` groups rows that
    should be compared with each other (W5 compares like start methods).
    ``na`` explains why the system cannot run this workload, in which case
    the row is reported as n/a.
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
            _row("floor", bs=64), _row("floor", bs=1024),
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
            _row("blpipe", bs=64), _row("blpipe", bs=64, ckpt_s=1),
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
        for system in ("blpipe", "pool", "blllib", "pypeln", "mpire"):
            rows += [_row(system, start=m) for m in START_METHODS]
        return rows
    if name == "W2dask":
        # W2's batch_size, and one large enough for Dask's ~10 ms round trips
        bs = 4 * pool_size
        return [
            _row("serial"),
            _row("blpipe", bs=bs), _row("blpipe", bs=64),
            _row("blpipe-dask", bs=bs, workers=pool_size),
            _row("blpipe-dask", bs=64, workers=pool_size),
            _row("pool", cs=1), _row("pool", cs=4),
        ]
    if name == "W1dask":
        # W2dask's batch_size, so that the chunks are as large (batch_size / 2
        # once the stage is seen to be cheap) and their count comparable
        bs = 4 * pool_size
        return [
            _row("serial"),
            _row("blpipe", bs=bs),
            _row("blpipe-dask", bs=bs, workers=pool_size),
        ]
    if name == "W6":  # peers would read the endless source of up to 64 MiB items eagerly
        return [_row("serial"), _row("blpipe", bs=32), _row("blpipe", bs=32, budget_mib=256)]
    if name in ("W7", "W7chain"):
        bs = 16 if name == "W7" else 64
        return [_row("serial"), _row("blpipe", bs=bs), _row("blpipe", bs=bs, n_cpu=pool_size),
                _row("blpipe", bs=bs, n_cpu="auto")]
    if name == "W8":  # rows without group= call the stage once per item
        g = wl.GROUP
        return [
            _row("serial"), _row("serial", group=g),
            _row("blpipe", group=g, bs=g * pool_size),
            _row("blpipe", group=g, bs=2 * g * pool_size),
            _row("blpipe", bs=4 * pool_size),
            _row("pool", group=g, cs=1), _row("pool", cs=4),
        ]
    if name == "W9":
        return [_row("serial"), _row("blpipe", bs=1024), _row("blpipe", bs=16384),
                _row("pool", cs=1), _row("pool", cs=16)]
    if name in wl.ENDLESS_EXPANSIONS:
        # Pool and the peers return a call's result whole: an endless expansion never returns
        return [_row("serial"), _row("blpipe", bs=1024)]
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
    extra: dict[str, float] = field(default_factory=dict)
    """Figures beyond the wall time (W2dask, W1dask): chunk counts, the Dask
    cluster's start-up and shut-down, the pipeline's statistics."""


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


class CountingExecutor(concurrent.futures.Executor):
    """Passes every task on to ``inner``, counting them and timing each from submit to done.

    blpipe submits one task per chunk, so ``submitted`` is the number of
    chunks the executor ran. Attributes it does not have come from ``inner``
    (blpipe reads a Dask executor's ``_client`` to learn its width).
    """

    def __init__(self, inner: concurrent.futures.Executor) -> None:
        self._inner = inner
        self.submitted = 0
        self.latencies: list[float] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        t0 = time.perf_counter()
        future = self._inner.submit(fn, *args, **kwargs)
        # added before blpipe adds its own, so it runs first
        future.add_done_callback(lambda _: self.latencies.append(time.perf_counter() - t0))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait)  # Dask's ClientExecutor has no cancel_futures

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _statistics_extra(pipeline: Any) -> dict[str, float]:
    """The pool stage's figures from ``pipeline.statistics()``, when it has them."""
    try:
        st = pipeline.statistics()
        stage = st.stages[0]
        return {"pool_size": float(st.pool_size), "busy_s": stage.busy_seconds,
                "serialize_s": stage.serialize_seconds}
    except Exception:  # an older blpipe, or statistics that changed shape
        return {}


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
    if name in ("W1", "W1dask"):
        return [(wl.add_one, False)]
    if name in ("W2", "W2dask"):
        return [(wl.Spin(iterations), False)]
    if name == "W3":
        return [(wl.Spin(iterations), False), (wl.RunningSum(), True),
                (wl.window_diff, 3), (wl.double, False)]
    if name in ("W4", "W4big"):
        return [(len, False)]
    if name == "W5":
        return [(wl.identity, False), (wl.CountingIdentity(), True), (wl.identity, False)]
    if name == "W6":
        return [(len, False)]
    if name == "W7":
        return [(wl.Spin(iterations), False), (wl.SpinSum(iterations), True)]
    if name == "W7chain":
        return _stages("W3", iterations)
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


def _shaped_stages(workload: Workload, row: Row) -> list[Any]:
    """W8-W10's stages for blpipe, with their shapes (``group``, ``expand``)."""
    from blpipe import stage

    bs = row.params.get("bs", 1)
    if workload.name == "W8":
        if "group" in row.params:
            return [stage(wl.infer_batch, stateful=False, group=row.params["group"],
                          expand=True, batch_size=bs)]
        return [stage(wl.infer_one, stateful=False, batch_size=bs)]
    expanding = wl.expand_range if workload.name == "W9" else wl.count_from
    return [stage(expanding, stateful=False, expand=True, batch_size=bs),
            stage(wl.add_one, stateful=False, batch_size=bs)]


def _source(workload: Workload, n: int, bounded: bool) -> Iterator[Any]:
    """The workload's input; W4's endless source is cut to ``n`` items when ``bounded``."""
    if workload.name == "W6":
        source = wl.budget_items()
        return itertools.islice(source, n) if bounded else source
    if workload.endless:
        source = wl.big_items()
        return itertools.islice(source, n) if bounded else source
    if workload.name == "W9":
        return iter(range(n // wl.EXPANSION))  # n counts outputs
    if workload.name in wl.ENDLESS_EXPANSIONS:
        return iter([0])  # one input, expanding without end
    return iter(range(n))


def _finish(collector: wl.Collector, t0: float) -> Measurement:
    elapsed = time.perf_counter() - t0
    first = None if collector.first_output_at is None else collector.first_output_at - t0
    return Measurement(elapsed, first, collector.digest())


# --- the systems ------------------------------------------------------------


def run_serial(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    t0 = time.perf_counter()
    if "group" in row.params:  # W8: one call per group, flattened
        stream = itertools.chain.from_iterable(
            map(wl.infer_batch, wl.groups(range(n), row.params["group"])))
        collector.consume(stream)
    else:
        collector.consume(wl.serial_stream(workload.name, n, iterations))
    return _finish(collector, t0)


def _resumed(stages: list[Any], path: str, row: Row) -> dict[str, float]:
    """The checkpoint's size, and the time to resume from it: read it, restore
    the stages, start the workers and take the first output (none is left:
    the last checkpoint covers the whole input)."""
    from blpipe import Pipeline

    size = os.path.getsize(path)
    t0 = time.perf_counter()
    with Pipeline(stages, start_method=row.params.get("start"), checkpoint=path) as pipeline:
        list(pipeline.apply(iter(())))
    return {"checkpoint_bytes": float(size), "resume_s": time.perf_counter() - t0}


def run_blpipe(workload: Workload, row: Row, n: int, iterations: int,
               collector: wl.Collector) -> Measurement:
    from blpipe import Pipeline, stage  # imports stay out of the timed region

    bs = row.params.get("bs", 1)
    if workload.name in wl.SHAPE_WORKLOADS:
        stages = _shaped_stages(workload, row)
    else:
        stages = [stage(func, stateful=stateful, batch_size=bs)
                  for func, stateful in _stages(workload.name, iterations)]
    source = _source(workload, n, bounded=False)
    budget = row.params.get("budget_mib")
    options = {"max_bytes_in_flight": budget << 20} if budget else {}
    if "n_cpu" in row.params:
        options["n_cpu"] = row.params["n_cpu"]
    scratch = None
    if "ckpt_s" in row.params:  # a checkpoint every ckpt_s seconds, to a fresh file
        scratch = tempfile.mkdtemp()
        options.update(checkpoint=os.path.join(scratch, "run.ckpt"),
                       checkpoint_every=row.params["ckpt_s"])
    t0 = time.perf_counter()
    with Pipeline(stages, start_method=row.params.get("start"), **options) as pipeline:
        collector.consume(pipeline.apply(source))
    m = _finish(collector, t0)
    if scratch is not None:
        m.extra = _resumed(stages, options["checkpoint"], row)
        shutil.rmtree(scratch)
    elif options:
        st = pipeline.statistics()
        m.extra = {"peak_bytes_mib": st.peak_bytes_in_flight / 2**20,
                   "pool_active": float(st.pool_active)}
    return m


def blpipe_pool_size() -> int:
    """The size of blpipe's default shared pool (every usable CPU), as blpipe computes it."""
    try:
        from blpipe._hub.cpu import pool_size

        return pool_size(None, 0)
    except Exception:  # a blpipe without _cpu.pool_size
        return usable_cores()


FLOOR_DEPTH = 1
"""Chunks the floor keeps in flight per worker: for a stage as cheap as W1's, blpipe's
chunks grow to ``batch_size // 2``, one per worker on 2 cores (``floor.py``'s default
shapes, 2 x 32 and 2 x 512)."""


def floor_shape(bs: int) -> tuple[int, int, int]:
    """``(workers, chunk, depth)`` of the floor for ``batch_size`` ``bs``: blpipe's pool
    size and :data:`FLOOR_DEPTH` chunks per worker, so ``workers * chunk * depth == bs``
    (more when ``bs < depth * workers``: a chunk holds at least one item)."""
    workers = blpipe_pool_size()
    return workers, max(1, bs // (FLOOR_DEPTH * workers)), FLOOR_DEPTH


def run_floor(workload: Workload, row: Row, n: int, iterations: int,
              collector: wl.Collector) -> Measurement:
    """W1 on ``floor.py``'s bare round trips, the outputs released in input order.

    The timed region holds the forks, the run and the joins, as blpipe's
    holds its workers' start and stop.
    """
    import floor

    if workload.name != "W1":
        raise ValueError(f"the floor runs W1 only, not {workload.name}")
    workers, chunk, depth = floor_shape(row.params["bs"])
    source = _source(workload, n, bounded=True)
    t0 = time.perf_counter()
    kids = floor.start(workers)
    try:
        collector.consume(itertools.chain.from_iterable(
            floor.round_trips(kids, source, chunk, depth, ordered=True)))
    finally:
        floor.stop(kids)
    m = _finish(collector, t0)
    m.extra = {"workers": float(workers), "chunk": float(chunk), "depth": float(depth)}
    return m


def run_blpipe_dask(workload: Workload, row: Row, n: int, iterations: int,
                    collector: wl.Collector) -> Measurement:
    """blpipe with its pool stage on a Dask ``LocalCluster``'s executor.

    The cluster (``row.params["workers"]`` processes of one thread each) is
    started and waited for before the timed region, and closed after it:
    ``extra`` reports both times. The timed region is the same as blpipe's:
    from creating the pipeline to leaving its ``with`` block. The executor is
    wrapped in a :class:`CountingExecutor` to count the chunks.
    """
    from distributed import Client, LocalCluster

    from blpipe import Pipeline, stage  # imports stay out of the timed region

    workers = row.params["workers"]
    bs = row.params.get("bs", 1)
    stages = [stage(func, stateful=stateful, batch_size=bs)
              for func, stateful in _stages(workload.name, iterations)]
    source = _source(workload, n, bounded=False)
    c0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = None
    try:
        client = Client(cluster)
        client.wait_for_workers(workers)
        startup = time.perf_counter() - c0
        executor = CountingExecutor(client.get_executor())
        t0 = time.perf_counter()
        with Pipeline(stages, executor=executor) as pipeline:
            collector.consume(pipeline.apply(source))
        m = _finish(collector, t0)
    finally:
        s0 = time.perf_counter()
        if client is not None:
            client.close()
        cluster.close()
        shutdown = time.perf_counter() - s0
    m.extra = {**_statistics_extra(pipeline), "chunks": float(executor.submitted),
               "cluster_startup_s": startup, "cluster_shutdown_s": shutdown}
    if executor.latencies:
        m.extra["chunk_latency_median_s"] = statistics.median(executor.latencies)
        m.extra["chunk_latency_max_s"] = max(executor.latencies)
        # time-averaged number of chunks on the executor: their summed round trips / wall
        m.extra["chunks_in_flight_mean"] = sum(executor.latencies) / m.seconds
    return m


def run_pool_shaped(workload: Workload, row: Row, n: int, iterations: int,
                    collector: wl.Collector) -> Measurement:
    """W8, W9 the usual way: ``Pool.imap`` over whole groups or whole expansions,
    flattened in the parent (W9's ``+1`` there too)."""
    cs = row.params.get("cs", 1)
    t0 = time.perf_counter()
    with multiprocessing.Pool() as pool:
        if workload.name == "W9":
            lists = pool.imap(wl.expand_to_list, range(n // wl.EXPANSION), chunksize=cs)
            collector.consume(x + 1 for xs in lists for x in xs)
        elif "group" in row.params:
            batches = wl.groups(range(n), row.params["group"])
            collector.consume(itertools.chain.from_iterable(
                pool.imap(wl.infer_batch, batches, chunksize=cs)))
        else:
            collector.consume(pool.imap(wl.infer_one, range(n), chunksize=cs))
    return _finish(collector, t0)


def run_pool(workload: Workload, row: Row, n: int, iterations: int,
             collector: wl.Collector) -> Measurement:
    if workload.name in wl.SHAPE_WORKLOADS:
        return run_pool_shaped(workload, row, n, iterations, collector)
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
    "blpipe-dask": run_blpipe_dask,
    "floor": run_floor,
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
