"""Per-stage figures, the bottleneck, and advice built from them.

Every figure is counted as the pipeline runs, at a cost of a few list appends
per chunk: workers time each stage over a whole chunk and send the figures
with the chunk's results, and the calling process samples which stages wait
at most once a millisecond. :meth:`blpipe.Pipeline.statistics` returns a
:class:`Statistics` record, :meth:`blpipe.Pipeline.report` a table of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StageStatistics", "Statistics"]


@dataclass(frozen=True)
class StageStatistics:
    """What one stage did so far."""

    name: str
    """The stage as messages name it: ``'stage 1 (Accumulator())'``."""
    placement: str
    """Where it runs: ``'master'``, ``'dedicated'``, ``'pool'`` (blpipe's own or
    the ``executor``'s), ``'thread'`` or ``'async'`` (the run's event loop)."""
    window: int | None
    """``k`` for a stage that receives windows of ``k`` inputs, else ``None``."""
    batch_size: int
    """At most this many of its inputs are in flight."""
    segment: int
    """Stages with the same segment are fused: they run together in one task,
    and share the segment's in-flight, starved, blocked and serialization
    figures."""
    workers: int
    """Processes that may run it: the pool's size (the executor's width when
    there is one), its ``replicas`` when it has some, 1 for a dedicated stage,
    its ``threads`` for a thread stage, its ``concurrency`` (calls in flight)
    for an async stage and 0 for a stage in the calling process."""
    items_in: int
    """Inputs it has finished with (a window stage counts its inputs, not
    its windows)."""
    items_out: int
    """Outputs it passed on, after ``None`` was dropped (a window stage of
    ``k`` over ``n`` inputs gives ``n - k + 1``)."""
    busy_seconds: float
    """Time inside the stage's callable, summed over the processes running it
    (an async stage's: each call's time from its start to its end, summed,
    though the calls overlap)."""
    starved_seconds: float
    """Time its segment had nothing to do while the stream went on: it waited
    for input. ``0.0`` for stages in the calling process, which run when
    their input arrives."""
    blocked_seconds: float
    """Time finished outputs of its segment waited because the next stage's
    ``batch_size`` bound (or the consumer's buffer) was full."""
    serialize_seconds: float
    """Time its segment's worker processes spent unpickling inputs and pickling
    results (the calling process spends about as much on the other side);
    ``0.0`` in the calling process."""
    in_flight: int
    """Inputs of its segment sent out or queued, not yet passed on."""
    peak_in_flight: int
    """The most inputs of its segment ever in flight at once."""
    throughput: float
    """Outputs per second of the run so far."""
    utilization: float
    """``busy_seconds`` over the time it could have been busy: the run's
    elapsed time times the processes it can keep busy (``min(workers,
    batch_size)``, 1 in the calling process). Near 1.0, it limits the run."""
    errors: int = 0
    """Inputs it raised on and went on past (``on_error``), plus the one that
    exceeded ``max_errors``, if any."""
    shape: str = "1:1"
    """Inputs per call to outputs per call: ``'1:1'``; ``'1:n'`` for a stage
    that expands; ``'64:1'`` for one called with groups of 64; ``'64:n'``."""
    retries: int = 0
    """Calls it repeated after an error (``retries``); a call that succeeds on
    its third try counts 2."""
    timeouts: int = 0
    """Calls that ran past its ``timeout``: killed with their worker,
    abandoned in their thread, or cancelled."""
    usual_call_seconds: float = 0.0
    """Its usual call: the median, over its last 101 chunks, of each chunk's
    seconds per input; ``0.0`` before a chunk has finished."""
    oldest_call_seconds: float = 0.0
    """How long its oldest call in flight has run; ``0.0`` when none is. A
    call's start is its chunk's, plus the usual call for each call before it
    in the chunk; on a user's ``executor``, its task's, since it was sent."""
    oldest_call_input: str | None = None
    """What that call was given, as a short ``repr``; a call in a worker
    process that could not be asked is named by its chunk: ``'one of 8
    inputs from 42'``."""
    replicas: int | None = None
    """Its ``replicas``: the processes of its own it runs in; ``None`` when it
    has none (it runs in the shared pool, or where its placement says)."""
    replica_inputs: tuple[int, ...] = ()
    """With ``replicas``: the inputs each replica has finished, by index."""
    replica_busy_seconds: tuple[float, ...] = ()
    """With ``replicas``: each replica's seconds in the stage's calls."""
    live_keys: int | None = None
    """A keyed stage's live keys (each with its copy); ``None`` for another stage."""
    top_key: tuple[str, int] | None = None
    """A keyed stage's live key with the most inputs so far: its ``repr`` and its inputs."""

    def stalled(self) -> bool:
        """Whether its oldest call has run far longer than its usual one: 10
        times as long and at least 1 s, or 10 s while no call has finished."""
        age, usual = self.oldest_call_seconds, self.usual_call_seconds
        return age >= (max(1.0, 10 * usual) if usual else 10.0)


@dataclass(frozen=True)
class Statistics:
    """A snapshot of a pipeline's figures; ``report()`` renders it."""

    stages: tuple[StageStatistics, ...]
    """One record per stage, in order."""
    elapsed_seconds: float
    """Time since the run started (the first ``next`` or ``__enter__``), up to
    its end when it has ended."""
    items_yielded: int
    """Outputs handed to the consumer."""
    consumer_seconds: float
    """Time the consumer held the output generator between outputs: the code
    in its ``for`` loop. A slow consumer holds the whole pipeline up."""
    input_seconds: float
    """Time spent pulling items from the input iterable."""
    running: bool
    """Whether the run has started and not ended."""
    pool_size: int
    """Processes in the shared pool."""
    usable_cpus: int
    """CPUs this process may use (affinity and cgroup quota)."""
    bytes_in_flight: int = 0
    """Serialized bytes of the chunks sent to worker processes, or of their
    results, not yet passed on (what ``max_bytes_in_flight`` bounds)."""
    peak_bytes_in_flight: int = 0
    """The most ``bytes_in_flight`` seen so far."""
    pool_active: int = 0
    """Pool workers that get work now: ``pool_size``, or fewer under
    ``n_cpu="auto"`` while dedicated stages are busy."""
    restarts: int = 0
    """Pool workers started in place of others: after ``max_tasks_per_child``
    calls, or a worker's death."""
    setup_seconds: float = 0.0
    """Seconds spent in the stages' ``setup()``, summed over every process
    that ran one (the calling process included)."""
    setups: int = 0
    """The processes that ran a ``setup()``."""

    def bottleneck(self) -> str | None:
        """The name of what limits the run: a stage, ``'the consumer'`` or
        ``'the input'``; ``None`` when nothing was busy half the time."""
        if self.elapsed_seconds <= 0:
            return None
        candidates = [(s.utilization, s.name) for s in self.stages]
        candidates.append((self.consumer_seconds / self.elapsed_seconds, "the consumer"))
        candidates.append((self.input_seconds / self.elapsed_seconds, "the input"))
        load, name = max(candidates)
        return name if load >= 0.5 else None

    def advice(self) -> list[str]:
        """Concrete changes that the figures call for; empty when none."""
        return _advice(self)

    def report(self) -> str:
        """A fixed-width table of the figures, the bottleneck and the advice."""
        return _report(self)


# -- advice --------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _advice(st: Statistics) -> list[str]:
    out: list[str] = []
    elapsed = st.elapsed_seconds
    if elapsed <= 0 or not st.stages:
        return out
    pool = [s for s in st.stages if s.placement == "pool" and s.replicas is None]
    dedicated = [s for s in st.stages if s.placement == "dedicated"]
    replicated = [s for s in st.stages if s.placement == "pool" and s.replicas]
    own = len(dedicated) + sum(s.workers for s in replicated)  # processes of their own
    for s in [*pool, *replicated, *(s for s in st.stages if s.placement in ("thread", "async"))]:
        group = int(s.shape.split(":")[0])
        if group > 1 and s.batch_size // group < s.workers and s.utilization >= 0.5:
            out.append(
                f"{s.name} has group={group} and batch_size={s.batch_size}, so at most "
                f"{s.batch_size // group} group(s) are in flight for its {s.workers} workers "
                f"and it was busy {_pct(s.utilization)} of that: set batch_size = "
                f"{group * s.workers} ({group} x {s.workers}) so that every worker gets "
                f"a group.")
    for s in pool:
        if int(s.shape.split(":")[0]) == 1 and s.batch_size < st.pool_size and \
                s.utilization >= 0.5:
            out.append(
                f"{s.name} has batch_size={s.batch_size}, so at most {s.batch_size} of the "
                f"{st.pool_size} pool workers run it at once and it was busy "
                f"{_pct(s.utilization)} of that: set batch_size = {4 * st.pool_size} "
                f"(4 x the pool) to spread it over the whole pool.")
    for s in [*dedicated, *(s for s in st.stages if s.placement == "master")]:
        if s.utilization >= 0.8 and s.items_in:
            rate = s.items_in / s.busy_seconds if s.busy_seconds > 0 else math.inf
            where = "its dedicated process" if s.placement == "dedicated" else "this process"
            out.append(
                f"{s.name} was busy {_pct(s.utilization)} of the run, one item at a time in "
                f"{where}: it caps the pipeline at about {rate:,.0f} items/s "
                f"({1e3 / rate:.3g} ms per item). Move the work that needs no state into a "
                f"stateless stage before or after it; if it needs only the last k inputs, "
                f"make it a window (stateful = k) so that the pool runs it.")
    if pool and st.pool_size > 1 and elapsed >= 0.2:
        used = sum(s.busy_seconds for s in pool) / (elapsed * st.pool_size)
        if used < 0.25:
            need = max(1, math.ceil(sum(s.busy_seconds for s in pool) / elapsed * 2))
            out.append(
                f"the pool's {st.pool_size} workers were busy {_pct(used)} of the run: the "
                f"pool does not limit it (see the bottleneck), and n_cpu = "
                f"{need + own} would leave {st.pool_size - need} CPU(s) free "
                f"for other work.")
    busy_dedicated = [s for s in [*dedicated, *replicated] if s.utilization >= 0.5]
    busy_own = sum(s.workers for s in busy_dedicated)
    if busy_dedicated and pool:
        # the busy processes need more CPUs than there are, and they keep them all busy
        cpus = sum(s.busy_seconds for s in [*pool, *dedicated, *replicated]) / elapsed
        if (st.pool_size + busy_own > st.usable_cpus
                and cpus >= 0.75 * st.usable_cpus):
            fit = max(1, st.usable_cpus - own)
            out.append(
                f"{st.pool_size} pool workers and {busy_own} busy process(es) of dedicated "
                f"or replicated stages compete for {st.usable_cpus} usable CPUs: pass n_cpu = "
                f"{st.usable_cpus} so that the pool gets {fit} and each busy process has "
                f"a CPU of its own.")
    for s in st.stages:
        total = sum(s.replica_inputs)
        if len(s.replica_inputs) > 1 and total >= 20 and \
                max(s.replica_busy_seconds) >= 0.5 * elapsed:  # the busiest one holds it up
            i = max(range(len(s.replica_inputs)), key=s.replica_inputs.__getitem__)
            share = s.replica_inputs[i] / total
            if share >= 1.5 / len(s.replica_inputs):
                heavy = s.top_key is not None and s.top_key[1] >= 0.5 * s.replica_inputs[i]
                out.append(
                    f"{s.name}: replica {i} took {_pct(share)} of the inputs"
                    + (f"; key {s.top_key[0]} alone {_pct(s.top_key[1] / total)}, so the "
                       f"other replicas wait: spread the heavy key's work (a finer key, or "
                       f"a stateless stage before this one)." if heavy and s.top_key else
                       ", so the other replicas wait: " + (
                           f"its {s.live_keys} keys fell unevenly on the replicas (by "
                           f"hash): use a finer key, or fewer replicas."
                           if s.live_keys is not None else
                           "give it more work per input, or fewer replicas.")))
    if st.setups and elapsed < 30 and st.setup_seconds / st.setups >= 0.5 * elapsed:
        out.append(
            f"setup() took {st.setup_seconds / st.setups:.2g} s per process, "
            f"{_pct(st.setup_seconds / st.setups / elapsed)} of this {elapsed:.2g} s run: a "
            f"run this short is mostly setup. Give one Pipeline more input (one for many "
            f"files rather than one per file), or make setup() cheaper.")
    if st.consumer_seconds / elapsed >= 0.5:
        out.append(
            f"the consumer held the pipeline {_pct(st.consumer_seconds / elapsed)} of the "
            f"run: the code in the loop over apply() is the bottleneck. Move that work "
            f"into a stage of its own (stateless if it can be) so that it runs alongside "
            f"the others.")
    firsts: dict[int, StageStatistics] = {}
    for s in st.stages:
        firsts.setdefault(s.segment, s)
    for s in firsts.values():
        if (s.placement != "master" and s.serialize_seconds >= 0.05
                and s.serialize_seconds > 0.5 * _segment_busy(st, s.segment)):
            out.append(
                f"moving items in and out of {s.name} took {s.serialize_seconds:.2f} s "
                f"against {_segment_busy(st, s.segment):.2f} s of work: its items are large "
                f"for what it does. Send something smaller (a path or an index instead of "
                f"the data), or give each item more work.")
    return out


def _segment_busy(st: Statistics, segment: int) -> float:
    return sum(s.busy_seconds for s in st.stages if s.segment == segment)


# -- the report ----------------------------------------------------------------

_COLUMNS = (("stage", 28, "<"), ("where", 9, "<"), ("win", 3, ">"), ("shape", 6, ">"),
            ("batch", 5, ">"),
            ("in", 9, ">"), ("out", 9, ">"), ("busy s", 8, ">"), ("util", 5, ">"),
            ("starved s", 9, ">"), ("blocked s", 9, ">"), ("flight", 6, ">"),
            ("peak", 5, ">"), ("items/s", 10, ">"))


def _row(cells: Sequence[str]) -> str:
    parts = []
    for (_, width, align), cell in zip(_COLUMNS, cells, strict=True):
        if len(cell) > width:
            cell = cell[:width - 1] + "~"
        parts.append(f"{cell:{align}{width}}")
    return "  ".join(parts).rstrip()


def _report(st: Statistics) -> str:
    state = "running" if st.running else "ended" if st.elapsed_seconds else "not started"
    lines = [f"blpipe: {st.elapsed_seconds:.3f} s ({state}), {st.items_yielded:,} outputs, "
             f"pool of {st.pool_size}"
             + (f" ({st.pool_active} active)" if st.pool_active != st.pool_size else "")
             + f" on {st.usable_cpus} usable CPU(s)"]
    lines.append(_row([c[0] for c in _COLUMNS]))
    lines.append(_row(["-" * c[1] for c in _COLUMNS]))
    for s in st.stages:
        lines.append(_row([
            s.name, s.placement, str(s.window or "-"), s.shape, str(s.batch_size),
            f"{s.items_in:,}",
            f"{s.items_out:,}", f"{s.busy_seconds:.3f}", _pct(s.utilization),
            f"{s.starved_seconds:.3f}", f"{s.blocked_seconds:.3f}", str(s.in_flight),
            str(s.peak_in_flight), f"{s.throughput:,.0f}"]))
    elapsed = st.elapsed_seconds or math.inf
    lines.append(f"input: {st.input_seconds:.3f} s pulling items "
                 f"({_pct(st.input_seconds / elapsed)}); consumer: {st.consumer_seconds:.3f} s "
                 f"between outputs ({_pct(st.consumer_seconds / elapsed)})")
    failed = [f"{s.name} {s.errors:,}" for s in st.stages if s.errors]
    if failed:
        lines.append("errors gone past (on_error): " + ", ".join(failed))
    retried = [f"{s.name} {s.retries:,}" for s in st.stages if s.retries]
    if retried:
        lines.append("calls retried (retries): " + ", ".join(retried))
    for s in st.stages:
        if s.stalled():
            usual = (f"{s.usual_call_seconds:.3g} s" if s.usual_call_seconds else
                     "none has finished yet")
            lines.append(f"stalled? {s.name} has run a call on "
                         f"{s.oldest_call_input or 'an input not yet named'} for "
                         f"{s.oldest_call_seconds:.1f} s (its usual call: {usual})")
    neck = st.bottleneck()
    lines.append(f"bottleneck: {neck}" if neck else
                 "bottleneck: none clear (nothing was busy half the run)")
    advice = st.advice()
    if advice:
        lines.append("advice:")
        lines.extend(f"  - {a}" for a in advice)
    return "\n".join(lines)
