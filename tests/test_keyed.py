"""Keyed state: ``key = fn`` on a stateful stage, each key its own copy, over replicas."""

from __future__ import annotations

import operator
import os
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blpipe import Pipeline, SequentialPipeline, WorkerDied, stage
from tests.helpers import SLOW_AND_LARGE, START_METHODS

pytestmark = pytest.mark.timeout(180)


class Session:
    """Per key: counts its inputs and keeps them; flush() gives them all."""

    key = operator.itemgetter(0)
    batch_size = 8

    def __init__(self, replicas: int | None = 2, key_idle: int | None = None,
                 max_keys: int | None = None, flush: bool = True) -> None:
        self.replicas = replicas
        self.key_idle = key_idle
        self.max_keys = max_keys
        self.seen: list[int] = []
        if not flush:
            self.flush = None  # type: ignore[assignment]

    def setup(self) -> None:
        self.model = object()  # a resource: every key's copy shares it

    def __call__(self, x: tuple[str, int]) -> Any:
        self.seen.append(x[1])
        return x[0], len(self.seen), os.getpid(), id(self.model)

    def flush(self) -> Any:
        return [("end", tuple(self.seen))]


def strip(y: Any) -> Any:
    """What does not depend on the process: the key, and the count or the inputs."""
    return y if y[0] == "end" else y[:2]


def run(cls: type, stages: list[Any], data: list[Any], **kw: Any) -> list[Any]:
    with cls([*stages, stage(strip, run_in_master=True)], **kw) as p:
        return list(p.apply(data))


@pytest.mark.parametrize("method", START_METHODS)
@settings(max_examples=20, deadline=None, suppress_health_check=SLOW_AND_LARGE)
@given(keys=st.lists(st.sampled_from("abcdefg"), max_size=80),
       replicas=st.integers(1, 3), idle=st.one_of(st.none(), st.integers(1, 6)),
       flush=st.booleans(), batch=st.integers(1, 9))
def test_the_oracle(method: str, keys: list[str], replicas: int, idle: int | None,
                    flush: bool, batch: int) -> None:
    data = [(k, i) for i, k in enumerate(keys)]

    def fresh() -> list[Any]:
        s = Session(replicas, idle, flush=flush)
        s.batch_size = batch
        return [s]

    want = run(SequentialPipeline, fresh(), data)
    assert run(Pipeline, fresh(), data, n_cpu=replicas + 1, start_method=method) == want


def test_each_key_sees_its_inputs_in_order_on_one_replica(start_method: str) -> None:
    data = [("abc"[i % 3 if i % 7 else 0], i) for i in range(90)]
    with Pipeline([Session(replicas=2)], n_cpu=3, start_method=start_method) as p:
        outs = list(p.apply(data))
        st_ = p.statistics().stages[0]
    calls = [y for y in outs if y[0] != "end"]
    ends = [y for y in outs if y[0] == "end"]
    assert [k for k, *_ in calls] == [k for k, _ in data]  # in global input order
    pids: dict[str, set[int]] = defaultdict(set)
    models: dict[int, set[int]] = defaultdict(set)
    for k, _, pid, model in calls:
        pids[k].add(pid)
        models[pid].add(model)
    assert all(len(p) == 1 for p in pids.values())  # a key stays on its replica
    assert all(len(m) == 1 for m in models.values())  # a replica's copies share the resource
    per_key = {k: tuple(i for kk, i in data if kk == k) for k in "abc"}
    # flushed at the end in the order the keys came, each with its inputs in order
    assert ends == [("end", per_key[k]) for k in "abc"]
    assert st_.workers == 2
    assert st_.peak_in_flight <= 8


def test_idle_keys_are_retired_after_their_flush() -> None:
    data = [("a", 0), ("b", 1), ("b", 2), ("b", 3), ("a", 4)]
    got = run(Pipeline, [Session(key_idle=2)], data, n_cpu=3)
    assert got == [("a", 1), ("b", 1), ("b", 2), ("b", 3), ("end", (0,)), ("a", 1),
                   ("end", (1, 2, 3)), ("end", (4,))]
    assert got == run(SequentialPipeline, [Session(key_idle=2)], data)


def test_too_many_keys_is_a_clear_error_after_the_outputs_before_it() -> None:
    data = [(str(i), i) for i in range(10)]
    got: list[Any] = []
    with Pipeline([Session(max_keys=4, flush=False)], n_cpu=3) as p, \
            pytest.raises(RuntimeError, match=r"key '4' would be live key number 5, over "
                                              r"max_keys=4; raise max_keys, or set key_idle"):
        got.extend(p.apply(data))
    assert [y[0] for y in got] == ["0", "1", "2", "3"]
    assert len(run(Pipeline, [Session(max_keys=2, key_idle=1)],
                   [(str(i % 5), i) for i in range(30)], n_cpu=2)) == 30 + 30


