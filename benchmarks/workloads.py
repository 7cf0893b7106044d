"""Benchmark workloads: the stage functions, their inputs and the serial reference.

Everything a worker process may have to unpickle lives at module level here,
so the workloads run under the ``fork``, ``spawn`` and ``forkserver`` start
methods alike. Stage functions carry no ``stateful``/``batch_size``
attributes of their own; each system wraps them with the settings it needs
(see ``systems.py``).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

ITEM_BYTES = 1 << 20
"""Size of one W4 item (1 MiB)."""

GROUP = 64
"""W8: inputs per call of the grouped (batch inference) stage."""

INFER_FIXED, INFER_PER_ITEM = 2e-3, 20e-6
"""W8: CPU seconds one call of the inference stage costs: fixed, and per item in its batch."""

EXPANSION = 1_000
"""W9: outputs per input."""


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    ``items`` is the number of inputs (W1-W3, W5, W8), of outputs (W9: 1,000
    per input) or of outputs taken from the endless source (W4, W4big, W10,
    W10big); ``quick_items`` is the same for
    ``--quick``. ``spin_seconds`` is the target CPU time of one call of the
    calibrated stage, or ``None`` when the workload has none. ``max_repeats``
    caps ``--repeats`` for a workload too long to repeat.
    """

    name: str
    title: str
    items: int
    quick_items: int
    spin_seconds: float | None
    summary: str
    max_repeats: int | None = None
    opt_in: bool = False
    pss: bool = False  # memory as PSS: shared memory counted once, not once per process

    def n(self, quick: bool) -> int:
        return self.quick_items if quick else self.items

    @property
    def endless(self) -> bool:
        """Whether the input is an endless source cut short by the consumer."""
        return self.name.startswith(("W4", "W6"))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("W1", "overhead", 200_000, 20_000, None,
                 "one stateless stage x+1 on small ints: per-item overhead"),
        Workload("W2", "CPU-bound", 1_000, 100, 2e-3,
                 "one stateless stage of ~2 ms pure-Python CPU per item: parallel speedup"),
        Workload("W3", "chain", 20_000, 2_000, 2e-4,
                 "stateless ~0.2 ms CPU -> stateful running sum -> window-3 difference "
                 "-> stateless x*2: mixed pipeline"),
        Workload("W4", "large items", 3_000, 300, None,
                 "endless source of 1 MiB bytes -> stateless len, stop after N outputs: "
                 "transfer cost and bounded memory"),
        Workload("W4big", "large items, long", 30_000, 3_000, None,
                 "W4 with ten times the outputs: peak memory should stay flat",
                 max_repeats=1),
        Workload("W5", "start-stop", 1, 1, None,
                 "stateless -> stateful -> stateless on one input: "
                 "entering and leaving the pipeline"),
        # blpipe's pool stages on a Dask LocalCluster (Pipeline(executor=...)): opt-in
        Workload("W2dask", "CPU-bound on a Dask executor", 1_000, 100, 2e-3,
                 "W2 (one stateless stage of ~2 ms pure-Python CPU per item) with blpipe's "
                 "pool stage on a Dask LocalCluster executor, next to blpipe's own pool",
                 opt_in=True),
        Workload("W1dask", "Dask executor per-chunk overhead", 4_000, 400, None,
                 "one stateless stage x+1 (no work) on a Dask LocalCluster executor and on "
                 "blpipe's own pool: the cost of each chunk sent through the executor",
                 opt_in=True),
        Workload("W6", "byte budget", 150, 30, None,
                 "endless source of bytes of 1-64 MiB (seeded) -> stateless len, "
                 "batch_size 32, with and without max_bytes_in_flight = 256 MiB: peak PSS",
                 opt_in=True, pss=True),
        Workload("W7", "adaptive pool, busy stateful stage", 1_000, 100, 2e-3,
                 "stateless ~2 ms CPU -> stateful ~2 ms CPU (running sum), batch_size 16, "
                 "under the default pool, blllib's rule (n_cpu = cores) and n_cpu='auto'",
                 opt_in=True),
        Workload("W7chain", "adaptive pool, W3's chain", 20_000, 2_000, 2e-4,
                 "W3 (light stateful stage) under the default pool, blllib's rule "
                 "(n_cpu = cores) and n_cpu='auto'", opt_in=True),
        # stage shapes: groups and expansions
        Workload("W8", "batch inference", 3_200, 320, None,
                 "a stage costing 2 ms of CPU per call + 20 us per item, grouped by 64 "
                 "with one output per item (group=64, expand=True), against the same stage "
                 "called per item", opt_in=True),
        Workload("W9", "expansion", 1_000_000, 100_000, None,
                 "1,000 inputs, each expanding (a generator) to 1,000 items -> stateless "
                 "x+1; n counts outputs", opt_in=True),
        Workload("W10", "endless expansion", 1_000_000, 100_000, None,
                 "one input expanding without end (a generator) -> stateless x+1, stop "
                 "after N outputs: bounded memory", opt_in=True),
        Workload("W10big", "endless expansion, long", 10_000_000, 1_000_000, None,
                 "W10 with ten times the outputs: peak RSS should stay flat", opt_in=True),
    )
}

