"""Stages for the tests, at module level so that every start method can load them."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

BIG = 1_000_003

# The attributes that make a stage of each kind, for tests that try every kind.
KINDS: dict[str, dict[str, Any]] = {
    "pool": {"stateful": False},
    "window": {"stateful": 2},
    "dedicated": {"stateful": True},
    "master": {"run_in_master": True},
    "thread": {"stateful": False, "threads": 3},
    "thread-window": {"stateful": 2, "threads": 2},
}


def kind_attrs(kind: str, batch_size: int) -> dict[str, Any]:
    """The attributes of a stage of ``kind``, with ``batch_size`` unless it runs in the
    caller (where batches do not apply)."""
    attrs = KINDS[kind]
    return {**attrs} if "run_in_master" in attrs else {**attrs, "batch_size": batch_size}


class Attrs:
    """A stage whose blpipe attributes are set from keyword arguments."""

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Add:
    """Stateless: ``x + k``."""

    stateful = False

    def __init__(self, k: int, batch_size: int = 1) -> None:
        self.k = k
        self.batch_size = batch_size

    def __call__(self, x: int) -> int:
        return (x + self.k) % BIG


class DropMultiples:
    """Stateless filter: ``None`` for multiples of ``m``."""

    stateful = False

    def __init__(self, m: int, batch_size: int = 1) -> None:
        self.m = m
        self.batch_size = batch_size

    def __call__(self, x: int) -> int | None:
        return None if x % self.m == 0 else x


class RunningSum:
    """Stateful: the sum so far (dedicated process)."""

    def __init__(self, batch_size: int = 1) -> None:
        self.total = 0
        self.batch_size = batch_size

    def __call__(self, x: int) -> int:
        self.total = (self.total + x) % BIG
        return self.total


class Weighted:
    """Window of ``k``: an order-sensitive sum, so a misordered window shows."""

    def __init__(self, k: int, batch_size: int = 1) -> None:
        self.stateful = k
        self.batch_size = batch_size

    def __call__(self, w: tuple[int, ...]) -> int:
        return sum((i + 1) * v for i, v in enumerate(w)) % BIG


class MasterScale:
    """Runs in the caller; optionally windowed (then it sums the window)."""

    run_in_master = True

    def __init__(self, k: int, window: int | None = None) -> None:
        self.k = k
        if window is not None:
            self.stateful = window

    def __call__(self, x: Any) -> int:
        if isinstance(x, tuple):
            return (sum(x) * self.k) % BIG
        return (x * self.k + 1) % BIG


class Pid(Attrs):
    """Stateless by default: tags the item with the pid that handled it."""

    def __init__(self, name: str, **attrs: Any) -> None:
        super().__init__(**{"stateful": False, **attrs})
        self.name = name

    def __call__(self, item: Any) -> Any:
        if isinstance(item, tuple) and item and isinstance(item[0], tuple):
            item = item[-1]  # a window of tagged items: keep the newest
        x, trace = item if isinstance(item, tuple) else (item, ())
        return x, (*trace, (self.name, os.getpid()))


class FailAt(Attrs):
    """Raises ``ValueError(f"bad {x}", x)`` on ``x == at``, or on every multiple of
    ``every``; else returns ``x`` (a window: its newest input)."""

    def __init__(self, at: int | None = None, *, every: int | None = None,
                 **attrs: Any) -> None:
        super().__init__(**attrs)
        self.at = at
        self.every = every

    def __call__(self, x: Any) -> Any:
        value = x[-1] if isinstance(x, tuple) else x
        if value == self.at or (self.every is not None and value % self.every == 0):
            raise ValueError(f"bad {value}", value)
        return value


class DieAt(Attrs):
    """Ends its own process on ``x == at``: ``exit`` code, or a signal when negative."""

    def __init__(self, at: int, code: int, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.at = at
        self.code = code

    def __call__(self, x: Any) -> Any:
        x = x[-1] if isinstance(x, tuple) else x  # a window: its newest input
        if x == self.at:
            if self.code < 0:
                os.kill(os.getpid(), -self.code)
                time.sleep(5)
            os._exit(self.code)
        return x


class Stamp(Attrs):
    """Tags an item with when each stage finished it: ``(x, (t0, t1, ...))``."""

    def __call__(self, item: Any) -> tuple[Any, tuple[float, ...]]:
        x, times = item if isinstance(item, tuple) else (item, ())
        time.sleep(0.001)
        return x, (*times, time.monotonic())


class Sleepy(Attrs):
    """Sleeps ``seconds`` on input ``at`` (every input when ``at`` is None)."""

    def __init__(self, seconds: float, at: int | None = None, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.seconds = seconds
        self.at = at

    def __call__(self, x: Any) -> Any:
        if self.at is None or x == self.at:
            time.sleep(self.seconds)
        return x


class Segfault:
    """Crashes its process with SIGSEGV on ``x == at``."""

    stateful = False

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, x: int) -> int:
        if x == self.at:
            import ctypes
            import faulthandler

            faulthandler.disable()  # inherited from pytest under fork; the crash is expected
            ctypes.string_at(0)  # reads address 0
        return x


def slow_identity(x: int) -> int:
    time.sleep(0.001)
    return x


slow_identity.stateful = False  # type: ignore[attr-defined]
slow_identity.batch_size = 4  # type: ignore[attr-defined]

SIGKILL = -signal.SIGKILL


class Blob:
    """A buffer that pickles out of band (as NumPy arrays do) and whose rebuild
    keeps the buffer it is given, so an aliased shared memory slot would show."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        if protocol >= 5:
            import pickle
            return Blob._rebuild, (pickle.PickleBuffer(self.data),)
        return Blob, (self.data,)

    @staticmethod
    def _rebuild(buf: Any) -> Blob:
        blob = Blob.__new__(Blob)
        blob.data = buf  # whatever the unpickler passed: no copy
        return blob

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and bytes(self.data) == bytes(other.data)

    def __hash__(self) -> int:
        return hash(bytes(self.data))


