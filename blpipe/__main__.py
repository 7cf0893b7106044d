"""python -m blpipe: time a four-stage pipeline against SequentialPipeline.

parse + score (pool) -> Drift() (stateful: a process of its own) -> trend (windows of 3, pool)

score and Drift() cost real CPU (a pure-Python loop standing in for real work).
The demo runs the same input through blpipe's Pipeline and through
SequentialPipeline, one item at a time in this process, checks that the outputs
are the same, and prints both times, the speedup, and Pipeline.report(), which
names the bottleneck and gives advice. It exits with 0 only if the outputs match.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import multiprocess

from blpipe import Pipeline, SequentialPipeline, stage, usable_cpu_count

SCORE_ROUNDS = 3000  # loop rounds per item in score (stateless: the pool runs it)
DRIFT_ROUNDS = 3000  # loop rounds per item in Drift (stateful: one process runs it)


def spin(x: int, rounds: int) -> int:
    """A deterministic pure-Python loop: ``rounds`` steps of a linear congruential generator."""
    for _ in range(rounds):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def lines(n: int) -> Iterator[str]:
    """Synthetic log lines ``'index,sensor,reading'``; every 50th is a blank line."""
    for i in range(n):
        yield "" if i % 50 == 49 else f"{i},{i % 7},{(i * 7919) % 1000}"


@stage(stateful=False, batch_size=64)
def parse(line: str) -> tuple[int, int] | None:
    """``(sensor, reading)``; a blank line gives ``None``, which drops it."""
    if not line:
        return None
    _, sensor, reading = line.split(",")
    return int(sensor), int(reading)


@stage(stateful=False, batch_size=64)
def score(record: tuple[int, int]) -> int:
    """A score from 0 to 999 that costs CPU and needs no state: the pool runs it."""
    sensor, reading = record
    return spin(sensor * 1000 + reading, SCORE_ROUNDS) % 1000


class Drift:
    """A running level that mixes in every score, in order.

    ``stateful`` is not set, so it defaults to True: the stage runs in a
    process of its own and sees the scores one at a time, in input order.
    """

    batch_size = 64

    def __init__(self) -> None:
        self.level = 0

    def __call__(self, s: int) -> int:
        self.level = spin(self.level ^ s, DRIFT_ROUNDS)
        return self.level % 1000


@stage(stateful=3, batch_size=64)
def trend(w: tuple[int, int, int]) -> str:
    """The change over a sliding window of three levels."""
    return f"{w[2] - w[0]:+4d}"


def stages() -> list[Callable[..., Any]]:
    return [parse, score, Drift(), trend]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"],
                        help="how worker processes start (default: the platform's)")
    parser.add_argument("--lines", type=int, default=3000, help="input size (default 3000)")
    parser.add_argument("--n-cpu", type=int, help="worker processes in all (default: a pool "
                        "of every usable CPU, plus one process for Drift())")
    args = parser.parse_args(argv)
    method = multiprocess.get_context(args.start_method).get_start_method()

    print(f"{args.lines:,} lines, {usable_cpu_count()} usable CPU(s), start method {method}")
    start = time.perf_counter()
    with Pipeline(stages(), n_cpu=args.n_cpu, start_method=args.start_method) as p:
        print(f"{'stage':<20}{'runs in':<11}{'window':<8}batch_size")
        for s in p.stages:
            window = "-" if s.window is None else str(s.window)
            print(f"{s.label:<20}{s.placement.value:<11}{window:<8}{s.batch_size}")
        outputs = list(p.apply(lines(args.lines)))
    parallel = time.perf_counter() - start

    start = time.perf_counter()
    with SequentialPipeline(stages()) as sp:
        expected = list(sp.apply(lines(args.lines)))
    sequential = time.perf_counter() - start

    dedicated = sum(s.placement.value == "dedicated" for s in p.stages)
    print(f"Pipeline:           {parallel:6.2f} s  (pool of {p.n_cpu} + {dedicated} "
          f"dedicated process(es), start-up included)")
    print(f"SequentialPipeline: {sequential:6.2f} s  (one item at a time, in this process)")
    print(f"speedup:            {sequential / parallel:6.2f}x")
    same = outputs == expected
    print(f"matches SequentialPipeline: {'yes' if same else 'NO'} ({len(outputs):,} outputs: "
          f"{', '.join(outputs[:4])}, ...)")
    print()
    print(p.report())
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
