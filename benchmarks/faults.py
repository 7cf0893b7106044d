"""How fast each fault surfaces, and how fast every process is gone after it.

    python benchmarks/faults.py [--repeats 5]

For each fault and start method, a stage (or the input, or the consumer)
stamps ``time.monotonic()`` just before the fault; CLOCK_MONOTONIC is shared
by all processes on Linux. Reported, as medians over the repeats:

- *surface*: from the fault to the consumer's ``except`` (or, for an early
  stop, to the ``with`` block's exit);
- *gone*: from the fault to the moment no child process is left.

Inputs before the fault are cheap, so *surface* measures blpipe, not the work.

Then crash isolation: the wall time of 2,000 cheap inputs through a pool stage
with ``on_error="collect"``, 5 of which make it SIGSEGV, against the same run
without them (interleaved, medians of the repeats).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from blpipe import Pipeline

STAMP = Path(tempfile.gettempdir()) / f"blpipe-fault-{os.getpid()}"
AT = 500


def stamp() -> None:
    STAMP.write_text(repr(time.monotonic()))


class Fault:
    """Raises, exits, or kills itself with a signal at input ``AT`` (``"none"``: never)."""

    def __init__(self, how: str, **attrs: Any) -> None:
        self.how = how
        self.path = str(STAMP)
        for key, value in attrs.items():
            setattr(self, key, value)

    def __call__(self, x: Any) -> Any:
        x = x[-1] if isinstance(x, tuple) else x
        if x == AT and self.how != "none":
            Path(self.path).write_text(repr(time.monotonic()))
            if self.how == "raise":
                raise ValueError(x)
            if self.how == "exit":
                os._exit(3)
            os.kill(os.getpid(), {"kill": signal.SIGKILL, "segv": signal.SIGSEGV}[self.how])
            time.sleep(10)
        return x


def ident(x: Any) -> Any:
    return x


ident.stateful = False  # type: ignore[attr-defined]
ident.batch_size = 64  # type: ignore[attr-defined]

KINDS = {
    "pool": {"stateful": False, "batch_size": 16},
    "window": {"stateful": 2, "batch_size": 16},
    "dedicated": {"stateful": True, "batch_size": 16},
    "master": {"run_in_master": True},
}


def no_children() -> float:
    me = psutil.Process()
    while True:
        kids = [c for c in me.children(recursive=True)
                if c.status() != psutil.STATUS_ZOMBIE
                and "forkserver" not in " ".join(c.cmdline())
                and "resource_tracker" not in " ".join(c.cmdline())]
        if not kids:
            return time.monotonic()
        time.sleep(0.002)


def run_stage_fault(kind: str, how: str, method: str) -> tuple[float, float]:
    ops = [ident, Fault(how, **KINDS[kind]), ident]
    with Pipeline(ops, n_cpu=3, start_method=method) as p:
        try:
            for _ in p.apply(range(10 * AT)):
                pass
        except BaseException:
            caught = time.monotonic()
    gone = no_children()
    t0 = float(STAMP.read_text())
    return caught - t0, gone - t0


def run_input_fault(method: str) -> tuple[float, float]:
    def source() -> Iterator[int]:
        yield from range(AT)
        stamp()
        raise KeyError("input")

    with Pipeline([ident, Fault("none", batch_size=16), ident], n_cpu=3,
                  start_method=method) as p:
        try:
            for _ in p.apply(source()):
                pass
        except KeyError:
            caught = time.monotonic()
    gone = no_children()
    t0 = float(STAMP.read_text())
    return caught - t0, gone - t0


def run_early_stop(method: str) -> tuple[float, float]:
    slow = Fault("none", stateful=False, batch_size=8)
    with Pipeline([ident, slow, ident], n_cpu=3, start_method=method) as p:
        for n, _ in enumerate(p.apply(itertools.count())):
            if n == AT:
                t0 = time.monotonic()
                break
    left = time.monotonic()
    return left - t0, no_children() - t0


# The child script is shared with tests/test_signals.py.
SIGNAL_SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "scripts" / "endless_total.py"


def run_ctrl_c(method: str) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, str(SIGNAL_SCRIPT), method], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    proc.stdout.readline()
    kids = [k for k in psutil.Process(proc.pid).children(recursive=True)
            if "resource_tracker" not in " ".join(k.cmdline())]  # multiprocess's, not ours
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(10)
    exited = time.monotonic()
    psutil.wait_procs(kids, timeout=5)
    return exited - t0, time.monotonic() - t0


POISON = frozenset({17, 500, 501, 1200, 1999})


class Poison:
    """``x * 2``, but SIGSEGV on the inputs in ``bad``."""

    stateful = False
    batch_size = 64
    on_error = "collect"

    def __init__(self, bad: frozenset[int]) -> None:
        self.bad = bad

    def __call__(self, x: int) -> int:
        if x in self.bad:
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)
        return x * 2


def run_isolation(method: str, bad: frozenset[int]) -> float:
    start = time.perf_counter()
    with Pipeline([Poison(bad)], n_cpu=2, start_method=method) as p:
        n = sum(1 for _ in p.apply(range(2000)))
        assert n == 2000 - len(bad)
        assert len(p.errors.records) == len(bad)
    return time.perf_counter() - start


def isolation_table(methods: list[str], repeats: int) -> None:
    start = time.perf_counter()
    serial = sum(1 for _ in map(Poison(frozenset()), range(2000)))
    serial_ms = (time.perf_counter() - start) * 1000
    print(f"\ncrash isolation: 2,000 inputs through a pool of 2, on_error='collect'; the "
          f"serial loop takes {serial_ms:.1f} ms ({serial} calls)")
    print("| run | " + " | ".join(f"{m}: wall ms" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    rows: dict[str, list[str]] = {"no poison input": [], "5 inputs SIGSEGV": []}
    for method in methods:
        clean, poisoned = [], []
        for _ in range(repeats):  # interleaved, so that both see the same host
            clean.append(run_isolation(method, frozenset()))
            poisoned.append(run_isolation(method, POISON))
        rows["no poison input"].append(f"{statistics.median(clean) * 1000:.0f}")
        rows["5 inputs SIGSEGV"].append(f"{statistics.median(poisoned) * 1000:.0f}")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="fork,spawn")
    parser.add_argument("--only", help="run the faults whose name contains this")
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[str], tuple[float, float]]]] = []
    for kind in KINDS:
        cases.append((f"{kind} stage raises", lambda m, k=kind: run_stage_fault(k, "raise", m)))
    for kind in ("pool", "window", "dedicated"):
        for how, what in (("exit", "os._exit(3)"), ("kill", "SIGKILL"), ("segv", "SIGSEGV")):
            cases.append((f"{kind} worker {what}",
                          lambda m, k=kind, h=how: run_stage_fault(k, h, m)))
    cases += [("input iterator raises", run_input_fault), ("consumer breaks", run_early_stop),
              ("Ctrl-C (SIGINT to the group)", run_ctrl_c)]
    methods = args.methods.split(",")
    if args.only:
        cases = [c for c in cases if args.only in c[0]]
    print(f"cores: {len(os.sched_getaffinity(0))} | Python {sys.version.split()[0]} | "
          f"medians of {args.repeats}, milliseconds")
    print("| fault | " + " | ".join(f"{m}: surface / gone" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    try:
        for name, case in cases:
            cells = []
            for method in methods:
                runs = [case(method) for _ in range(args.repeats)]
                surface = statistics.median(r[0] for r in runs) * 1000
                gone = statistics.median(r[1] for r in runs) * 1000
                cells.append(f"{surface:.0f} / {gone:.0f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        STAMP.unlink(missing_ok=True)
    if not args.only or args.only in "crash isolation":
        isolation_table(methods, args.repeats)


if __name__ == "__main__":
    main()
