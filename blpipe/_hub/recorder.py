"""The running totals behind ``statistics()``, written by the thread that runs the stream."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._core.spec import Placement, StageSpec
from ..statistics import StageStatistics, Statistics

_RECENT = 101  # chunks whose seconds per input make a stage's usual call


class Recorder:
    """The running totals of one pipeline.

    Only the thread that runs the stream writes them, adding a chunk's inputs
    before its outputs; :meth:`snapshot` copies the outputs before the
    inputs, each copy in one step, so a snapshot taken from another thread
    never shows more out than in, and no lock is taken per chunk.
    """

    def __init__(self, stages: Sequence[StageSpec], pool_size: int, usable_cpus: int) -> None:
        n = len(stages)
        self.specs = tuple(stages)
        self.pool_size = pool_size
        self.usable_cpus = usable_cpus
        self.segment = list(range(n))  # set by the pipeline that fuses
        self.busy = [0.0] * n
        self.n_in = [0] * n
        self.n_out = [0] * n
        self.retries = [0] * n
        self.timeouts = [0] * n
        self.serialize = [0.0] * n  # per first stage of a segment
        # per stage, each recent chunk's seconds per input: its usual call
        self.per_call: list[deque[float]] = [deque(maxlen=_RECENT) for _ in range(n)]
        self.started: float | None = None
        self.ended: float | None = None
        self.yielded = 0
        self.consumer = 0.0
        self.input = 0.0
        self.restarts = 0  # pool workers started in place of others
        self.setup_seconds = 0.0  # in the stages' setup(), summed over the processes
        self.setups = 0  # processes that ran a setup()
        # a stage with replicas: per replica [inputs, busy seconds], added as results come
        self.replicas: dict[int, list[list[float]]] = {}
        # a keyed stage: what its book of keys says now: (live keys, [(key, inputs)] top)
        self.keys: dict[int, Callable[[], tuple[int, tuple[str, int] | None]]] = {}

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def end(self) -> None:
        if self.started is not None and self.ended is None:
            self.ended = time.monotonic()

    def add(self, first: int, stats: list[Any], n_in: int, n_out: int, seconds: float) -> None:
        """A chunk's figures: per stage ``[busy, in, out, retries, timeouts]`` from ``first``
        on, the segment's inputs and outputs, and its serialization seconds."""
        self.serialize[first] += seconds
        if len(stats) == 1:  # the common case, kept short
            figures = stats[0]
            self.busy[first] += figures[0]
            if n_in:
                self.per_call[first].append(figures[0] / n_in)
            self.n_in[first] += n_in
            self.n_out[first] += n_out
            if figures[3] or figures[4]:
                self.retries[first] += figures[3]
                self.timeouts[first] += figures[4]
            return
        busy, ins, outs = self.busy, self.n_in, self.n_out
        last = len(stats) - 1
        for j, figures in enumerate(stats):
            busy[first + j] += figures[0]
            ins[first + j] += n_in if j == 0 else figures[1]
            if figures[1]:
                self.per_call[first + j].append(figures[0] / figures[1])
            self.retries[first + j] += figures[3]
            self.timeouts[first + j] += figures[4]
        for j, figures in enumerate(stats):
            outs[first + j] += n_out if j == last else figures[2]

    def usual(self) -> list[float]:
        """Each stage's usual call: the median of its recent chunks' seconds per input."""
        out = []
        for recent in self.per_call:
            ordered = sorted(recent)  # one step in C: the hub's appends wait for it
            out.append(ordered[len(ordered) // 2] if ordered else 0.0)
        return out

    def snapshot(self, live: Callable[[int], tuple[int, int, float, float]],
                 running: bool, errors: Sequence[int],
                 nbytes: tuple[int, int] = (0, 0), active: int = 0,
                 stalls: dict[int, tuple[float, str | None]] | None = None) -> Statistics:
        """The record now; ``live(segment)`` gives the segment's ``(in flight, peak
        in flight, starved s, blocked s)``, ``stalls`` each stage's oldest call
        in flight: ``{stage: (since, input)}``."""
        n_out = list(self.n_out)  # before the inputs: see the class docstring
        n_in = list(self.n_in)
        busy = list(self.busy)
        retries = list(self.retries)
        timeouts = list(self.timeouts)
        serialize = list(self.serialize)
        now = time.monotonic()
        end = self.ended or now
        usual = self.usual()
        stalls = stalls or {}
        elapsed = 0.0 if self.started is None else end - self.started
        stages = []
        first_of: dict[int, int] = {}
        for i, seg in enumerate(self.segment):
            first_of.setdefault(seg, i)
        for i, spec in enumerate(self.specs):
            seg = self.segment[i]
            inflight, peak, starved, blocked = live(seg)
            workers = spec.replicas or {Placement.POOL: self.pool_size, Placement.DEDICATED: 1,
                       Placement.MASTER: 0, Placement.THREAD: spec.threads or 1,
                       Placement.ASYNC: spec.concurrency or 1}[spec.placement]
            # calls in flight at once: a group stage's hold a group each
            can_run = max(1, min(workers, spec.batch_size // (spec.group or 1)))
            since, on = stalls.get(i, (now, None))
            keys = self.keys[i]() if i in self.keys else (None, None)
            stages.append(StageStatistics(
                name=spec.label, placement=spec.placement.value, window=spec.window,
                batch_size=spec.batch_size, segment=seg, workers=workers,
                items_in=n_in[i], items_out=n_out[i],
                busy_seconds=busy[i], starved_seconds=starved, blocked_seconds=blocked,
                serialize_seconds=serialize[first_of[seg]], in_flight=inflight,
                peak_in_flight=peak,
                throughput=n_out[i] / elapsed if elapsed > 0 else 0.0,
                utilization=busy[i] / (elapsed * can_run) if elapsed > 0 else 0.0,
                errors=errors[i], shape=spec.shape, retries=retries[i],
                timeouts=timeouts[i],
                usual_call_seconds=usual[i],
                oldest_call_seconds=max(0.0, now - since), oldest_call_input=on,
                replicas=spec.replicas,
                replica_inputs=tuple(int(r[0]) for r in self.replicas.get(i, ())),
                replica_busy_seconds=tuple(r[1] for r in self.replicas.get(i, ())),
                live_keys=keys[0], top_key=keys[1]))
        return Statistics(stages=tuple(stages), elapsed_seconds=elapsed,
                          items_yielded=self.yielded, consumer_seconds=self.consumer,
                          input_seconds=self.input, running=running,
                          pool_size=self.pool_size, usable_cpus=self.usable_cpus,
                          bytes_in_flight=nbytes[0], peak_bytes_in_flight=nbytes[1],
                          pool_active=active or self.pool_size, restarts=self.restarts,
                          setup_seconds=self.setup_seconds, setups=self.setups)
