"""Moving objects between processes: pickling and framed pipe I/O.

Items go through the C ``pickle`` first and fall back to dill only for what it
cannot handle (lambdas, local classes), because dill's pickler is pure Python
and many times slower. Stages always go through dill with ``recurse=True``, so
functions that use names of ``__main__`` work under spawn; the settings are
passed per call and the user's global dill settings are left alone.

A frame is an 8-byte little-endian header, ``(length << 2) | flags``,
followed by the payload: the pickle, made by dill when ``flags & 1``; with
``flags & 2``, a pickle of ``(meta, pickle)`` whose large buffers wait in
shared memory (:mod:`blpipe._core.shm`). Workers block on their pipes. The hub
never does: it writes through an :class:`Outbox` and reads through an
:class:`Inbox`, both non-blocking, so it cannot deadlock against a worker
that is itself blocked writing a large result. Both sides read as much as a
pipe holds at once and split it into frames, so frames queued together cost
one system call, not two each.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import dill

from .shm import Slots, Views, out_of_band_bytes, pickle_out_of_band

PROTOCOL = 5
_DILL = 1
_OUT_OF_BAND = 2
HEADER = struct.Struct("<Q")
READ_SIZE = 1 << 18
_IOV_MAX = 512

Frame = tuple[bytes, bytes]  # (header, payload)


def dumps(obj: Any) -> Frame:
    """Pickle ``obj`` into a frame, with dill when plain pickle cannot."""
    try:
        payload = pickle.dumps(obj, PROTOCOL)
        flag = 0
    except Exception:
        payload = dill.dumps(obj, protocol=PROTOCOL, recurse=True)
        flag = _DILL
    return HEADER.pack(len(payload) << 2 | flag), payload


def dumps_chunk(obj: Any, slots: Slots | None) -> tuple[Frame, int | None, int]:
    """Like :func:`dumps`, with large buffers through one of ``slots``.

    Returns the frame, the id of the slot it uses, to be released once the
    receiver has loaded the frame, and its size in bytes, slot included.
    """
    if slots is None:
        frame = dumps(obj)
        return frame, None, len(frame[1])
    try:
        data, meta = pickle_out_of_band(obj, slots)
    except Exception:
        frame = dumps(obj)
        return frame, None, len(frame[1])
    if meta is None:
        return (HEADER.pack(len(data) << 2), data), None, len(data)
    payload = pickle.dumps((meta, data), PROTOCOL)
    return ((HEADER.pack(len(payload) << 2 | _OUT_OF_BAND), payload), meta[1],
            len(payload) + out_of_band_bytes(meta))


def first_unpicklable(values: list[Any]) -> tuple[int, Exception] | None:
    """The first of ``values`` that cannot be pickled alone, and why; ``None``
    when each can (then only their combination fails)."""
    for j, x in enumerate(values):
        try:
            dumps(x)
        except Exception as why:
            return j, why
    return None


def dumps_stage(obj: Any) -> bytes:
    """Pickle a stage by value where needed (dill, ``recurse=True``)."""
    return dill.dumps(obj, protocol=PROTOCOL, recurse=True)  # type: ignore[no-any-return]


def loads_stage(data: bytes) -> Any:
    return dill.loads(data)


def loads(header: int, payload: bytes | bytearray | memoryview, views: Views | None = None) -> Any:
    """Unpickle a frame's payload; ``header`` is the decoded header word.

    ``views`` maps the sender's slots for a frame with out-of-band buffers;
    it raises :class:`~blpipe._core.shm.SlotGone` when the sender has exited.
    """
    if header & _OUT_OF_BAND:
        meta, data = pickle.loads(payload)
        return (views or Views()).load(data, meta)
    return (dill.loads if header & _DILL else pickle.loads)(payload)


# -- blocking side (workers) -------------------------------------------------

def write_frame(fd: int, frame: Frame) -> None:
    """Write a whole frame, blocking."""
    views = [memoryview(frame[0]), memoryview(frame[1])]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


# -- non-blocking side (the parent) ------------------------------------------

class Outbox:
    """Frames waiting to be written to a non-blocking pipe."""

    __slots__ = ("fd", "_views", "waiting")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._views: deque[memoryview] = deque()
        self.waiting = False  # registered with the Poller until the pipe takes the rest

    def __bool__(self) -> bool:
        return bool(self._views)

    def put(self, frame: Frame) -> bool:
        """Queue a frame and write what the pipe takes; ``True`` when all is out.

        Raises ``BrokenPipeError`` when the reader is gone.
        """
        views = self._views
        if not views:  # the common case: one writev, no views made
            try:
                n = os.writev(self.fd, frame)
            except BlockingIOError:
                n = 0
            head, payload = frame
            if n == len(head) + len(payload):
                return True
            if n < len(head):
                views.append(memoryview(head)[n:])
                n = 0
            else:
                n -= len(head)
            views.append(memoryview(payload)[n:])
            return False
        views.append(memoryview(frame[0]))
        views.append(memoryview(frame[1]))
        return self.flush()

    def flush(self) -> bool:
        """Write what the pipe takes now; ``True`` when nothing is left.

        Raises ``BrokenPipeError`` when the reader is gone.
        """
        views = self._views
        while views:
            try:
                n = os.writev(self.fd, list(views)[:_IOV_MAX])
            except BlockingIOError:
                return False
            while views and n >= len(views[0]):
                n -= len(views.popleft())
            if n:
                views[0] = views[0][n:]
        return True


class Inbox:
    """Reassembles frames from a pipe: non-blocking (:meth:`read`, the hub's)
    or blocking (:meth:`next`, a worker's)."""

    __slots__ = ("fd", "eof", "_into", "_view", "_buf", "_body", "_got", "_word", "_ready")

    def __init__(self, fd: int, into: bytearray | None = None) -> None:
        self.fd = fd
        self.eof = False
        # What each read fills. os.read(fd, 256 KiB) would allocate that much
        # each time, past glibc's mmap threshold: an mmap, an mremap to shrink
        # it and a munmap a read, as many system calls as the round trip itself.
        # The inboxes one thread reads share ``into``: each frame is copied out.
        self._into = bytearray(READ_SIZE) if into is None else into
        self._view = memoryview(self._into)
        self._buf = bytearray()  # the start of a frame, until the rest comes
        self._body: bytearray | None = None  # a large frame being read in place
        self._got = 0
        self._word = 0
        self._ready: deque[tuple[int, bytes | bytearray]] = deque()  # for next()

    def read(self) -> list[tuple[int, bytes | bytearray]]:
        """Every complete frame readable now, without blocking."""
        frames: list[tuple[int, bytes | bytearray]] = []
        try:
            while not self.eof and self._fill(frames):
                pass
        except BlockingIOError:
            pass
        return frames

    def next(self) -> tuple[int, bytes | bytearray] | None:
        """The next frame, blocking; ``None`` at end of file."""
        ready = self._ready
        while not ready:
            if self.eof:
                return None
            frames: list[tuple[int, bytes | bytearray]] = []
            self._fill(frames)
            ready.extend(frames)
        return ready.popleft()

    def _fill(self, frames: list[tuple[int, bytes | bytearray]]) -> bool:
        """One read; ``True`` when the pipe may hold more right now.

        A short read means the pipe was empty: reading again would only
        say so, at the price of a system call.
        """
        if self._body is not None:
            view = memoryview(self._body)
            n = os.readv(self.fd, [view[self._got:]])
            if n == 0:
                self.eof = True
                return False
            self._got += n
            if self._got == len(self._body):
                frames.append((self._word, self._body))
                self._body = None
                return True
            return False
        n = os.readv(self.fd, [self._view])
        if not n:
            self.eof = True
            return False
        buf = self._buf
        if buf:
            buf += self._view[:n]
            del buf[:self._split(buf, frames, len(buf))]
        else:  # the common case: whole frames, split straight from what was read
            pos = self._split(self._into, frames, n)
            if pos < n:
                buf += self._view[pos:n]
        return n == READ_SIZE or self._body is not None

    def _split(self, data: bytearray, frames: list[tuple[int, bytes | bytearray]],
               end: int) -> int:
        """Append the whole frames in ``data[:end]``, each a copy (``data`` is
        filled again by the next read); how much they took."""
        pos = 0
        size = HEADER.size
        unpack = HEADER.unpack_from
        while end - pos >= size:
            word = unpack(data, pos)[0]
            start = pos + size
            stop = start + (word >> 2)
            if stop <= end:
                frames.append((word, data[start:stop]))
                pos = stop
            elif stop - start > READ_SIZE:  # read the rest straight into its own buffer
                body = bytearray(stop - start)
                body[:end - start] = data[start:end]
                self._body, self._got, self._word = body, end - start, word
                return end
            else:
                break
        return pos


class Poller:
    """The hub's one wait: the descriptors that are ready, each with its handler.

    ``select.epoll`` where there is one, else ``select.poll``; without the
    ``selectors`` module's key objects, which cost a microsecond a wait.
    """

    READ = select.POLLIN
    WRITE = select.POLLOUT

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = self._epoll or select.poll()
        self._handlers: dict[int, Callable[[], None]] = {}

    def fileno(self) -> int | None:
        return self._epoll.fileno() if self._epoll is not None else None

    def register(self, fd: int, events: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._poll.register(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, KeyError):  # already closed
                self._poll.unregister(fd)

    def poll(self, timeout: float | None) -> list[Callable[[], None]]:
        """The handlers of what is ready, waiting up to ``timeout`` seconds."""
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        else:
            events = self._poll.poll(None if timeout is None else timeout * 1000)
        handlers = self._handlers
        return [handlers[fd] for fd, _ in events if fd in handlers]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        self._handlers.clear()
