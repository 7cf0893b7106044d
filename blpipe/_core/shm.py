"""Large buffers through shared memory instead of the pipe.

Pickling a 1 MiB ``bytes`` and pushing it through a pipe copies it four
times, and ``pickle.dumps`` alone costs about 0.5 ms for it. Instead, the
large buffers of a chunk (top-level ``bytes``, ``bytearray`` and
``memoryview`` items, and whatever pickles its data out of band under
protocol 5, such as NumPy arrays) are copied once into a *slot*, and the pipe
carries only a small pickle that says where they are. The receiver copies
each buffer once more into the object it rebuilds, so it never aliases a slot
that is about to be reused.

A slot is an anonymous ``memfd`` owned by the sender; the receiver maps it
through ``/proc/<pid>/fd/<n>``. Nothing gets a name in ``/dev/shm``, so a
process that dies, even by SIGKILL, leaves nothing behind: the kernel frees
the memory when the last process that maps it is gone. A slot is reused once
the receiver is done with it: the parent knows that when the chunk's result
arrives, and a worker learns it from the ids the parent returns with its next
task. Slots of up to ``BIG`` bytes are kept for reuse, and receivers keep them
mapped; a larger one is closed as soon as it is released, and a worker that
loads a chunk from one says so at once, so that memory held for huge items
does not outlive them. Without ``memfd`` (not Linux) everything goes through
the pipe.
"""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

LARGE = 1 << 16  # bytes: a buffer this large goes through a slot
_MIN_SLOT = 1 << 20
BIG = 8 << 20  # a slot larger than this is not kept once released, nor kept mapped
AVAILABLE = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")

_BUFFERS = (bytes, bytearray, memoryview)

# Buffers whose rebuild below copies them; any other out-of-band buffer is
# copied before it is handed to its own rebuild function, which may keep it.
_ours: set[int] = set()


class _Large:
    """A large top-level buffer item, pickled out of band."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        buf = pickle.PickleBuffer(self.obj)
        _ours.add(id(buf))
        return _REBUILD[type(self.obj)], (buf,)


def _as_memoryview(buf: Any) -> memoryview:
    return memoryview(bytearray(buf))


_REBUILD: dict[type, Any] = {bytes: bytes, bytearray: bytearray, memoryview: _as_memoryview}


def mark_large(items: list[Any], every: bool = False) -> list[Any]:
    """``items`` with its large buffers wrapped to travel out of band.

    Only the first and last items are looked at unless one of them is a
    buffer, so a chunk of small items pays two type checks. ``every`` wraps
    every buffer, and memoryviews of any size, which plain pickle refuses.
    """
    if not items:
        return items
    if not every and type(items[0]) not in _BUFFERS and type(items[-1]) not in _BUFFERS:
        return items
    if every:
        return [_Large(x) if type(x) in _BUFFERS and _contiguous(x)
                and (type(x) is memoryview or _nbytes(x) >= LARGE) else x for x in items]
    return [_Large(x) if type(x) in _BUFFERS and _nbytes(x) >= LARGE and _contiguous(x) else x
            for x in items]


def _nbytes(x: Any) -> int:
    return x.nbytes if type(x) is memoryview else len(x)


def _contiguous(x: Any) -> bool:
    return type(x) is not memoryview or (x.c_contiguous and x.format in ("B", "b", "c"))


_tuned = False


def tune_malloc() -> None:
    """Have glibc reuse freed buffers of up to ``BIG`` bytes, and give larger
    ones back to the system at once; in this process, once.

    glibc returns the top of its heap to the system when more than its trim
    threshold is free there, and a chunk of large items freed together does
    just that, so the next chunk's buffers fault their pages in again: 3,000
    items of 1 MiB took 750,000 page faults in the calling process, 1.5 s
    against 0.2 s. And past its mmap threshold, which glibc raises as large
    blocks are freed, blocks of tens of MiB would stay in the heap once freed.
    Fixed thresholds (8 MiB mmap, 64 MiB trim) avoid both. Best effort: other
    C libraries have no ``mallopt``.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, BIG)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 * BIG)  # M_TRIM_THRESHOLD
    except Exception:
        pass


