"""python -m blpipe: run a four-stage pipeline and check it against SequentialPipeline.

parse (pool) -> Accumulator (dedicated process) -> diff2 (windows of 3, pool) -> render (pool)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence

from blpipe import Pipeline, SequentialPipeline, stage


def lines(n: int) -> Iterator[str]:
    """Synthetic sensor log lines: ``'index,reading'``."""
    for i in range(n):
        yield f"{i},{(i * 7919) % 1000}"


@stage(stateful=False, batch_size=64)
def parse(line: str) -> int | None:
    """The reading; every 50th line is dropped (``None`` drops an item)."""
    index, reading = line.split(",")
    return None if int(index) % 50 == 0 else int(reading)


class Accumulator:
    """Running sum. ``stateful`` is absent, so it defaults to True: a dedicated process."""

    batch_size = 64

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += x
        return self.total


@stage(stateful=3, batch_size=64)
def diff2(w: tuple[int, int, int]) -> int:
    """Second difference over a sliding window of three running sums."""
    return w[2] - w[0]


@stage(stateful=False, batch_size=64)
def render(d: int) -> str:
    return f"d2={d:+5d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"])
    parser.add_argument("--lines", type=int, default=5000, help="input size (default 5000)")
    parser.add_argument("--n-cpu", type=int, help="worker processes in all (default: pool of "
                        "every usable CPU)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with Pipeline([parse, Accumulator(), diff2, render], n_cpu=args.n_cpu,
                  start_method=args.start_method) as p:
        print(f"{'stage':<6}{'name':<15}{'placement':<11}{'window':<8}batch_size")
        for s in p.stages:
            window = "-" if s.window is None else str(s.window)
            print(f"{s.index:<6}{s.name:<15}{s.placement.value:<11}{window:<8}{s.batch_size}")
        dedicated = sum(s.placement.value == "dedicated" for s in p.stages)
        print(f"pool: {p.n_cpu} processes, plus {dedicated} dedicated; start method: "
              f"{args.start_method or 'platform default'}")
        outputs = list(p.apply(lines(args.lines)))
    wall = time.perf_counter() - start

    print(f"first outputs: {', '.join(outputs[:5])}")
    print(f"{len(outputs)} outputs from {args.lines} lines in {wall:.2f} s "
          f"({args.lines / wall:,.0f} lines/s, process start-up included)")
    with SequentialPipeline([parse, Accumulator(), diff2, render]) as sp:
        expected = list(sp.apply(lines(args.lines)))
    same = outputs == expected
    print(f"matches SequentialPipeline: {'yes' if same else 'NO'}")
    print()
    print(p.report())
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