def test_a_key_function_that_raises_fails_that_input() -> None:
    class Odd(Session):
        key = staticmethod(lambda x: x[0] if x[1] != 3 else 1 / 0)

    got: list[Any] = []
    with Pipeline([Odd(flush=False)], n_cpu=3) as p, \
            pytest.raises(ZeroDivisionError) as info:
        got.extend(p.apply([("a", i) for i in range(6)]))
    assert len(got) == 3
    assert "on input ('a', 3)" in " ".join(info.value.__notes__)


class Dies(Session):
    def __call__(self, x: tuple[str, int]) -> Any:
        if x[1] == 20:
            os.kill(os.getpid(), 9)
        return super().__call__(x)


def test_a_replica_death_fails_the_stage_naming_it(start_method: str) -> None:
    got: list[Any] = []
    with Pipeline([Dies()], n_cpu=3, start_method=start_method) as p, \
            pytest.raises(WorkerDied, match=r"stage 0 \(Dies\(\)\), replica [01]"):
        got.extend(p.apply([("ab"[i % 2], i) for i in range(60)]))
    assert len(got) <= 20


@pytest.mark.parametrize(("attrs", "error", "words"), [
    ({"key": "user"}, TypeError, "key='user' is not callable"),
    ({"key": abs, "stateful": False}, ValueError, "is stateless"),
    ({"key": abs, "run_in_master": True}, ValueError, "is run_in_master"),
    ({"key": abs, "group": 2, "batch_size": 2}, ValueError, "key and group=2"),
    ({"key_idle": 3}, ValueError, "has no key"),
    ({"key": abs, "max_keys": 0}, ValueError, "max_keys=0"),
])
def test_bad_values(attrs: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        stage(abs, **attrs)


def test_a_checkpoint_resumes_on_other_replicas(tmp_path: Any) -> None:
    """Stopped after a checkpoint, resumed on 3 replicas where 2 ran: each key goes
    on from its saved copy, idle keys retire at the same inputs, and the output
    cut back to the checkpoint's token equals an uninterrupted run."""
    ckpt = tmp_path / "ckpt"
    data = [("abcdefg"[(i * 5) % 7 if i % 11 else 0], i) for i in range(120)]
    want = run(SequentialPipeline, [Session(key_idle=4)], data)
    done: list[Any] = []

    def go(replicas: int, stop: int | None) -> None:
        with Pipeline([Session(replicas, key_idle=4), stage(strip, run_in_master=True)],
                      n_cpu=replicas + 1, checkpoint=ckpt, checkpoint_every=None,
                      on_checkpoint=lambda _: len(done)) as p:
            if p.checkpointed is not None:
                del done[p.checkpointed.token:]
            for i, y in enumerate(p.apply(data)):
                done.append(y)
                if i == 40:
                    p.checkpoint()
                if stop is not None and i >= stop and p.checkpointed is not None:
                    break

    go(2, 70)
    assert done != want
    go(3, None)
    assert done == want


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("start_method", "kills", "within"), [
    ("fork", 8, (0.05, 0.5)),
    ("spawn", 4, (0.3, 1.5)),
])
def test_a_killed_keyed_program_resumes_exactly(tmp_path: Any, start_method: str, kills: int,
                                                within: tuple[float, float]) -> None:
    """SIGKILLed at random moments, each run on 1 to 3 replicas: the committed
    output equals an uninterrupted run."""
    from pathlib import Path

    from tests.scripts.keyed_checkpointed import expected
    from tests.test_checkpoint_kill import killed_and_resumed

    killed_and_resumed(tmp_path, start_method, kills, seed=kills, within=within,
                       script=Path(__file__).parent / "scripts" / "keyed_checkpointed.py",
                       n=3_000, want=expected)


class Spin(Session):
    """Costs about 1 ms per input, so that the stage is the bottleneck."""

    def __call__(self, x: tuple[str, int]) -> Any:
        sum(range(40_000))
        return super().__call__(x)


@pytest.mark.parametrize("skewed", [True, False])
def test_statistics_per_replica_and_key_skew(skewed: bool) -> None:
    # int keys: hash(i) is i, so 8 keys fall 4 and 4 on 2 replicas (a str's hash varies)
    data = [(-1 if skewed and i % 10 else i % 8, i) for i in range(300)]
    with Pipeline([Spin(flush=False)], n_cpu=2) as p:
        assert len(list(p.apply(data))) == 300
        st_ = p.statistics()
        s = st_.stages[0]
        advice = st_.advice()
    assert sum(s.replica_inputs) == 300
    assert len(s.replica_busy_seconds) == 2
    assert all(b >= 0 for b in s.replica_busy_seconds)
    skew = [a for a in advice if "of the inputs" in a]
    if skewed:
        assert s.top_key == ("-1", 270)
        assert skew
        assert "key -1 alone 90%" in skew[0]
    else:
        assert s.live_keys == 8
        assert not skew
