"""Framed pipe I/O: frames split across reads, several per read, large ones, partial writes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from blpipe._core.transport import (
    HEADER,
    Inbox,
    Outbox,
    dumps,
    first_unpicklable,
    loads,
    write_frame,
)

pytestmark = pytest.mark.timeout(10)


class Pipe:
    """A pipe whose ends are closed once, by the test or after it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.open = {self.r, self.w}

    def close(self, fd: int) -> None:
        self.open.discard(fd)
        os.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    for fd in list(p.open):
        p.close(fd)


def decode(frames: list[tuple[int, Any]]) -> list[Any]:
    return [loads(word, payload) for word, payload in frames]


def test_frames_split_across_reads(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(r, False)
    data = b"".join(b"".join(dumps(("msg", i))) for i in range(3))
    inbox = Inbox(r)
    got: list[Any] = []
    for i in range(len(data)):  # one byte at a time: every split point
        os.write(w, data[i:i + 1])
        got += decode(inbox.read())
    assert got == [("msg", 0), ("msg", 1), ("msg", 2)]
    assert inbox.read() == []  # nothing more, and no blocking
    pipe.close(w)
    assert inbox.read() == []
    assert inbox.eof


def test_several_frames_in_one_read(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(r, False)
    for i in range(50):
        write_frame(w, dumps(i))
    assert decode(Inbox(r).read()) == list(range(50))


def test_a_large_frame_is_read_into_its_own_buffer(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(r, False)
    big = bytes(range(256)) * 8192  # 2 MiB, more than a pipe holds
    writer = threading.Thread(target=write_frame, args=(w, dumps(big)))
    writer.start()
    inbox = Inbox(r)
    got: list[Any] = []
    while not got:
        got = decode(inbox.read())
    writer.join()
    assert got == [big]


def test_blocking_next_reads_frames_in_order_then_none(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w

    def write() -> None:
        for i in range(5):
            write_frame(w, dumps(i))
        write_frame(w, dumps(b"x" * 300_000))  # larger than one read, and than the pipe
        pipe.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    inbox = Inbox(r)
    got = []
    while (frame := inbox.next()) is not None:
        got.append(loads(*frame))
    writer.join()
    assert got == [0, 1, 2, 3, 4, b"x" * 300_000]
    assert inbox.next() is None


def test_outbox_keeps_what_a_full_pipe_refuses(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(w, False)
    out = Outbox(w)
    frames = [dumps(bytes([i]) * 40_000) for i in range(4)]  # more than 64 KiB in all
    done = [out.put(f) for f in frames]
    assert not done[-1]
    assert out
    inbox = Inbox(r)
    os.set_blocking(r, False)
    got: list[Any] = []
    while out or len(got) < 4:
        got += decode(inbox.read())
        out.flush()
    assert got == [bytes([i]) * 40_000 for i in range(4)]


def test_outbox_to_a_closed_reader_raises(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    pipe.close(r)
    with pytest.raises(BrokenPipeError):
        Outbox(w).put(dumps(1))


def test_header_holds_length_and_flags() -> None:
    head, payload = dumps(lambda x: x)  # only dill can: flag 1
    word = HEADER.unpack(head)[0]
    assert word >> 2 == len(payload)
    assert word & 1


def test_first_unpicklable() -> None:
    gen = (i for i in range(1))
    assert first_unpicklable([1, "a", None]) is None
    bad = first_unpicklable([1, gen, 2])
    assert bad is not None
    assert bad[0] == 1
    assert isinstance(bad[1], Exception)
