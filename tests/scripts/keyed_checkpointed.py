"""A resumable keyed run, for the kill test: ``keyed_checkpointed.py START OUT CHECKPOINT N``.

A keyed stage keeps a running total per key over replicas; each run picks its
replicas at random (1 to 3), so a resume often runs on another number of them
than the run that wrote the checkpoint. The consumer commits as in
``checkpointed.py``, whose loop it runs.
"""

from __future__ import annotations

import random
import sys

from tests.scripts import checkpointed


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
    replicas = random.randint(1, 3)
    checkpointed.main(start, out_path, path, n, [Total(replicas)], n_cpu=replicas)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
