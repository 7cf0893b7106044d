"""``Segment`` on its own: a fake backend and downstream, driven step by step as the hub does.

These tests pin what a segment does at its edges (what it sends, what it
releases, what it counts), not how it is built inside.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import pytest

from blpipe._core.failures import StageFailure
from blpipe._core.messages import Credit, Result
from blpipe._core.spec import read_stage
from blpipe._hub.flow import Failure, Flow, Record, Sink
from blpipe._hub.recorder import Recorder
from blpipe._hub.segments import Segment
from blpipe.errorlog import ErrorLog
from blpipe.errors import SerializationError, WorkerDied

pytestmark = pytest.mark.timeout(60)


class Bad:
    """An input that will not pickle."""

    def __reduce__(self) -> Any:
        raise TypeError("Bad cannot be pickled")

    def __repr__(self) -> str:
        return "Bad()"


class Place:
    left = None  # no max_tasks_per_child: a worker takes any number of calls


class FakeBackend:
    """Records what the segment hands it; ``free`` says whether ``pick`` finds a place."""

    depth = 2
    work = 0.01

    def __init__(self, bytes_per_item: int = 0) -> None:
        self.death: tuple[str, int | None] | None = None
        self.free = True
        self.bytes_per_item = bytes_per_item
        self.packed: list[list[Any]] = []
        self.credits: list[Credit | None] = []
        self.posted: list[Record] = []
        self.resumed: list[Credit] = []

    def pick(self, limit: int) -> Place | None:
        return Place() if self.free else None

    def pack(self, segment: int, payload: list[Any], place: Any,
             credit: Credit | None = None) -> tuple[Any, int | None, int]:
        if any(isinstance(x, Bad) for x in payload):
            raise TypeError("cannot pickle the chunk")
        self.packed.append(list(payload))
        self.credits.append(credit)
        return ("frame", list(payload)), None, self.bytes_per_item * len(payload)

    def post(self, place: Any, segment: Any, rec: Record) -> None:
        self.posted.append(rec)

    def resume(self, segment: Any, rec: Record, credit: Credit) -> None:
        rec.paused = None  # as the real backends do: it runs again
        self.resumed.append(credit)


class Down:
    """A downstream whose room the test controls; keeps every call in order."""

    def __init__(self, cap: int = 1000) -> None:
        self.cap = cap
        self.held = 0
        self.events: list[tuple[str, Any]] = []

    def room(self, spare: int = 0) -> int:
        return max(self.cap, spare) - self.held

    def put(self, items: list[Any]) -> None:
        self.events.append(("put", list(items)))
        self.held += len(items)

    def put_failure(self, failure: Failure) -> None:
        self.events.append(("failure", failure.exc))

    def mark(self, cut: Any) -> None:
        self.events.append(("mark", cut))

    def end(self) -> None:
        self.events.append(("end", None))

    def items(self) -> list[Any]:
        return [x for kind, xs in self.events if kind == "put" for x in xs]

    def failures(self) -> list[BaseException]:
        return [e for kind, e in self.events if kind == "failure"]

    def drain(self) -> None:
        """The consumer takes all it holds."""
        self.held = 0


class Rig(NamedTuple):
    seg: Segment
    backend: FakeBackend
    down: Any
    flow: Flow


def rig(cap: int = 4, chunks: tuple[int, int] = (2, 2), down: Any = None,
        backend: FakeBackend | None = None, expands: bool = False,
        **attrs: Any) -> Rig:
    """A segment of one stage carrying ``attrs`` (stateless unless said), as assembled."""

    def stage(x: Any) -> Any:
        return x

    attrs.setdefault("stateful", False)
    attrs.setdefault("batch_size", cap)
    for name, value in attrs.items():
        setattr(stage, name, value)
    head = read_stage(0, stage)
    flow = Flow(Recorder([head], 1, 1), ErrorLog([head], 100), None)
    backend = backend or FakeBackend()
    down = Down() if down is None else down
    seg = Segment(0, head, head.label, cap, chunks, flow, down, backend, expands=expands)
    return Rig(seg, backend, down, flow)


def done(outs: list[Any], seconds: float = 0.0, error: Any = None,
         skipped: list[Any] | None = None) -> Result:
    """A chunk's result, as a worker sends it."""
    return Result(list(outs), error, [[seconds, len(outs), -1, 0, 0]], 0.0, skipped or [])