DEFAULT_WORKLOADS = tuple(name for name, w in WORKLOADS.items() if not w.opt_in)
"""What ``run.py`` runs without ``--workloads``: every workload that is not opt-in."""

WORKLOAD_GROUPS: dict[str, tuple[str, ...]] = {"dask": ("W2dask", "W1dask"),
                                               "auto": ("W7", "W7chain"),
                                               "shapes": ("W8", "W9", "W10", "W10big")}
"""Names ``--workloads`` accepts for several workloads at once."""

DASK_WORKLOADS = WORKLOAD_GROUPS["dask"]
SHAPE_WORKLOADS = WORKLOAD_GROUPS["shapes"]
ENDLESS_EXPANSIONS = ("W10", "W10big")


# --- stage functions -------------------------------------------------------


def add_one(x: int) -> int:
    """W1's stage."""
    return x + 1


def spin(x: int, iterations: int) -> int:
    """Deterministic pure-Python CPU work: ``iterations`` steps of an LCG seeded by ``x``."""
    acc = x
    for _ in range(iterations):
        acc = (acc * 1103515245 + 12345) & 0x7FFFFFFF
    return acc


class Spin:
    """Picklable callable running :func:`spin` with a fixed iteration count (W2, W3)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, x: int) -> int:
        return spin(x, self.iterations)

    def __repr__(self) -> str:
        return f"Spin({self.iterations})"


class RunningSum:
    """Stateful stage: the running sum of its inputs so far (W3)."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += x
        return self.total


def window_diff(window: tuple[int, ...]) -> int:
    """Window-3 stage: the difference across the window, ``w[2] - w[0]`` (W3)."""
    return window[2] - window[0]


def double(x: int) -> int:
    """W3's last stage."""
    return x * 2


def identity(x: Any) -> Any:
    """A trivial stateless stage (W5)."""
    return x


class CountingIdentity:
    """A trivial stateful stage: passes its input on and counts calls (W5)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        return x


def big_items(size: int = ITEM_BYTES) -> Iterator[bytes]:
    """Endless source of distinct ``size``-byte ``bytes`` objects (W4).

    Random bytes are drawn once; each item is a fresh copy whose last byte
    is the item's index modulo 256. One allocation per item keeps the
    source itself cheap next to what is measured.
    """
    head = memoryview(os.urandom(size))[:-1]
    for i in itertools.count():
        yield b"".join((head, bytes((i % 256,))))


BUDGET_SIZES = (1 << 20, 64 << 20)
"""W6's item sizes: uniform in this range, from a seeded generator."""


def budget_items() -> Iterator[bytes]:
    """Endless source of ``bytes`` of 1-64 MiB (W6); item ``i`` is filled with ``i % 251``."""
    rng = random.Random(6)
    for i in itertools.count():
        yield bytes((i % 251,)) * rng.randint(*BUDGET_SIZES)


def budget_sizes(n: int) -> list[int]:
    """The sizes of W6's first ``n`` items, without making them."""
    rng = random.Random(6)
    return [rng.randint(*BUDGET_SIZES) for _ in range(n)]


class SpinSum:
    """W7's stateful stage: ~2 ms of CPU, then a running sum."""

    def __init__(self, iterations: int) -> None:
        self.spin = Spin(iterations)
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += self.spin(x) & 0xFFFF
        return self.total


