"""Keyed state: ``key = fn`` on a stateful stage gives each key its own copy of the stage.

The hub reads each input's key, keeps the book of live keys (:class:`KeyBook`)
and sends the input to the replica that owns the key, one input per chunk;
the replica's :class:`Keyed` calls that key's copy, made from the stage as it
was built when the key first comes. Calls for one key so run one at a time,
in input order, and the outputs leave in input order like any stage's::

    hub: key(x) ─► KeyBook.see ─► replica hash(key) % n ══ Task ══► Keyed: copies[key](x)
                        │ keys idle for more than key_idle inputs
                        └─► Flush(key) to their replica, right after x: their flush(), then gone

At the end of the input every live key is flushed, in the order the keys
first came. ``SequentialPipeline`` runs the same book and the same copies in
one process (:class:`InOrder`), and is the reference.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .options import count
from .stage import hook_of, hooks_of
from .text import short_repr


def keyed_attrs(where: str, func: object, kind: str | None,
                group: int | None) -> tuple[Any, int | None, int | None]:
    """A stage's ``key``, ``key_idle`` and ``max_keys``, validated; ``kind``
    names the stage's placement when it is not a dedicated one."""
    key = getattr(func, "key", None)
    idle, most = getattr(func, "key_idle", None), getattr(func, "max_keys", None)
    if key is None or (kind is not None and not callable(key)):
        for name, value in (("key_idle", idle), ("max_keys", most)):
            if value is not None:
                raise ValueError(f"{where}: {name}={value!r} bounds the keys of a keyed "
                                 f"stage, but this stage has no key; set key = fn (the "
                                 f"key of an input), or delete {name}")
        return None, None, None
    if not callable(key):
        raise TypeError(f"{where}: key={short_repr(key)} is not callable; key must be a "
                        f"function of an input that returns its key, such as "
                        f"operator.itemgetter('user')")
    if kind is not None:
        raise ValueError(f"{where}: key={short_repr(key)} gives each key its own copy of a "
                         f"stateful stage, in processes of its own, but this one is {kind}; "
                         f"delete key, or make the stage stateful (stateful = True)")
    if group is not None:
        raise ValueError(f"{where}: key and group={group} do not go together: a group "
                         f"would mix keys; delete group")
    return (key, None if idle is None else count(where, "key_idle", idle, 1, " (or None)"),
            None if most is None else count(where, "max_keys", most, 1, " (or None)"))


class KeyBook:
    """The live keys of a keyed stage, as the inputs come: which to retire, and when.

    >>> book = KeyBook(idle=2, most=None, label="stage 1 (Session())")
    >>> book.see("a"), book.see("b"), book.see("b"), book.see("b")
    ([], [], [], ['a'])
    >>> book.live()
    ['b']
    """

    def __init__(self, idle: int | None, most: int | None, label: str) -> None:
        self.idle = idle
        self.most = most
        self.label = label
        self.n = 0  # inputs seen
        self.recent: OrderedDict[Any, int] = OrderedDict()  # key -> its last input, oldest first
        self.first: dict[Any, int] = {}  # the live keys, in the order they came: their inputs

    def see(self, key: Any) -> list[Any]:
        """Input ``n`` has ``key``: the other keys it leaves idle for more than
        ``idle`` inputs, to retire after it. Raises when ``key`` would be one
        live key too many."""
        i = self.n
        self.n += 1
        new = self.recent.pop(key, None) is None
        retired = []
        if self.idle is not None:
            while self.recent:
                oldest, last = next(iter(self.recent.items()))
                if i - last <= self.idle:
                    break
                del self.recent[oldest]
                del self.first[oldest]
                retired.append(oldest)
        if new and self.most is not None and len(self.recent) >= self.most:
            raise RuntimeError(f"{self.label}: key {key!r} would be live key number "
                               f"{self.most + 1}, over max_keys={self.most}; raise max_keys, "
                               f"or set key_idle so that idle keys are retired")
        self.recent[key] = i
        self.first[key] = self.first.get(key, 0) + 1
        return retired

    def live(self) -> list[Any]:
        """The live keys, in the order they first came."""
        return list(self.first)

    def figures(self) -> tuple[int, tuple[str, int] | None]:
        """Its live keys, and the one with the most inputs: its ``repr``, its inputs."""
        first = dict(self.first)  # read from another thread: copied in one step
        top = max(first.items(), key=lambda kv: kv[1], default=None)
        return len(first), None if top is None else (short_repr(top[0]), top[1])

    def state(self) -> tuple[int, list[tuple[Any, int]], list[tuple[Any, int]]]:
        """What a checkpoint keeps of it."""
        return self.n, list(self.recent.items()), list(self.first.items())

    def restore(self, state: tuple[int, list[tuple[Any, int]], list[tuple[Any, int]]]) -> None:
        self.n = state[0]
        self.recent = OrderedDict(state[1])
        self.first = dict(state[2])