def inflight(seg: Segment) -> int:
    return seg.figures()[0]  # as the hub reads it: in flight, peak, starved, blocked


def consume(sink: Sink) -> list[Any]:
    """What the consumer takes from the sink, all of it."""
    items = [x for chunk in sink.chunks for x in chunk]
    sink.chunks.clear()
    sink.held = 0
    return items


def sent(r: Rig) -> list[list[Any]]:
    return r.backend.packed


def test_room_falls_with_puts_and_chunks_in_flight_never_past_cap() -> None:
    r = rig(cap=4, chunks=(2, 2))
    seg = r.seg
    assert seg.room() == 4
    seg.put([1])
    seg.put([2, 3])
    assert seg.room() == 1
    seg.dispatch(False)
    assert sent(r) == [[1, 2]]
    assert (seg.room(), inflight(seg)) == (1, 2)  # one waiting, two in flight
    # a driver that respects room(): the bound holds whatever order results come in
    todo = list(range(4, 30))
    while todo or r.backend.posted:
        take = min(seg.room(), len(todo))
        seg.put(todo[:take])
        del todo[:take]
        seg.dispatch(True)
        assert 0 <= inflight(seg) <= 4
        if r.backend.posted:
            rec = r.backend.posted.pop()  # the newest first: out of order
            seg.complete(rec, done(list(range(rec.n_in))))
        seg.release()
        r.down.drain()
    assert seg.figures()[1] == 4  # peak
    assert (inflight(seg), seg.room()) == (0, 4)


def test_full_chunks_go_at_once_and_a_partial_one_only_when_final_with_room() -> None:
    r = rig(cap=8, chunks=(3, 3))
    r.seg.put([1, 2, 3, 4, 5, 6, 7])
    r.seg.dispatch(False)
    assert sent(r) == [[1, 2, 3], [4, 5, 6]]
    r.seg.dispatch(False)
    assert sent(r) == [[1, 2, 3], [4, 5, 6]]  # 7 waits for more input
    r.seg.dispatch(True)
    assert sent(r)[-1] == [7]

    full = rig(cap=4, chunks=(3, 3))
    full.seg.put([1, 2, 3, 4])
    full.seg.dispatch(True)
    assert sent(full) == [[1, 2, 3]]  # no room left: 4 waits for results, not a round trip
    full.seg.end()
    full.seg.dispatch(True)
    assert sent(full) == [[1, 2, 3], [4]]


def test_nothing_is_sent_while_no_place_is_free() -> None:
    r = rig(cap=4, chunks=(2, 2))
    r.backend.free = False
    r.seg.put([1, 2, 3])
    r.seg.dispatch(True)
    assert (sent(r), r.backend.posted, inflight(r.seg)) == ([], [], 0)
    r.backend.free = True
    r.seg.dispatch(True)
    assert sent(r) == [[1, 2], [3]]


@pytest.mark.parametrize(("per_item", "chunk"), [(1e-7, 16), (0.001, 10), (0.5, 2)])
def test_chunks_follow_the_seconds_per_item_within_bounds(per_item: float, chunk: int) -> None:
    r = rig(cap=64, chunks=(2, 16))  # the backend aims at 0.01 s of work a chunk
    r.seg.put([0, 1])
    r.seg.dispatch(False)
    r.seg.complete(r.backend.posted[0], done([0, 1], seconds=2 * per_item))
    r.seg.release()
    r.seg.put(list(range(40)))
    r.seg.dispatch(False)
    assert len(sent(r)[1]) == chunk