def burn(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time (no sleeping).

    Counted in CPU time, so a call costs the same work whatever the machine's
    speed or load; its wall time grows when the core is shared.
    """
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def predict(x: int) -> int:
    """W8's answer for one input (what a model would predict)."""
    return (x * 2654435761) & 0xFFFFFFFF


def infer_batch(batch: list[int]) -> list[int]:
    """W8's stage: 2 ms of CPU per call plus 20 us per item, then one output per item."""
    burn(INFER_FIXED + INFER_PER_ITEM * len(batch))
    return [predict(x) for x in batch]


def infer_one(x: int) -> int:
    """W8's stage called on one item: the same cost as a batch of one."""
    return infer_batch([x])[0]


def expand_range(x: int) -> Iterator[int]:
    """W9's expanding stage: input ``x`` becomes ``x*1000 .. x*1000+999``, lazily."""
    start = x * EXPANSION
    yield from range(start, start + EXPANSION)


def expand_to_list(x: int) -> list[int]:
    """:func:`expand_range` as a list, for ``Pool.imap`` (its results are whole)."""
    start = x * EXPANSION
    return list(range(start, start + EXPANSION))


def count_from(x: int) -> Iterator[int]:
    """W10's expanding stage: ``x, x+1, x+2, ...`` without end."""
    yield from itertools.count(x)


# --- helpers shared by the systems -----------------------------------------


def groups(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of ``n`` consecutive items; the last may be shorter."""
    it = iter(iterable)
    while batch := list(itertools.islice(it, n)):
        yield batch



def sliding_windows(iterable: Iterable[Any], k: int) -> Iterator[tuple[Any, ...]]:
    """Tuples of ``k`` consecutive items: ``(x0..xk-1), (x1..xk), ...``."""
    window: collections.deque[Any] = collections.deque(maxlen=k)
    for x in iterable:
        window.append(x)
        if len(window) == k:
            yield tuple(window)


def calibrate_spin(seconds: float, trials: int = 5) -> int:
    """Iterations of :func:`spin` that take about ``seconds`` on this machine.

    Uses the fastest of a few trials, so a busy machine makes the
    calibrated work longer rather than shorter than requested.
    """
    probe = 20_000
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        spin(1, probe)
        best = min(best, time.perf_counter() - t0)
    return max(1, round(probe * seconds / best))


# --- the serial reference --------------------------------------------------


def serial_stream(name: str, n: int, iterations: int) -> Iterator[Any]:
    """The workload's outputs computed in this process, in order.

    For W4/W4big this is endless; the consumer stops after ``n`` outputs.
    """
    if name in ("W1", "W1dask"):
        return map(add_one, range(n))
    if name in ("W2", "W2dask"):
        return map(Spin(iterations), range(n))
    if name == "W3":
        summed = map(RunningSum(), map(Spin(iterations), range(n)))
        return map(double, map(window_diff, sliding_windows(summed, 3)))
    if name in ("W4", "W4big"):
        return map(len, big_items())
    if name == "W6":
        return map(len, budget_items())
    if name == "W7":
        return map(SpinSum(iterations), map(Spin(iterations), range(n)))
    if name == "W7chain":
        return serial_stream("W3", n, iterations)
    if name == "W5":
        return map(identity, map(CountingIdentity(), map(identity, range(n))))
    if name == "W8":
        return map(infer_one, range(n))
    if name == "W9":
        return map(add_one, itertools.chain.from_iterable(
            map(expand_range, range(n // EXPANSION))))
    if name in ENDLESS_EXPANSIONS:
        return map(add_one, count_from(0))
    raise KeyError(name)


class Collector:
    """Consumes a pipeline's output: records the first-output time and the result.

    ``take`` stops consumption after that many outputs (W4). The outputs are
    kept as a list, or only counted and summed when ``count_only`` is set;
    ``weighted`` sums each output times its position (1, 2, ...) instead, so
    that the order is checked too without keeping the outputs (W9, W10).
    """

    def __init__(self, take: int | None = None, count_only: bool = False,
                 weighted: bool = False) -> None:
        self.take = take
        self.count_only = count_only or weighted
        self.weighted = weighted
        self.outputs: list[Any] = []
        self.count = 0
        self.total = 0
        self.first_output_at: float | None = None
        self.on_consumed: Callable[[Collector], None] | None = None

    def consume(self, iterable: Iterable[Any]) -> None:
        take = self.take
        for y in iterable:
            if self.first_output_at is None:
                self.first_output_at = time.perf_counter()
            self.count += 1
            if self.weighted:
                self.total += self.count * y
            elif self.count_only:
                self.total += y
            else:
                self.outputs.append(y)
            if take is not None and self.count >= take:
                break
        if self.on_consumed is not None:
            self.on_consumed(self)

    def digest(self) -> str:
        """A short fingerprint of the result, compared with the reference's."""
        if self.weighted:
            return f"count={self.count} weighted_sum={self.total}"
        if self.count_only:
            return f"count={self.count} sum={self.total}"
        h = hashlib.sha256(repr(self.outputs).encode()).hexdigest()[:16]
        return f"count={self.count} sha256={h}"


def new_collector(workload: Workload, n: int) -> Collector:
    """The collector a system uses for ``workload`` with ``n`` items."""
    if workload.endless:
        return Collector(take=n, count_only=True)
    if workload.name == "W9":
        return Collector(weighted=True)
    if workload.name in ENDLESS_EXPANSIONS:
        return Collector(take=n, weighted=True)
    return Collector()


def reference_digest(name: str, n: int, iterations: int) -> str:
    """The serial reference's digest.

    W4's outputs are the lengths of ``n`` items of :data:`ITEM_BYTES` each,
    so its count and sum are known without generating 30 GB of bytes. W8's
    are :func:`predict` of each input, computed without burning the stage's
    CPU time (6.5 s).
    """
    workload = WORKLOADS[name]
    collector = new_collector(workload, n)
    if name == "W6":
        collector.count, collector.total = n, sum(budget_sizes(n))
        return collector.digest()
    if workload.endless:
        collector.count, collector.total = n, n * ITEM_BYTES
        return collector.digest()
    if name == "W8":
        collector.consume(map(predict, range(n)))
        return collector.digest()
    collector.consume(serial_stream(name, n, iterations))
    return collector.digest()