class Echo:
    """Returns its input; ``stateful`` and ``batch_size`` as given."""

    def __init__(self, stateful: Any = False, batch_size: int = 1) -> None:
        self.stateful = stateful
        self.batch_size = batch_size

    def __call__(self, x: Any) -> Any:
        return x


class Measure:
    """Stateless: a large buffer's length and first byte, with the worker's pid."""

    stateful = False

    def __init__(self, batch_size: int = 1) -> None:
        self.batch_size = batch_size

    def __call__(self, x: Any) -> tuple[int, int, int]:
        return len(x), x[0], os.getpid()


class Newest:
    """Window of ``k``: returns the newest input of the window."""

    def __init__(self, k: int, batch_size: int = 1) -> None:
        self.stateful = k
        self.batch_size = batch_size

    def __call__(self, w: tuple[Any, ...]) -> Any:
        return w[-1]


class Spin(Attrs):
    """Burns ``seconds`` of CPU per input (no sleeping), then returns it."""

    def __init__(self, seconds: float, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.seconds = seconds

    def __call__(self, x: Any) -> Any:
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return x


class Same(Attrs):
    """Returns its input untouched (a window: its newest input)."""

    def __call__(self, x: Any) -> Any:
        return x[-1] if type(getattr(self, "stateful", True)) is int else x


class Hostile:
    """An item that refuses ``==``, ``bool()`` and ``hash()``: blpipe must never ask."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __eq__(self, other: object) -> bool:
        raise TypeError("Hostile refuses ==")

    def __bool__(self) -> bool:
        raise TypeError("Hostile refuses bool()")

    def __repr__(self) -> str:
        return f"Hostile({self.tag})"


class Full4(Attrs):
    """``np.full(4, x)``: an array item, as in a user's first NumPy pipeline."""

    def __call__(self, x: int) -> Any:
        import numpy as np

        return np.full(4, x)


class Total(Attrs):
    """The sum of an array item, as a plain int."""

    def __call__(self, a: Any) -> int:
        return int(a.sum())


def _refuse(what: str) -> Any:
    raise ImportError(f"{what} cannot be rebuilt here")


class LoadsNowhere:
    """A stage that pickles, but cannot be rebuilt in a worker process."""

    def __init__(self, stateful: bool) -> None:
        self.stateful = stateful

    def __reduce__(self) -> Any:
        return _refuse, ("LoadsNowhere",)

    def __call__(self, x: Any) -> Any:
        return x


class UnpicklesNowhere:
    """An item that pickles, but cannot be rebuilt on the other side."""

    def __reduce__(self) -> Any:
        return _refuse, ("UnpicklesNowhere",)

    def __repr__(self) -> str:
        return "UnpicklesNowhere()"


class Expand(Attrs):
    """Expands ``x`` into ``x % k`` outputs, lazily (none for multiples of ``k``),
    with a ``None`` after the first, which must be dropped."""

    def __init__(self, k: int, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.k = k

    def __call__(self, x: Any) -> Any:
        x = x[-1] if type(x) is tuple else x  # a window: its newest input
        for j in range(x % self.k):
            yield (x * 7 + j) % BIG
            if j == 0:
                yield None


class GroupSum(Attrs):
    """Called with groups of ``n``: an order-sensitive sum and the size, so a
    group cut anywhere else shows."""

    def __init__(self, n: int, **attrs: Any) -> None:
        super().__init__(group=n, **attrs)

    def __call__(self, g: list[int]) -> int:
        return (sum((i + 1) * v for i, v in enumerate(g)) * 31 + len(g)) % BIG


class GroupEach(Attrs):
    """Batch inference: a group in, one output per member out (``None`` for
    multiples of 5), each marked with its group's size."""

    def __init__(self, n: int, **attrs: Any) -> None:
        super().__init__(group=n, expand=True, **attrs)

    def __call__(self, g: list[int]) -> list[int | None]:
        return [None if v % 5 == 0 else (v * 3 + len(g)) % BIG for v in g]


class Forever(Attrs):
    """Expands every input without end: ``size`` bytes at a time."""

    def __init__(self, size: int = 8, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.size = size

    def __call__(self, x: Any) -> Any:
        n = 0
        while True:
            yield n.to_bytes(8, "little") + bytes(self.size - 8) if self.size > 8 else n
            n += 1


class BreaksMidway(Attrs):
    """Expands ``x`` into ``x*10, x*10 + 1`` then raises on ``x == at``; else a third."""

    def __init__(self, at: int, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.at = at

    def __call__(self, x: int) -> Any:
        yield x * 10
        yield x * 10 + 1
        if x == self.at:
            raise ValueError(f"bad {x}", x)
        yield x * 10 + 2


class Long(Attrs):
    """Expands ``x`` into ``n`` outputs ``x*10_000 + j``, at once (so a worker reads
    them in blocks), each 97th a ``None``; then raises on ``x == at``."""

    def __init__(self, n: int, at: int | None = None, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.n = n
        self.at = at

    def __call__(self, x: int) -> Any:
        for j in range(self.n):
            yield None if j % 97 == 5 else x * 10_000 + j
        if x == self.at:
            raise ValueError(f"bad {x}", x)


class GroupFails(Attrs):
    """A group's sum; raises on a group that holds ``at``."""

    def __init__(self, n: int, at: int, **attrs: Any) -> None:
        super().__init__(group=n, **attrs)
        self.at = at

    def __call__(self, g: list[int]) -> int:
        if self.at in g:
            raise ValueError(f"bad group {g}")
        return sum(g)


class DiesExpanding(Attrs):
    """Expands each input into 3 outputs, but ends its process midway through ``at``'s."""

    def __init__(self, at: int, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.at = at

    def __call__(self, x: int) -> Any:
        yield x * 10
        if x == self.at:
            os._exit(3)
        yield x * 10 + 1
        yield x * 10 + 2


class DiesInGroup(Attrs):
    """A group's sum; ends its process on a group that holds ``at``."""

    def __init__(self, n: int, at: int, **attrs: Any) -> None:
        super().__init__(group=n, **attrs)
        self.at = at

    def __call__(self, g: list[int]) -> int:
        if self.at in g:
            os._exit(3)
        return sum(g)


def triple_each(g: list[int]) -> list[int]:
    """For a group: each member times 3, whatever the group's size."""
    return [v * 3 for v in g]


class Tally(Attrs):
    """Stateful and expanding: each input three times, with a count of the
    outputs so far, kept as they are made: a chunk run while another was
    paused midway would show in the counts."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(expand=True, **attrs)
        self.n = 0

    def __call__(self, x: Any) -> Any:
        for _ in range(3):
            self.n += 1
            yield self.n, x


class Flaky(Attrs):
    """Raises ``error`` on the first ``fails`` calls for each input, then ``x * 10``;
    counts the calls in files under ``tally``, so that every process sees them.
    With ``expand``, yields ``x`` then ``x * 10``, raising before the first (or,
    with ``late``, after it)."""

    def __init__(self, tally: str, fails: int = 2, error: type[Exception] = ConnectionError,
                 expand: bool = False, late: bool = False, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.tally, self.fails, self.error, self.late = tally, fails, error, late
        if expand:
            self.expand = True

    def calls(self, x: Any) -> int:
        path = os.path.join(self.tally, str(x))
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return int(f.read())

    def _tries(self, x: Any) -> int:
        n = self.calls(x) + 1
        with open(os.path.join(self.tally, str(x)), "w") as f:
            f.write(str(n))
        return n

    def __call__(self, x: Any) -> Any:
        if getattr(self, "expand", False):
            return self._expand(x)
        if self._tries(x) <= self.fails:
            raise self.error(f"try {self.calls(x)} on {x}")
        return x * 10

    def _expand(self, x: Any) -> Any:
        n = self._tries(x)
        if not self.late and n <= self.fails:
            raise self.error(f"try {n} on {x}")
        yield x
        if self.late and n <= self.fails:
            raise self.error(f"try {n} on {x}, after an output")
        yield x * 10


class Poison(Attrs):
    """Stateless: ``x * 2``, but crashes its process with SIGSEGV on the inputs in
    ``bad`` (a window: its newest; a group: its first). With ``tally``, each call
    appends a byte to a file named after its input there; with ``once``, an
    input crashes only on its first call."""

    def __init__(self, bad: frozenset[int] | set[int], tally: str | None = None,
                 once: bool = False, **attrs: Any) -> None:
        super().__init__(**{"stateful": False, **attrs})
        self.bad = frozenset(bad)
        self.tally = tally
        self.once = once

    def runs(self, x: Any) -> int:
        path = os.path.join(self.tally or "", str(x))
        return os.path.getsize(path) if os.path.exists(path) else 0

    def __call__(self, x: Any) -> Any:
        key = x[-1] if isinstance(x, tuple) else x[0] if isinstance(x, list) else x
        if self.tally is not None:
            with open(os.path.join(self.tally, str(key)), "a") as f:
                f.write(".")
        if key in self.bad and not (self.once and self.runs(key) > 1):
            import ctypes
            import faulthandler

            faulthandler.disable()  # inherited from pytest under fork; the crash is expected
            ctypes.string_at(0)
        return x * 2 if isinstance(x, int) else x


class Hang(Attrs):
    """``x * 2``, but on the inputs in ``bad`` the call never returns: it sleeps
    (``how="sleep"``) or spins in pure Python (``"spin"``), until the file
    ``release`` exists (for calls in this process's threads, which cannot be
    killed)."""

    def __init__(self, bad: frozenset[int] | set[int], how: str = "sleep",
                 release: str | None = None, **attrs: Any) -> None:
        super().__init__(**{"stateful": False, **attrs})
        self.bad = frozenset(bad)
        self.how = how
        self.release = release

    def __call__(self, x: Any) -> Any:
        key = x[-1] if isinstance(x, tuple) else x[0] if isinstance(x, list) else x
        if key in self.bad:
            release = self.release
            if self.how == "sleep":
                while not (release and os.path.exists(release)):
                    time.sleep(0.05)
            else:
                n = 0
                while not (release and n % 100_000 == 0 and os.path.exists(release)):
                    n += 1
        return x * 2 if isinstance(x, int) else x
