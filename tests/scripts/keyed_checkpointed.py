"""A resumable keyed run, for the kill test: ``keyed_checkpointed.py START OUT CHECKPOINT N``.

A keyed stage keeps a running total per key over replicas; each run picks its
replicas at random (1 to 3), so a resume often runs on another number of them
than the run that wrote the checkpoint. The consumer commits as in
``checkpointed.py``.
"""

from __future__ import annotations

import os
import random
import sys

from blpipe import Pipeline


class Total:
    """Per key: the running total of its inputs."""

    batch_size = 16
    key_idle = 40  # keys come and go: a retired key starts again from 0

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.total = 0

    @staticmethod
    def key(x: int) -> int:
        return (x // 3) % 11 if x % 97 else 100 + x  # some keys live once, then idle

    def __call__(self, x: int) -> str:
        n = 0
        for _ in range(1_000):  # some work
            n += 1
        self.total += x
        return f"{self.key(x)}:{self.total + n - n}"

    def flush(self) -> list[str]:
        return [f"end:{self.total}"]


def expected(n: int) -> list[str]:
    """The lines of an uninterrupted run, computed here."""
    from blpipe import SequentialPipeline

    with SequentialPipeline([Total(1)]) as p:
        return list(p.apply(range(n)))


def main(start: str, out_path: str, path: str, n: int) -> None:
    with open(out_path, "ab") as out:
        def commit(covered: int) -> int:
            out.flush()
            os.fsync(out.fileno())
            return out.tell()

        replicas = random.randint(1, 3)
        with Pipeline([Total(replicas)], n_cpu=replicas, start_method=start, checkpoint=path,
                      checkpoint_every=0.05, on_checkpoint=commit) as p:
            resumed = p.checkpointed
            out.truncate(resumed.token if resumed is not None else 0)
            out.seek(0, os.SEEK_END)
            for y in p.apply(range(n)):
                out.write(f"{y}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
