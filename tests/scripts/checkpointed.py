"""A resumable run, for the kill test: ``checkpointed.py START OUT CHECKPOINT N``.

A pool stage, a dedicated running total and a window of two; the consumer
appends each output to OUT as a line and commits it at each checkpoint
(flush, fsync), keeping its byte offset as the checkpoint's token. On a
resume it cuts OUT back to that offset, so OUT never holds an output twice.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from blpipe import Pipeline, stage


@stage(stateful=False, batch_size=16)
def work(x: int) -> int:
    n = 0
    for _ in range(2_000):  # about 0.1 ms of pure Python
        n += 1
    return 3 * x + n - n


class Total:
    """The running total of its inputs: state that a restart from 0 would lose."""

    stateful = True
    batch_size = 16

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += x
        return self.total


@stage(stateful=2, batch_size=16)
def rise(w: tuple[int, int]) -> int:
    return w[1] - w[0]


def expected(n: int) -> list[str]:
    """The lines of an uninterrupted run over ``range(n)``: each input's rise of
    the running total, 3 x, names it, so a gap or a duplicate shows."""
    return [str(3 * x) for x in range(1, n)]


def main(start: str, out_path: str, path: str, n: int, stages: list[Any] | None = None,
         n_cpu: int = 3) -> None:
    """Run ``stages`` (by default the ones above) over ``range(n)``, committing
    OUT at each checkpoint; the keyed script runs its own stages through it."""
    with open(out_path, "ab") as out:  # created if missing; positioned below
        def commit(covered: int) -> int:
            out.flush()
            os.fsync(out.fileno())
            return out.tell()

        with Pipeline(stages or [work, Total(), rise], n_cpu=n_cpu, start_method=start,
                      checkpoint=path, checkpoint_every=0.05, on_checkpoint=commit) as p:
            resumed = p.checkpointed
            out.truncate(resumed.token if resumed is not None else 0)
            out.seek(0, os.SEEK_END)
            for y in p.apply(range(n)):
                out.write(f"{y}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
