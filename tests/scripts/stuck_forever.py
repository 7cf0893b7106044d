"""Gets every kind of stage stuck in a call that never returns: the child of the
check in ``tests/test_deathsig.py`` that killing the caller leaves no process.

    python stuck_forever.py START_METHOD MARKER_DIR

A pool stage spins in pure Python, two linked stateful stages sleep, and a
thread stage waits; each touches ``MARKER_DIR/<its name>`` as its call starts.
With ``batch_size = 1`` every chunk is one item, so each stage passes on the
items before the one it gets stuck on: the last stage sticks at item 0, the
one before it at item 1, and so on.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from blpipe import Pipeline, stage


def stuck_at(at: int, name: str, marker_dir: str, how: str) -> Any:
    def call(x: int) -> int:
        if x == at:
            (Path(marker_dir) / name).touch()
            if how == "spin":
                while True:
                    pass
            elif how == "sleep":
                time.sleep(3600)
            else:
                threading.Event().wait()
        return x
    return call


if __name__ == "__main__":
    start_method, marker_dir = sys.argv[1:3]
    stages = [
        stage(stuck_at(3, "thread", marker_dir, "wait"), stateful=False, threads=2),
        stage(stuck_at(2, "pool", marker_dir, "spin"), stateful=False),
        stage(stuck_at(1, "sleeper1", marker_dir, "sleep")),  # stateful, linked to the next
        stage(stuck_at(0, "sleeper2", marker_dir, "sleep")),
    ]
    with Pipeline(stages, n_cpu=4, start_method=start_method) as p:
        for _ in p.apply(range(10)):
            pass