def test_release_is_in_input_order_and_stops_at_downstream_room() -> None:
    sink = Sink(3)
    r = rig(cap=6, chunks=(2, 2), down=sink)
    seg = r.seg
    seg.put([1, 2, 3, 4, 5, 6])
    seg.dispatch(False)
    r0, r1, r2 = r.backend.posted
    seg.complete(r2, done([50, 60]))
    seg.complete(r1, done([30, 40]))
    assert not seg.release()
    assert (sink.held, inflight(seg)) == (0, 6)
    seg.complete(r0, done([10, 20]))
    assert seg.release()
    assert consume(sink) == [10, 20, 30]  # as far as the sink has room
    assert inflight(seg) == 4  # the first chunk is out; the second only in part
    seg.release()
    assert consume(sink) == [40, 50, 60]
    assert inflight(seg) == 0


def test_unordered_stage_releases_each_chunk_as_it_finishes() -> None:
    r = rig(cap=6, chunks=(2, 2), ordered=False)
    r.seg.put([1, 2, 3, 4, 5, 6])
    r.seg.dispatch(False)
    _, r1, r2 = r.backend.posted
    r.seg.complete(r2, done([50, 60]))
    r.seg.release()
    assert (r.down.items(), inflight(r.seg)) == ([50, 60], 4)
    r.seg.complete(r1, done([30, 40]))
    r.seg.release()
    assert (r.down.items(), inflight(r.seg)) == ([50, 60, 30, 40], 2)


@pytest.mark.parametrize("how", ["fail", "result"])
def test_a_failure_waits_behind_earlier_chunks_then_closes_the_segment(how: str) -> None:
    r = rig(cap=6, chunks=(2, 2))
    seg = r.seg
    seg.put([1, 2, 3, 4, 5, 6])
    seg.dispatch(False)
    r0, r1, r2 = r.backend.posted
    boom = ValueError("boom")
    if how == "fail":
        seg.fail(r1, boom)
    else:  # the chunk's first input went through, then the stage raised
        seg.complete(r1, done([30], error=StageFailure(seg.label, 4, boom)))
    seg.complete(r2, done([50, 60]))
    seg.release()
    assert r.down.events == []  # behind the first chunk, still running
    seg.complete(r0, done([10, 20]))
    seg.release()
    kept = [("put", [30])] if how == "result" else []  # what it gave before it raised
    assert r.down.events == [("put", [10, 20]), *kept, ("failure", boom)]
    assert (seg.room(), inflight(seg)) == (0, 0)  # what came after it is gone
    seg.release()
    assert r.down.events == [("put", [10, 20]), *kept, ("failure", boom)]


def test_an_upstream_failure_goes_on_after_the_inputs_put_before_it() -> None:
    r = rig(cap=6, chunks=(2, 2))
    seg = r.seg
    seg.put([1, 2, 3])
    upstream = Failure(KeyError("upstream"))
    seg.put_failure(upstream)
    assert seg.room() == 0
    r.backend.free = False  # the inputs before it wait for a worker: so does it
    seg.dispatch(True)
    seg.release()
    assert r.down.events == []
    r.backend.free = True
    assert seg.dispatch(True)  # the failure is in the stream: something can move
    assert sent(r) == [[1, 2], [3]]  # closed: the partial chunk goes too
    for rec in r.backend.posted:
        seg.complete(rec, done([10 * x for x in range(rec.n_in)]))
    seg.release()
    assert r.down.events == [("put", [0, 10]), ("put", [0]), ("failure", upstream.exc)]