class Keyed:
    """A replica's copies of a keyed stage, one per key it owns.

    A copy is made from the stage as it was built (``template``), without the
    resources its ``setup()`` made, which every copy shares. ``flush()``
    flushes and retires the keys in ``pending`` (all of them when it is
    ``None``), each copy's outputs in turn.
    """

    def __init__(self, template: Any, key: Callable[[Any], Any]) -> None:
        self.template = template
        self.key = key
        self.copies: dict[Any, Any] = {}
        self.pending: tuple[Any, ...] | None = None
        self.resources: dict[str, Any] = {}

    def copy_for(self, k: Any) -> Any:
        c = self.copies.get(k)
        if c is None:
            state = getattr(self.template, "__dict__", None)
            if state is not None and self.resources:  # copied without, then shared
                twin = copy.copy(self.template)
                for name in self.resources:
                    twin.__dict__.pop(name, None)
                c = copy.deepcopy(twin)
                c.__dict__.update(self.resources)
            else:
                c = copy.deepcopy(self.template)
            self.copies[k] = c
        return c

    def __call__(self, x: Any) -> Any:
        return self.copy_for(self.key(x))(x)

    def setup(self) -> None:
        setup = hooks_of(self.template)[0]
        if setup is not None:
            state = getattr(self.template, "__dict__", {})
            before = dict(state)
            setup()
            self.resources = {k: v for k, v in state.items()
                              if k not in before or before[k] is not v}

    def adopt(self, key: Any, c: Any) -> None:
        """Take ``key``'s copy from a checkpoint: it comes without the resources."""
        if hasattr(c, "__dict__"):
            c.__dict__.update(self.resources)
        self.copies[key] = c

    def saved(self) -> dict[Any, Any]:
        """Each key's copy, without the resources they share: what a checkpoint keeps."""
        out = {}
        for k, c in self.copies.items():
            if self.resources and hasattr(c, "__dict__"):
                c = copy.copy(c)
                for name in self.resources:
                    c.__dict__.pop(name, None)
            out[k] = c
        return out

    def teardown(self) -> None:
        teardown = hooks_of(self.template)[1]
        if teardown is not None:
            teardown()

    def flush(self) -> Iterator[Any]:
        keys: Iterable[Any] = list(self.copies) if self.pending is None else self.pending
        self.pending = None
        for k in keys:
            c = self.copies.pop(k, None)
            f = None if c is None else hook_of(c, "flush")
            if f is not None:
                yield from f() or ()


class InOrder(Keyed):
    """A keyed stage in one process, as ``SequentialPipeline`` runs it: each
    call returns its copy's output, then the outputs of the keys it retired."""

    def __init__(self, template: Any, key: Callable[[Any], Any], idle: int | None,
                 most: int | None, label: str, expand: bool) -> None:
        super().__init__(template, key)
        self.book = KeyBook(idle, most, label)
        self.expand = expand

    def __call__(self, x: Any) -> Any:
        k = self.key(x)
        retired = self.book.see(k)
        y = self.copy_for(k)(x)
        out = list(y or ()) if self.expand else [y]
        if retired:
            self.pending = tuple(retired)
            out += self.flush()
        return out

    def flush(self) -> Iterator[Any]:
        if self.pending is None:  # the end: every live key, in the order they came
            self.pending = tuple(k for k in self.book.live() if k in self.copies)
        return super().flush()
