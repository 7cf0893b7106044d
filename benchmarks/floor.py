"""The floor under a bound: W1's round trips with nothing but pickle, pipes and epoll.

``python benchmarks/floor.py`` forks workers that each take a chunk of ints
from a pipe, add 1 to each and send the chunk back, the parent keeping
``workers * chunk * depth`` items in flight, as blpipe's ``batch_size``
does, and consuming the results with ``sum``. No bookkeeping at all: what it
takes is what the round trips themselves cost on this host, which blpipe,
bounded the same way, cannot beat.
"""

from __future__ import annotations

import os
import pickle
import select
import statistics
import struct
import sys
import time
from itertools import islice

HEADER = struct.Struct("<Q")


def _worker(task: int, result: int) -> None:
    while head := os.read(task, HEADER.size):
        size = HEADER.unpack(head)[0]
        data = b""
        while len(data) < size:
            data += os.read(task, size - len(data))
        out = pickle.dumps([x + 1 for x in pickle.loads(data)], 5)
        os.write(result, HEADER.pack(len(out)) + out)


def run(n: int = 200_000, chunk: int = 32, workers: int = 2, depth: int = 1) -> float:
    """Seconds to take ``n`` ints through ``workers`` workers, ``depth`` chunks each."""
    kids: list[tuple[int, int, int]] = []
    for _ in range(workers):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (task_w, result_r, *(fd for _, w, r in kids for fd in (w, r))):
                os.close(fd)
            _worker(task_r, result_w)
            os._exit(0)
        os.close(task_r)
        os.close(result_w)
        kids.append((pid, task_w, result_r))
    poller = select.epoll()
    task_of = {}
    for _, task_w, result_r in kids:
        poller.register(result_r, select.EPOLLIN)
        task_of[result_r] = task_w
    items = iter(range(n))
    in_flight = 0
    total = 0

    def send(fd: int) -> bool:
        batch = list(islice(items, chunk))
        if batch:
            data = pickle.dumps(batch, 5)
            os.write(fd, HEADER.pack(len(data)) + data)
        return bool(batch)

    start = time.perf_counter()
    for _, task_w, _ in kids:
        for _ in range(depth):
            in_flight += send(task_w)
    while in_flight:
        for fd, _ in poller.poll():
            data = os.read(fd, 1 << 18)
            pos = 0
            while pos < len(data):
                size = HEADER.unpack_from(data, pos)[0]
                total += sum(pickle.loads(data[pos + 8:pos + 8 + size]))
                pos += 8 + size
                in_flight += send(task_of[fd]) - 1
    took = time.perf_counter() - start
    for pid, task_w, result_r in kids:
        os.close(task_w)
        os.waitpid(pid, 0)
        os.close(result_r)
    poller.close()
    assert total == n * (n + 1) // 2
    return took


def main() -> int:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    for workers, chunk, depth in [(2, 32, 1), (2, 16, 2), (2, 512, 1)]:
        runs = [run(chunk=chunk, workers=workers, depth=depth) for _ in range(repeats)]
        print(f"{workers} workers x {depth} chunk(s) of {chunk} ({workers * chunk * depth} in "
              f"flight): median {statistics.median(runs) * 1e3:.0f} ms over {repeats} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
