"""The floor under a bound: W1's round trips with nothing but pickle, pipes and epoll.

``python benchmarks/floor.py`` forks workers that each take a chunk of ints
from a pipe, add 1 to each and send the chunk back, the parent keeping
``workers * chunk * depth`` items in flight, as blpipe's ``batch_size``
does, and consuming the results with ``sum``. No bookkeeping at all: what it
takes is what the round trips themselves cost on this host, which blpipe,
bounded the same way, cannot beat.

``python benchmarks/floor.py [REPEATS] [--workers W --chunk C --depth D] [--json PATH]``
runs each configuration REPEATS times (default 7) and prints the medians;
``--json`` also writes every run's seconds. The benchmark harness runs the
same loop as its ``floor`` system (``run.py --floor``), with the outputs
released in input order (:func:`round_trips` with ``ordered=True``) and the
forks and joins inside the timed region.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import select
import statistics
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import chain, islice

HEADER = struct.Struct("<Q")
CONFIGURATIONS = [(2, 32, 1), (2, 16, 2), (2, 512, 1)]  # (workers, chunk, depth)

Kid = tuple[int, int, int]  # pid, the task pipe's write end, the result pipe's read end


def _worker(task: int, result: int) -> None:
    while head := os.read(task, HEADER.size):
        size = HEADER.unpack(head)[0]
        data = b""
        while len(data) < size:
            data += os.read(task, size - len(data))
        out = pickle.dumps([x + 1 for x in pickle.loads(data)], 5)
        os.write(result, HEADER.pack(len(out)) + out)


def start(workers: int) -> list[Kid]:
    """Fork ``workers`` workers, each with a pipe to it and one back."""
    kids: list[Kid] = []
    for _ in range(workers):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (task_w, result_r, *(fd for _, w, r in kids for fd in (w, r))):
                os.close(fd)
            try:
                _worker(task_r, result_w)
            finally:
                os._exit(0)
        os.close(task_r)
        os.close(result_w)
        kids.append((pid, task_w, result_r))
    return kids


def stop(kids: list[Kid]) -> None:
    """Close the workers' task pipes (they exit at end of file) and join them."""
    for pid, task_w, result_r in kids:
        os.close(task_w)
        os.waitpid(pid, 0)
        os.close(result_r)


def round_trips(kids: list[Kid], items: Iterable[int], chunk: int, depth: int,
                ordered: bool = False) -> Iterator[list[int]]:
    """Yield the chunks of outputs, keeping ``depth`` chunks in flight per worker.

    Unordered, a chunk is released as it arrives; ``ordered``, in input order,
    and a chunk counts as in flight until it is released, as under blpipe's
    bound. Either way a worker gets its next chunk when one of its chunks is
    released.
    """
    poller = select.epoll()
    task_of = {}
    sent: dict[int, collections.deque[int]] = {}  # per worker, the chunks it has, in order
    for _, task_w, result_r in kids:
        poller.register(result_r, select.EPOLLIN)
        task_of[result_r] = task_w
        sent[result_r] = collections.deque()
    items = iter(items)
    seq = due = in_flight = 0
    pending: dict[int, tuple[list[int], int]] = {}
    rest: dict[int, bytes] = {}  # a message cut short by a read

    def send(fd: int) -> int:
        nonlocal seq
        batch = list(islice(items, chunk))
        if not batch:
            return 0
        data = pickle.dumps(batch, 5)
        os.write(task_of[fd], HEADER.pack(len(data)) + data)
        sent[fd].append(seq)
        seq += 1
        return 1

    # Each read fills one buffer: os.read(fd, 256 KiB) would allocate that much past
    # glibc's mmap threshold, an mmap, mremap and munmap a read (blpipe's Inbox does the same).
    into = memoryview(bytearray(1 << 18))
    try:
        for _ in range(depth):  # round robin, so that input order alternates between workers
            for _, _, result_r in kids:
                in_flight += send(result_r)
        while in_flight:
            for fd, _ in poller.poll():
                data: bytes | memoryview = into[:os.readv(fd, [into])]
                if fd in rest:
                    data = rest.pop(fd) + bytes(data)
                pos = 0
                while pos + HEADER.size <= len(data):
                    end = pos + HEADER.size + HEADER.unpack_from(data, pos)[0]
                    if end > len(data):
                        break
                    outs = pickle.loads(data[pos + HEADER.size:end])
                    pos = end
                    key = sent[fd].popleft()
                    pending[key if ordered else due] = (outs, fd)
                    while due in pending:
                        outs, kid = pending.pop(due)
                        due += 1
                        in_flight += send(kid) - 1
                        yield outs
                if pos < len(data):
                    rest[fd] = bytes(data[pos:])
    finally:
        poller.close()


def run(n: int = 200_000, chunk: int = 32, workers: int = 2, depth: int = 1) -> float:
    """Seconds to take ``n`` ints through ``workers`` workers, ``depth`` chunks each
    (the round trips only: the forks and joins are not timed)."""
    kids = start(workers)
    try:
        t0 = time.perf_counter()
        total = sum(chain.from_iterable(round_trips(kids, range(n), chunk, depth)))
        took = time.perf_counter() - t0
    finally:
        stop(kids)
    assert total == n * (n + 1) // 2
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", type=int, nargs="?", default=7, help="runs per configuration")
    parser.add_argument("--workers", type=int, help="run one configuration: this many workers")
    parser.add_argument("--chunk", type=int, help="... chunks of this many items")
    parser.add_argument("--depth", type=int, help="... this many chunks in flight per worker")
    parser.add_argument("--n", type=int, default=200_000, help="items (default 200,000)")
    parser.add_argument("--json", help="write every run's seconds and the medians here")
    args = parser.parse_args(argv)
    configurations = CONFIGURATIONS
    if (args.workers, args.chunk, args.depth) != (None, None, None):
        configurations = [(args.workers or 2, args.chunk or 32, args.depth or 1)]
    results = []
    for workers, chunk, depth in configurations:
        runs = [run(args.n, chunk, workers, depth) for _ in range(args.repeats)]
        median = statistics.median(runs)
        results.append({"workers": workers, "chunk": chunk, "depth": depth,
                        "in_flight": workers * chunk * depth, "seconds": runs,
                        "median_seconds": median})
        print(f"{workers} workers x {depth} chunk(s) of {chunk} ({workers * chunk * depth} in "
              f"flight): median {median * 1e3:.0f} ms over {args.repeats} runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "repeats": args.repeats, "configurations": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
