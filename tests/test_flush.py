"""``flush()``: a stage that keeps state gives its last outputs at the end of the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, SequentialPipeline, stage

pytestmark = pytest.mark.timeout(120)


class Total:
    """Passes each input on, and at the end its total and its count."""

    batch_size = 4

    def __init__(self, **attrs: Any) -> None:
        self.total = 0
        self.count = 0
        self.__dict__.update(attrs)

    def __call__(self, x: Any) -> Any:
        self.total += x if isinstance(x, int) else 0
        self.count += 1
        return x

    def flush(self) -> Any:
        return [("total", self.total), None, ("count", self.count)]


class MasterTotal(Total):
    run_in_master = True


def tag(x: Any) -> Any:
    return ("out", x)


SHAPES = {
    "dedicated, then pool": lambda: [Total(), stage(tag, stateful=False, batch_size=4)],
    "master, then master": lambda: [MasterTotal(), stage(tag, run_in_master=True)],
    "pool, then dedicated": lambda: [stage(tag, stateful=False, batch_size=4), Total()],
    "dedicated, then master": lambda: [Total(), MasterTotal()],
    "two dedicated": lambda: [Total(), Total()],
    "grouped dedicated": lambda: [stage(tag, stateful=False), Total(group=3, batch_size=6)],
}


def expected(shape: str) -> list[Any]:
    with SequentialPipeline(SHAPES[shape]()) as p:
        return list(p.apply(range(10)))


def test_the_sequential_oracle() -> None:
    assert expected("dedicated, then pool") == [
        *(("out", x) for x in range(10)), ("out", ("total", 45)), ("out", ("count", 10))]
    # each stage's flush() follows its other outputs, and goes through the stages after it
    assert expected("dedicated, then master")[-4:] == [
        ("total", 45), ("count", 10), ("total", 45), ("count", 12)]


@pytest.mark.parametrize("shape", SHAPES)
def test_flush_follows_every_output(shape: str, start_method: str) -> None:
    with Pipeline(SHAPES[shape](), n_cpu=2, start_method=start_method) as p:
        got = list(p.apply(range(10)))
        n_out = p.statistics().stages[-1].items_out
    assert got == expected(shape)
    assert n_out == len(got)


def test_an_empty_input_still_flushes() -> None:
    with Pipeline([Total()], n_cpu=1) as p:
        assert list(p.apply([])) == [("total", 0), ("count", 0)]


class Nothing(Total):
    def flush(self) -> Any:
        return None


class Broken(Total):
    def flush(self) -> Any:
        yield ("total", self.total)
        raise OSError("the summary could not be written")


@pytest.mark.parametrize("master", [False, True])
def test_a_flush_error_comes_after_every_output(master: bool) -> None:
    attrs = {"run_in_master": True} if master else {}
    with Pipeline([Nothing(**attrs)], n_cpu=1) as p:
        assert list(p.apply(range(3))) == [0, 1, 2]
    got: list[Any] = []
    with Pipeline([Broken(**attrs)], n_cpu=1) as p, \
            pytest.raises(OSError, match="could not be written") as info:
        got.extend(p.apply(range(3)))
    assert got == [0, 1, 2, ("total", 3)]
    assert "the end of the input: flush()" in " ".join(getattr(info.value, "__notes__", []))


def test_no_flush_after_a_failure() -> None:
    def boom(x: int) -> int:
        if x == 5:
            raise ValueError("bad input")
        return x

    with Pipeline([stage(boom, run_in_master=True), Total()], n_cpu=1) as p, \
            pytest.raises(ValueError, match="bad input"):
        assert list(p.apply(range(10)))[-1] == 4


@pytest.mark.parametrize("attrs", [
    {"stateful": False}, {"stateful": 3}, {"stateful": False, "threads": 2},
])
def test_refused_on_a_stage_that_keeps_no_state(attrs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"stage 0 \(Total\(\)\): flush\(\) gives .* keeps no"):
        Pipeline([Total(**attrs)])


def test_refused_on_an_async_stage() -> None:
    class Fetch(Total):
        async def __call__(self, x: Any) -> Any:  # type: ignore[override]
            return x

    with pytest.raises(ValueError, match=r"flush.*async"):
        SequentialPipeline([Fetch()])


def test_a_function_gets_flush_through_stage() -> None:
    seen: list[int] = []

    def keep(x: int) -> None:
        seen.append(x)

    s = stage(keep, run_in_master=True, flush=lambda: [sum(seen)])
    with Pipeline([s]) as p:
        assert list(p.apply(range(5))) == [10]


@pytest.mark.parametrize("master", [False, True])
def test_exactly_once_across_a_resume(tmp_path: Path, master: bool) -> None:
    """Stopped after a checkpoint midway, then resumed to the end and resumed
    again: with the consumer's output cut back to each checkpoint's token, the
    flush outputs are there once."""
    ckpt = tmp_path / "ckpt"
    attrs = {"run_in_master": True} if master else {}
    done: list[Any] = []

    def run(n: int | None) -> None:
        with Pipeline([Total(**attrs)], n_cpu=1, checkpoint=ckpt, checkpoint_every=None,
                      on_checkpoint=lambda _: len(done)) as p:
            if p.checkpointed is not None:
                del done[p.checkpointed.token:]
            it = p.apply(range(20))
            for i, y in enumerate(it):
                done.append(y)
                if i == 7:
                    p.checkpoint()
                if n is not None and i >= n and p.checkpointed is not None:
                    break
            assert p.checkpointed is not None

    run(12)  # stopped: the checkpoint midway is the last
    run(None)
    whole = [*range(20), ("total", 190), ("count", 20)]
    assert done == whole
    run(None)  # a run that went to the end, resumed: its flush() again, in place
    assert done == whole


def test_frequent_checkpoints_flush_once(tmp_path: Path) -> None:
    done: list[Any] = []
    with Pipeline([Total(), MasterTotal()], n_cpu=2, checkpoint=tmp_path / "c",
                  checkpoint_every=0.001, on_checkpoint=lambda _: len(done)) as p:
        done.extend(p.apply(range(200)))
    with SequentialPipeline([Total(), MasterTotal()]) as q:
        assert done == list(q.apply(range(200)))