@pytest.mark.parametrize("policy", ["skip", "collect"])
def test_errors_gone_past_are_settled_on_release_until_over_budget(policy: str) -> None:
    r = rig(cap=6, chunks=(3, 3), on_error=policy, max_errors=1)
    seg, log = r.seg, r.flow.log
    seg.put([1, "x", 3, "y", 5, 6])
    seg.dispatch(False)
    r0, r1 = r.backend.posted
    bad_x, bad_y = ValueError("bad x"), ValueError("bad y")
    seg.complete(r0, done([10, None, 30], skipped=[(1, 0, 1, StageFailure(seg.label, "x",
                                                                             bad_x), 1)]))
    assert log.counts == [0]  # settled on release, not on completion
    seg.release()
    assert r.down.items() == [10, 30]
    assert log.counts == [1]
    assert [(e.position, e.input) for e in log.records] == \
        ([(1, "'x'")] if policy == "collect" else [])
    assert (r.flow.recorder.n_in, r.flow.recorder.n_out) == ([3], [2])
    # the second error is one over max_errors=1: the chunk is cut there, and fails
    seg.complete(r1, done([None, 50, 60], skipped=[(0, 0, 0, StageFailure(seg.label, "y",
                                                                            bad_y), 1)]))
    seg.release()
    assert r.down.items() == [10, 30]
    assert r.down.failures() == [bad_y]
    assert "max_errors=1" in " ".join(getattr(bad_y, "__notes__", []))
    assert seg.room() == 0


def test_window_chunks_carry_the_previous_inputs() -> None:
    r = rig(cap=8, chunks=(2, 2), stateful=3)
    r.seg.put([1, 2])
    r.seg.dispatch(True)
    assert (sent(r), inflight(r.seg)) == ([], 0)  # no full window yet: nothing to compute
    r.seg.put([3, 4, 5, 6, 7])
    r.seg.dispatch(True)
    assert sent(r) == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7]]
    assert [rec.n_in for rec in r.backend.posted] == [2, 2, 1]


def test_groups_go_whole_and_the_last_partial_group_at_end() -> None:
    r = rig(cap=8, chunks=(4, 4), group=2)
    r.seg.put([1, 2, 3])
    r.seg.dispatch(True)
    assert sent(r) == [[1, 2]]  # 3 waits for its group to fill
    r.seg.put([4, 5, 6, 7])
    r.seg.dispatch(False)
    assert sent(r) == [[1, 2], [3, 4, 5, 6]]
    r.seg.dispatch(True)
    assert sent(r) == [[1, 2], [3, 4, 5, 6]]
    r.seg.end()
    r.seg.dispatch(True)
    assert sent(r)[-1] == [7]


def test_group_wait_deadline_is_the_oldest_waiting_input_s() -> None:
    r = rig(cap=4, chunks=(2, 2), group=2, group_wait=0.3)
    seg = r.seg
    assert seg.deadline() is None
    before = time.monotonic()
    seg.put([1])
    after = time.monotonic()
    assert before + 0.3 <= (seg.deadline() or 0) <= after + 0.3
    time.sleep(0.01)
    before = time.monotonic()
    seg.put([2, 3])
    after = time.monotonic()
    seg.dispatch(True)
    assert sent(r) == [[1, 2]]
    assert before + 0.3 <= (seg.deadline() or 0) <= after + 0.3  # 3's, not 1's
    time.sleep(max(0.0, (seg.deadline() or 0) - time.monotonic()) + 0.01)
    seg.dispatch(True)
    assert sent(r) == [[1, 2], [3]]  # due: the partial group goes without end()
    assert seg.deadline() is None


def test_end_reaches_downstream_once_after_everything_is_released() -> None:
    r = rig(cap=4, chunks=(2, 2), down=Down(cap=1))
    seg = r.seg
    seg.put([1, 2])
    seg.dispatch(True)
    seg.end()
    assert r.down.events == []
    seg.complete(r.backend.posted[0], done([10, 20]))
    seg.release()
    assert r.down.events == [("put", [10])]  # 20 still held here
    r.down.drain()
    seg.release()
    seg.end()
    seg.release()
    assert r.down.events == [("put", [10]), ("put", [20]), ("end", None)]


def test_an_unpicklable_input_fails_in_its_place_after_those_before_it() -> None:
    r = rig(cap=4, chunks=(4, 4))
    seg = r.seg
    seg.put([1, 2, Bad(), 4])
    seg.dispatch(True)
    assert sent(r) == [[1, 2]]
    seg.complete(r.backend.posted[0], done([10, 20]))
    seg.release()
    assert r.down.items() == [10, 20]
    (exc,) = r.down.failures()
    assert isinstance(exc, SerializationError)
    assert "Bad()" in str(exc)
    assert seg.label in str(exc)
    assert [kind for kind, _ in r.down.events] == ["put", "failure"]