class Slot:
    """A shared memory region owned by this process."""

    __slots__ = ("id", "fd", "cap", "map")

    def __init__(self, ident: int, cap: int) -> None:
        self.id = ident
        self.fd = os.memfd_create(f"blpipe-{ident}", os.MFD_CLOEXEC)
        self.cap = 0
        self.map: mmap.mmap | None = None
        self.grow(cap)

    def grow(self, need: int) -> None:
        if need <= self.cap:
            return
        cap = max(_MIN_SLOT, 1 << (need - 1).bit_length())
        os.ftruncate(self.fd, cap)
        if self.map is not None:
            self.map.close()
        self.map = mmap.mmap(self.fd, cap)
        self.cap = cap

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


class Slots:
    """The slots a process sends from: reused once released."""

    def __init__(self) -> None:
        self._free: list[Slot] = []
        self._used: dict[int, Slot] = {}
        self._next = 0

    def acquire(self, need: int) -> Slot:
        free = self._free
        slot = None
        for s in free:  # the smallest that fits, else the largest
            if s.cap >= need and (slot is None or s.cap < slot.cap):
                slot = s
        if slot is None and free:
            slot = max(free, key=lambda s: s.cap)
        if slot is None:
            self._next += 1
            slot = Slot(self._next, need)
        else:
            free.remove(slot)
            slot.grow(need)
        self._used[slot.id] = slot
        return slot

    def release(self, ident: int) -> None:
        slot = self._used.pop(ident, None)
        if slot is not None:
            if slot.cap > BIG:
                slot.close()
            else:
                self._free.append(slot)

    def close(self) -> None:
        for s in (*self._free, *self._used.values()):
            s.close()
        self._free.clear()
        self._used.clear()


def pickle_out_of_band(obj: Any, slots: Slots) -> tuple[bytes, Any]:
    """Pickle ``obj`` with its large buffers in a slot.

    Returns the pickle and ``meta``, which tells :meth:`Views.load` where the
    buffers are (the slot's id is ``meta[1]``), or ``None`` when there was
    nothing large. Raises what ``pickle.dumps`` raises.
    """
    buffers: list[tuple[memoryview, bool]] = []

    def collect(buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: in band
            return True
        if view.nbytes < LARGE:
            return True
        buffers.append((view, id(buf) not in _ours))
        return False

    try:
        data = pickle.dumps(obj, 5, buffer_callback=collect)
    finally:
        _ours.clear()
    if not buffers:
        return data, None
    slot = slots.acquire(sum(v.nbytes for v, _ in buffers))
    view = memoryview(slot.map)  # type: ignore[arg-type]
    places = []
    pos = 0
    for buf, copy in buffers:
        n = buf.nbytes
        view[pos:pos + n] = buf
        places.append((pos, n, copy))
        pos += n
    view.release()
    return data, (os.getpid(), slot.id, slot.fd, slot.cap, places)


def out_of_band_bytes(meta: Any) -> int:
    """The bytes a chunk's large buffers take in its slot."""
    return sum(n for _, n, _ in meta[4])


class SlotGone(OSError):
    """The sender of a chunk exited before its buffers were read."""


class Views:
    """The slots of other processes that this one has mapped, kept for reuse."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int], mmap.mmap] = {}
        self.last: tuple[int, int] | None = None  # the slot the last load read
        self.nbytes = 0  # and how many bytes it read there

    def load(self, data: bytes | bytearray | memoryview, meta: Any) -> Any:
        pid, ident, fd, cap, places = meta
        self.last = pid, ident
        self.nbytes = out_of_band_bytes(meta)
        m = self._maps.get((pid, ident))
        if m is None or len(m) < cap:
            if m is not None:
                m.close()
            try:
                f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
            except OSError as e:
                raise SlotGone(f"process {pid} exited before its data was read") from e
            try:
                m = mmap.mmap(f, cap, prot=mmap.PROT_READ)
            finally:
                os.close(f)
            if cap <= BIG:
                self._maps[(pid, ident)] = m
        views = [memoryview(m)[a:a + n] for a, n, _ in places]
        try:
            return pickle.loads(data, buffers=[bytearray(v) if copy else v for v, (_, _, copy)
                                               in zip(views, places, strict=True)])
        finally:
            for v in views:  # so that the map can be closed or remapped later
                v.release()
            if cap > BIG:
                m.close()

    def forget(self, pid: int) -> None:
        """Unmap the slots of a process that is gone."""
        for key in [k for k in self._maps if k[0] == pid]:
            self._maps.pop(key).close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
