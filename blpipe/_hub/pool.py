"""Worker groups: the shared pool, and links of dedicated workers. Both are segment backends.

The pool's workers serve every pool segment. A :class:`Link` is the dedicated
workers of adjacent stateful stages, each writing its outputs straight into
the next one's task pipe, the last one writing the results to the hub: a
chunk leaves the caller once and comes back once.

When a pool worker dies it is replaced: the chunk it was running fails with
``WorkerDied``, the chunks queued behind it go to other workers. A linked
worker takes its stage's state with it, so its segment fails every chunk it
holds, and its next input as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.failures import StageFailure
from .._core.keyed import KeyBook
from .._core.messages import Adopt, Credit, Flush, Role, Snapshot
from .._core.text import short_repr
from .._core.transport import Frame, dumps, dumps_stage
from ..errors import WorkerDied
from .executors import Spread
from .procs import Procs
from .rerun import late_call, rerun
from .spawn import KILL_AFTER, Worker

if TYPE_CHECKING:
    from .._core.spec import StageSpec
    from .flow import Cut, Record
    from .segments import Segment

_PER_WORKER = 2  # chunks queued per pool worker: one running, one ready behind it
_CHUNK_WORK = 0.0002  # seconds of stage work a chunk aims at


class _Group:
    """Worker processes that a segment sends chunks to, through ``procs``."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs

    def pack(self, segment: int, payload: list[Any], worker: Worker,
             credit: Credit | None = None) -> tuple[Frame, int | None, int]:
        return self.procs.pack(segment, payload, worker, credit)

    def post(self, worker: Worker, segment: Segment, rec: Record) -> None:
        self.procs.post(worker, segment, rec)

    def resume(self, segment: Segment, rec: Record, credit: Credit) -> None:
        self.procs.resume(segment, rec, credit)