def test_a_dead_dedicated_worker_fails_the_next_input() -> None:
    r = rig(cap=4, chunks=(2, 2), stateful=True)
    seg = r.seg
    seg.put([1, 2])
    seg.dispatch(True)
    r.backend.death = (seg.label, -9)
    seg.put(["next"])
    assert seg.dispatch(True)
    assert sent(r) == [[1, 2]]
    seg.complete(r.backend.posted[0], done([10, 20]))
    seg.release()
    assert r.down.items() == [10, 20]
    (exc,) = r.down.failures()
    assert isinstance(exc, WorkerDied)
    assert exc.exitcode == -9
    assert exc.input_repr is not None
    assert exc.input_repr.startswith("'next'")


def test_bytes_in_flight_follow_chunks_out_and_results_in() -> None:
    r = rig(cap=4, chunks=(2, 2), backend=FakeBackend(bytes_per_item=100))
    seg, meter = r.seg, r.flow.meter
    seg.put([1, 2, 3, 4])
    seg.dispatch(False)
    assert meter.now == 400
    r0, r1 = r.backend.posted
    seg.complete(r1, done([30, 40]), nbytes=50)
    assert meter.now == 250  # its inputs' 200 bytes are replaced by its results' 50
    seg.release()
    assert meter.now == 250  # held behind the first
    seg.complete(r0, done([10, 20]), nbytes=30)
    assert meter.now == 80
    seg.release()
    assert (meter.now, meter.peak) == (0, 400)


def test_an_expansion_releases_its_parts_and_resumes_once_downstream_took_them() -> None:
    r = rig(cap=4, chunks=(1, 1), down=Down(cap=100), expands=True, expand=True)
    seg = r.seg
    seg.put([1])
    seg.dispatch(True)
    (credit,) = r.backend.credits
    assert credit is not None
    (rec,) = r.backend.posted
    seg.extend(rec, ["a", "b"], [], 0)
    seg.release()
    assert r.down.items() == ["a", "b"]  # a part goes on before the chunk is done
    rec.paused = 1  # its worker filled the credit, and waits (see Procs._on_part)
    seg.extend(rec, list(range(credit.outputs)), [], 0)
    seg.release()  # downstream takes 98 of them: too many still held to go on
    assert r.backend.resumed == []
    r.down.drain()
    seg.release()
    assert len(r.backend.resumed) == 1  # half its credit is free
    assert 0 < r.backend.resumed[0].outputs <= credit.outputs
    r.down.drain()
    seg.release()
    assert len(r.backend.resumed) == 1
    seg.complete(rec, done(["z"]))
    r.down.drain()
    seg.release()
    assert r.down.items() == ["a", "b", *range(credit.outputs), "z"]
    assert inflight(seg) == 0


def test_samples_count_starved_and_blocked_seconds() -> None:
    r = rig(cap=4, chunks=(2, 2), down=Down(cap=0))
    seg = r.seg
    # each sample's seconds go to what the segment was doing at the sample before
    assert not seg.sample(1.0, True)  # busy (the start); now empty while input may come
    seg.sample(0.25, False)  # starved; now empty with the stream over: not starved
    seg.sample(0.5, True)  # not counted; now starved again
    seg.put([1, 2])
    seg.dispatch(True)
    assert seg.sample(0.125, True)  # starved; now working
    seg.sample(2.0, True)  # not counted
    seg.complete(r.backend.posted[0], done([10, 20]))
    seg.release()  # downstream has no room
    seg.sample(3.0, True)  # not counted; now blocked
    seg.sample(0.0625, True)  # blocked
    _, _, starved, blocked = seg.figures()
    assert starved == pytest.approx(0.25 + 0.125)
    assert blocked == pytest.approx(0.0625)
