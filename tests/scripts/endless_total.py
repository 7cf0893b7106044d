"""Sums an endless stream until a signal stops it: the child of the Ctrl-C and
SIGTERM checks in ``tests/test_signals.py`` and ``benchmarks/faults.py``.

    python endless_total.py START_METHOD

It prints ``running`` once outputs flow. SIGTERM exits with "terminated".
"""

from __future__ import annotations

import itertools
import signal
import sys
import time
from types import FrameType

from blpipe import Pipeline, stage


def slow(x: int) -> int:
    time.sleep(0.01)
    return x


class Total:
    batch_size = 8

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += x
        return self.total


def on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit("terminated")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_term)
    with Pipeline([stage(slow, stateful=False, batch_size=8), Total()],
                  start_method=sys.argv[1]) as p:
        for n, _ in enumerate(p.apply(itertools.count())):
            if n == 20:
                print("running", flush=True)