class Pool(_Group, Spread[Worker]):
    """The shared pool's workers; pool segments send to the first ``n_active`` of them."""

    depth = _PER_WORKER
    work = _CHUNK_WORK
    death: tuple[str, int | None] | None = None  # never set: a pool worker holds no state

    def __init__(self, procs: Procs, blob: bytes, label: str, size: int,
                 max_tasks: int | None = None, timed: bool = False,
                 hooked: bool = False) -> None:
        super().__init__(procs)
        self.blob = blob
        self.label = label
        self.workers: list[Worker] = []
        self.places: list[Worker] = []  # the first n_active workers: they get chunks
        self.n_active = size
        self.size = size
        self.max_tasks = max_tasks
        self.timed = timed  # a pool stage has a timeout: its workers get clocks
        self.hooked = hooked  # a pool stage has setup() or teardown()
        for i in range(size):
            self._add(i)

    def _add(self, index: int) -> None:
        """Start worker ``index`` (a new one, or in place of one that left)."""
        worker, _ = self.procs.spawn(self.blob, self.label, timed=self.timed,
                                     hooked=self.hooked, replica=(index, self.size))
        worker.group = self
        worker.left = self.max_tasks
        self.workers.append(worker)
        self.resize(self.n_active)

    def post(self, worker: Worker, segment: Segment, rec: Record) -> None:
        """Post; with ``max_tasks_per_child``, count the calls: a worker that
        has taken its share is replaced, and exits once it has finished them."""
        self.procs.post(worker, segment, rec)
        if self.max_tasks is None:
            return
        g = segment.group or 1
        left = worker.left
        assert left is not None  # a pool worker's, with max_tasks_per_child
        worker.left = max(0, left - -(-rec.n_in // g))
        if worker.left == 0 and worker in self.workers:
            self.workers.remove(worker)
            self._add(worker.replica)
            self.procs.flow.recorder.restarts += 1

    def last(self, segment: int) -> list[tuple[Worker, Flush]]:
        return []  # a stage that keeps state never runs in the shared pool

    def resize(self, n: int) -> None:
        """Send to the first ``n`` workers only; the others finish what they hold."""
        self.n_active = n
        self.places[:] = self.workers[:n]

    def died(self, worker: Worker, exitcode: int | None) -> None:
        """Replace it, to keep the pool's size: earlier items may still need it
        downstream. The chunk it was running fails; the ones queued behind it
        never started, nor did those sent after it died, so other workers take them."""
        procs = self.procs
        if worker in self.workers:  # else it was retired, and replaced then
            self.workers.remove(worker)
            if not procs.closing:
                self._add(worker.replica)
                procs.flow.recorder.restarts += 1
        # What it held paused goes with it: those chunks fail, as the one it ran,
        # and so do paused ones whose Resume was queued: they began on it.
        queued = list(worker.pending)[1:]
        began = [*worker.paused, *(p for p in queued if p[1].expanding is not None)]
        pending = [*began, *list(worker.pending)[:1],
                   *(p for p in queued if p[1].expanding is None)]
        first = len(began)
        worker.pending.clear()
        worker.paused.clear()
        for i, (segment, rec) in enumerate(pending):
            if i <= first:
                late = worker.late[1] if worker.late and worker.late[0] is rec else None
                if not (i == first and not procs.closing and
                        rerun(self, segment, rec, exitcode, late)):
                    procs.fail(segment, rec, WorkerDied(segment.label, exitcode, rec.where())
                               if late is None else late_call(segment, rec, late, "its worker "
                                                              "was killed"))
            else:
                self.post(self.pick(self.depth + 1) or self.workers[0], segment, rec)
        for segment, rec in worker.unsent:
            self.post(self.pick(self.depth + 1) or self.workers[0], segment, rec)
        worker.unsent.clear()


def fail_held(procs: Procs, worker: Worker, died: Callable[[Record], BaseException]) -> None:
    """Fail every chunk a dead worker of state held: the one whose call ran late
    with its timeout, the others with ``died(rec)``."""
    held = [*worker.paused, *worker.pending, *worker.unsent]
    worker.pending.clear()
    worker.unsent.clear()
    worker.paused.clear()
    late = worker.late
    for segment, rec in held:
        procs.fail(segment, rec, late_call(segment, rec, late[1])
                   if late is not None and late[0] is rec else died(rec))


class Link(_Group):
    """The dedicated workers of one segment, each feeding the next; the hub feeds the first."""

    work = _CHUNK_WORK

    def __init__(self, procs: Procs, blobs: list[bytes], labels: list[str],
                 expands: bool = False, timed: bool = False,
                 hooked: tuple[bool, ...] = ()) -> None:
        super().__init__(procs)
        self.workers: list[Worker] = []
        self.feeding: list[Worker] = []  # the one the hub sends to, while it lives
        # A worker of it died: which stage's, and how. Its state is lost, so
        # whatever comes next fails.
        self.death: tuple[str, int | None] | None = None
        relay = None  # the write end of the next worker's task pipe
        for i in range(len(blobs) - 1, -1, -1):
            worker, feeder = procs.spawn(blobs[i], labels[i], Role.of(i, len(blobs)), relay,
                                         timed, bool(hooked) and hooked[i])
            if relay is not None:
                relay.close()  # the worker before it holds it now: its exit is an EOF
            relay = feeder
            worker.group = self
            self.workers.append(worker)
        self.workers.reverse()
        for w in self.workers[1:]:
            w.pending = self.workers[0].pending  # what goes in first comes out of the last
        self.feeding.append(self.workers[0])
        # one chunk in each worker, one waiting; but a stage that expands may pause
        # a chunk midway, and the next must not run before it ends: its state
        # sees its inputs in order
        self.depth = 1 if expands else len(blobs) + 1

    def last(self, segment: int) -> list[tuple[Worker, Flush]]:
        return [(w, Flush(segment)) for w in self.feeding[:1]]  # flush(): alone in its link

    def snapshot(self, segment: Segment, cut: Cut) -> None:
        """A checkpoint's cut comes after the chunks sent so far: each worker
        sends its stage's ``State`` once it has run them, in order."""
        if not self.feeding:
            return  # it died: the chunk after fails, and the cut never completes
        cut.waiting.update((i, 0) for i in range(segment.first, segment.last + 1))
        self.procs.send(self.feeding[0], dumps(Snapshot(segment.index)))

    def pick(self, limit: int) -> Worker | None:
        for w in self.feeding:
            if len(w.pending) + len(w.paused) < limit:  # see depth
                return w
        return None

    def died(self, worker: Worker, exitcode: int | None) -> None:
        """Its state is lost: fail what the link holds, once its last worker is gone."""
        if worker in self.feeding:
            self.feeding.remove(worker)
        self._blame(worker, exitcode)
        assert self.death is not None  # _blame set it
        label, code = self.death
        last = self.workers[-1]
        if worker is not last and last in self.procs.workers:
            # The linked workers after it finish what reached them, then see
            # end of file and end: the chunks still owed fail when the last does.
            return
        first = self.workers[0].label if len(self.workers) > 1 else None
        fail_held(self.procs, worker, lambda rec: WorkerDied(label, code, rec.where() if first is
                                                             None else f"{short_repr(rec.first)} "
                                                             f"to {first} or one after it (its "
                                                             f"chunk went through linked stages)"))

    def _blame(self, worker: Worker, exitcode: int | None) -> None:
        """Note which of its workers ended the others, and how.

        A worker after the one that died sees end of file and exits cleanly,
        and its end may be noticed first: the first worker before it that
        failed is the one to name.
        """
        if self.death is not None and self.death[1] != 0:
            return
        self.death = worker.label, exitcode
        for w in self.workers:
            if w is worker:
                break
            code = w.proc.exitcode
            if code is None and exitcode == 0:  # its end may not be reaped yet
                w.proc.join(KILL_AFTER)
                code = w.proc.exitcode
            if code not in (None, 0):
                self.death = w.label, code
                break


class Replicas(Pool):
    """``replicas = n`` copies of a stateful stage, each in a worker of its own;
    each chunk goes to whichever is least busy. A copy's state dies with its
    worker, so a death fails what it held and, as for a dedicated stage, the
    next input: nothing is run again, nor is a worker replaced."""

    def __init__(self, procs: Procs, blob: bytes, label: str, size: int,
                 timed: bool = False, hooked: bool = False) -> None:
        super().__init__(procs, blob, label, size, None, timed, hooked)

    def _add(self, index: int) -> None:
        worker, _ = self.procs.spawn(self.blob, f"{self.label}, replica {index}",
                                     timed=self.timed, hooked=self.hooked,
                                     replica=(index, self.size))
        worker.group = self
        self.workers.append(worker)
        self.resize(self.n_active)

    def last(self, segment: int) -> list[tuple[Worker, Flush]]:
        return [(w, Flush(segment)) for w in self.places]

    def died(self, worker: Worker, exitcode: int | None) -> None:
        if worker in self.places:
            self.places.remove(worker)
        if self.death is None:
            self.death = worker.label, exitcode
        fail_held(self.procs, worker, lambda rec: WorkerDied(worker.label, exitcode, rec.where()))


class KeyedReplicas(Replicas):
    """A keyed stage's replicas: each input goes alone to the replica that owns
    its key (``hash(key) % n``); the hub's :class:`~blpipe._core.keyed.KeyBook`
    retires idle keys, each with a ``Flush`` right after the input that left it
    idle, and flushes the live ones at the end, in the order they came."""

    def __init__(self, procs: Procs, blob: bytes, spec: StageSpec, segment: int, label: str,
                 size: int, hooked: bool = False) -> None:
        super().__init__(procs, blob, label, size, spec.timeout is not None, hooked)
        assert spec.key is not None
        self.segment = segment
        self.key = spec.key
        self.book = KeyBook(spec.key_idle, spec.max_keys, spec.label)
        # a resume's copies, each sent to its key's replica before anything of its key
        self.adopt: dict[Any, Any] = {}
        if spec.resumed is not None:
            self.adopt, book = spec.resumed
            self.book.restore(book)
        self.routed: tuple[Worker, list[Any]] | BaseException | None = None

    def snapshot(self, segment: Segment, cut: Cut) -> None:
        """A cut after the inputs sent so far: the book of keys now, and each
        replica's copies once it has run them."""
        stage = segment.first
        cut.keyed[stage] = [dumps_stage(self.adopt)]  # the copies no replica has yet
        cut.books[stage] = self.book.state()
        for w in self.places:
            cut.waiting.add((stage, w.replica))
            self.procs.send(w, dumps(Snapshot(segment.index)))

    def owner(self, key: Any) -> Worker:
        """The replica of ``key``, which is sent its copy from a resume first."""
        worker = self.workers[hash(key) % self.size]
        if self.adopt and key in self.adopt:
            blob = dumps_stage(self.adopt.pop(key))
            self.procs.send(worker, dumps(Adopt(self.segment, key, blob)))
        return worker

    def pack(self, segment: int, payload: list[Any], worker: Worker,
             credit: Credit | None = None) -> tuple[Frame, int | None, int]:
        """Pack the chunk's one input for the replica that owns its key."""
        try:
            key = self.key(payload[0])
            worker = self.owner(key)
            self.routed = worker, self.book.see(key)
        except Exception as e:  # the key's function, or one key too many: that input's error
            self.routed = StageFailure(self.book.label, payload[0], e).exception()
            return (b"", b""), None, 0
        return self.procs.pack(segment, payload, worker, credit)

    def post(self, worker: Worker, segment: Segment, rec: Record) -> None:
        routed, self.routed = self.routed, None
        if rec.n_in == 0:  # a flush()
            self.procs.post(worker, segment, rec)
        elif isinstance(routed, BaseException):
            segment.fail(rec, routed)
        else:
            assert routed is not None  # packed just before
            owner, retired = routed
            self.procs.post(owner, segment, rec)
            for key in retired:
                segment.post_last(self.owner(key), dumps(Flush(segment.index, (key,))))

    def last(self, segment: int) -> list[tuple[Worker, Flush]]:
        return [(self.owner(k), Flush(segment, (k,))) for k in self.book.live()]
