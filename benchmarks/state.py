"""Benchmark rows for state that scales: setup(), replicas, flush().

Run from the repository root::

    python benchmarks/state.py                 # every row, 5 repeats
    python benchmarks/state.py --repeats 1     # smoke run

Each measurement runs in a fresh interpreter (this file, with ``--one``), which
times its own timed region and checks its result; repeats are interleaved (all
rows, then all rows again), and each row's median is reported with the
parent-side CPU seconds. The rows:

* ``count``: a stateful stage that spends about 2 ms of CPU per input and
  counts, its ``flush()`` giving the count; ``replicas = 2`` against one
  dedicated process, and against the same loop run serially.
* ``setup``: a stage whose ``setup()`` takes 1 s and whose calls take 20 ms;
  blpipe with ``replicas = 2`` against ``mpire`` with ``worker_init`` and 2
  jobs (skipped where mpire is not installed).
* ``keyed``: a keyed stage (``key = fn``) that spends about 2 ms of CPU per
  input over 8 keys, with 2 replicas against 1; and ``keyed skew`` the same
  with one key holding 90 % of the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's blpipe

COUNT_N = 400
COUNT_WORK = 0.002  # seconds of CPU per input
SETUP_N = 100
SETUP_SECONDS = 1.0
CALL_SECONDS = 0.02


def spin(seconds: float) -> None:
    """Burn ``seconds`` of CPU in pure Python."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class Count:
    """Counts its inputs, spending CPU on each; ``flush()`` gives the count."""

    batch_size = 16

    def __init__(self, replicas: int | None) -> None:
        self.replicas = replicas
        self.n = 0

    def __call__(self, x: int) -> None:
        spin(COUNT_WORK)
        self.n += 1

    def flush(self) -> list[int]:
        return [self.n]


class Keyed:
    """Per key: a running total, 2 ms of CPU per input."""

    batch_size = 16

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.total = 0

    @staticmethod
    def key(x: tuple[int, int]) -> int:
        return x[0]

    def __call__(self, x: tuple[int, int]) -> int:
        spin(COUNT_WORK)
        self.total += x[1]
        return self.total


def keyed_input(skew: bool) -> list[tuple[int, int]]:
    if skew:  # key 0 holds 90 % of the inputs
        return [(0 if i % 10 else 1 + (i // 10) % 7, i) for i in range(COUNT_N)]
    return [(i % 8, i) for i in range(COUNT_N)]


def keyed_want(data: list[tuple[int, int]]) -> int:
    totals: dict[int, int] = {}
    out = 0
    for k, v in data:
        totals[k] = totals.get(k, 0) + v
        out += totals[k]
    return out


class Model:
    """A stage with a slow setup() and 20 ms calls."""

    stateful = False
    batch_size = 8
    replicas = 2

    def setup(self) -> None:
        time.sleep(SETUP_SECONDS)
        self.weight = 2

    def __call__(self, x: int) -> int:
        time.sleep(CALL_SECONDS)
        return self.weight * x


def mpire_init(state: dict[str, Any]) -> None:
    time.sleep(SETUP_SECONDS)
    state["weight"] = 2


def mpire_call(state: dict[str, Any], x: int) -> int:
    time.sleep(CALL_SECONDS)
    return int(state["weight"]) * x


def run_one(row: str) -> dict[str, Any]:
    from blpipe import Pipeline

    start, cpu = time.perf_counter(), time.process_time()
    if row == "count serial":
        c = Count(None)
        for x in range(COUNT_N):
            c(x)
        result: Any = c.flush()
    elif row in ("count blpipe[dedicated]", "count blpipe[replicas=2]"):
        replicas = 2 if "replicas" in row else None
        with Pipeline([Count(replicas)], n_cpu=2) as p:
            result = [sum(p.apply(range(COUNT_N)))]
    elif row.startswith("keyed"):
        replicas = 2 if "replicas=2" in row else 1
        with Pipeline([Keyed(replicas)], n_cpu=replicas) as p:
            result = sum(p.apply(keyed_input("skew" in row)))
    elif row == "setup serial":
        m = Model()
        m.setup()
        result = sum(m(x) for x in range(SETUP_N))
    elif row == "setup blpipe[replicas=2]":
        with Pipeline([Model()], n_cpu=2) as p:
            result = sum(p.apply(range(SETUP_N)))
    elif row == "setup mpire[worker_init]":
        from mpire import WorkerPool

        with WorkerPool(n_jobs=2, use_worker_state=True) as pool:
            result = sum(pool.imap(mpire_call, range(SETUP_N), worker_init=mpire_init,
                                   chunk_size=1))
    else:
        raise SystemExit(f"unknown row {row}")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    want: Any = [COUNT_N] if row.startswith("count") else 2 * sum(range(SETUP_N))
    if row.startswith("keyed"):
        want = keyed_want(keyed_input("skew" in row))
    return {"seconds": seconds, "cpu": cpu, "ok": result == want}


def rows() -> list[str]:
    out = ["count serial", "count blpipe[dedicated]", "count blpipe[replicas=2]",
           "keyed blpipe[replicas=1]", "keyed blpipe[replicas=2]",
           "keyed skew blpipe[replicas=1]", "keyed skew blpipe[replicas=2]",
           "setup serial", "setup blpipe[replicas=2]"]
    try:
        import mpire  # noqa: F401
        out.append("setup mpire[worker_init]")
    except ImportError:
        print("mpire is not installed: its row is skipped", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    names = rows()
    times: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--one", name], check=True,
                                 capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "PYTHONHASHSEED": "0"})
            m = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(m)
            print(f"[{r + 1}/{args.repeats}] {name}: {m['seconds']:.3f} s", file=sys.stderr)
    med = {n: statistics.median(m["seconds"] for m in times[n]) for n in names}
    print(f"cores: {os.cpu_count()} | Python {sys.version.split()[0]} | "
          f"medians of {args.repeats}, interleaved\n")
    print("| row | median s | caller CPU s | ok |")
    print("|---|---|---|---|")
    for n in names:
        cpu = statistics.median(m["cpu"] for m in times[n])
        ok = all(m["ok"] for m in times[n])
        print(f"| {n} | {med[n]:.3f} | {cpu:.3f} | {'yes' if ok else 'WRONG'} |")
    print()
    speedup = med["count blpipe[dedicated]"] / med["count blpipe[replicas=2]"]
    print(f"- count: replicas=2 is {speedup:.2f}x as fast as one dedicated process")
    for kind in ("keyed", "keyed skew"):
        ratio = med[f"{kind} blpipe[replicas=1]"] / med[f"{kind} blpipe[replicas=2]"]
        print(f"- {kind}: 2 replicas are {ratio:.2f}x as fast as 1")
    if "setup mpire[worker_init]" in med:
        ratio = med["setup blpipe[replicas=2]"] / med["setup mpire[worker_init]"]
        print(f"- setup: blpipe with replicas=2 takes {ratio:.2f}x mpire's time")


if __name__ == "__main__":
    main()
