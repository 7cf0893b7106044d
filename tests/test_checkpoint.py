"""Checkpoints: what a cut holds, resuming from it, and the files it leaves.

Each resume test stops a run partway (the consumer breaks out of its loop, as
a crash would end it), then builds the pipeline again over the same file and
checks that the outputs it commits, followed by the resumed run's, are
exactly those of an uninterrupted run. The kill test (test_checkpoint_kill)
does the same with real crashes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blpipe import Pipeline, SerializationError, stage
from tests.stages import Poison

pytestmark = pytest.mark.timeout(120)

N = 600


class Total:
    """A running total: state that a restart from 0 would lose."""

    stateful = True
    batch_size = 8

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)
        self.total = 0

    def __call__(self, x: int) -> int:
        self.total += x
        return self.total


@stage(stateful=False, batch_size=8)
def triple(x: int) -> int:
    return 3 * x


@stage(stateful=3, batch_size=8)
def spread(w: tuple[int, int, int]) -> int:
    return w[2] - w[0]


@stage(stateful=False, batch_size=9, group=3)
def sums(g: list[int]) -> int:
    return sum(g)


@stage(stateful=False, batch_size=8, on_error="skip")
def odd_only(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(x)
    return x


def reference(stages: list[Any]) -> list[Any]:
    with Pipeline(stages(), n_cpu=2) as p:  # type: ignore[operator]
        return list(p.apply(range(N)))


def interrupted(stages: Any, path: Path, stop_after: int, start_method: str | None = None,
                **kw: Any) -> list[Any]:
    """A run that takes ``stop_after`` outputs and stops, then runs resumed over
    the same file: what the consumer committed, then the rest."""
    got: list[Any] = []

    def commit(n: int) -> int:
        return len(got)

    n_cpu = None if "executor" in kw else 2
    with Pipeline(stages(), n_cpu=n_cpu, start_method=start_method, checkpoint=path,
                  checkpoint_every=0.01, on_checkpoint=commit, **kw) as p:
        for y in p.apply(range(N)):
            got.append(y)
            if len(got) == stop_after:
                p.checkpoint()
            if len(got) == stop_after + 100:  # past the in-flight bound: its cut is done
                break
    assert p.checkpointed is not None
    got = got[:p.checkpointed.token]
    with Pipeline(stages(), n_cpu=n_cpu, start_method=start_method, checkpoint=path,
                  on_checkpoint=commit, **kw) as p:
        assert p.checkpointed is not None
        got.extend(p.apply(range(N)))
    return got


async def _triple(x: int) -> int:
    return 3 * x


SHAPES = {
    "pool, dedicated, window": lambda: [triple, Total(), spread],
    "linked dedicated stages": lambda: [Total(), Total(), triple],
    "groups in the pool": lambda: [triple, sums, Total()],
    "master stages": lambda: [triple, Total(run_in_master=True),
                              stage(lambda w: w[1] - w[0], stateful=2, run_in_master=True)],
    "threads": lambda: [stage(triple, threads=2, batch_size=8), Total(), spread],
    "async": lambda: [stage(_triple, concurrency=4, batch_size=8), Total(), spread],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_resumed_run_goes_on_exactly(shape: str, tmp_path: Path, start_method: str) -> None:
    stages = SHAPES[shape]
    assert interrupted(stages, tmp_path / "c", 40, start_method) == reference(stages)


def test_a_pool_worker_that_dies_at_the_cut(tmp_path: Path) -> None:
    """Crash isolation splits the chunk the cut follows: the cut goes on behind
    its last piece, and the run resumes exactly."""
    stages = lambda: [Poison(set(range(3, N, 37)), on_error="skip", batch_size=8),  # noqa: E731
                      Total()]
    assert interrupted(stages, tmp_path / "c", 40) == reference(stages)
    with Pipeline(stages(), n_cpu=2, checkpoint=tmp_path / "d", checkpoint_every=0.001) as p:
        list(p.apply(range(N)))
    assert p.checkpointed is not None
    assert p.checkpointed.inputs == N  # no cut was lost: the last one came at the end


def test_pool_stages_on_an_executor(tmp_path: Path) -> None:
    stages = lambda: [triple, Total(), spread]  # noqa: E731
    with ThreadPoolExecutor(2) as ex:
        assert interrupted(stages, tmp_path / "c", 40, executor=ex) == reference(stages)


def test_error_counts_go_on_from_the_checkpoint(tmp_path: Path) -> None:
    stages = lambda: [odd_only, Total()]  # noqa: E731
    assert interrupted(stages, tmp_path / "c", 150) == reference(stages)
    with Pipeline(stages(), checkpoint=tmp_path / "c") as p:
        assert p.errors.counts[0] == sum(1 for x in range(N) if x % 7 == 3)


def test_the_end_is_checkpointed_even_while_another_cut_is_under_way(tmp_path: Path) -> None:
    """The input may end while a cut waits for the consumer; the end's cut then
    follows it, rather than being lost. A cut as often as possible, and a consumer
    that pauses now and then, end the input during a cut in about half the runs."""
    for run in range(6):
        with Pipeline([triple, Total()], n_cpu=2, checkpoint=tmp_path / f"c{run}",
                      checkpoint_every=1e-6) as p:
            for i, _ in enumerate(p.apply(range(N))):
                if i % 10 == 0:
                    time.sleep(0.002)
        assert p.checkpointed is not None
        assert p.checkpointed.inputs == N, f"run {run}: the last checkpoint is not the end's"


def test_what_on_checkpoint_sees(tmp_path: Path) -> None:
    """It runs in the consumer's thread, after every output of its N inputs was
    taken and before the next: the consumer commits exactly those."""
    seen: list[tuple[int, int, bool]] = []
    got: list[int] = []

    def commit(n: int) -> int:
        seen.append((n, len(got), threading.current_thread() is threading.main_thread()))
        return len(got)

    with Pipeline([triple, Total()], n_cpu=2, checkpoint=tmp_path / "c", checkpoint_every=0.2,
                  on_checkpoint=commit) as p:
        for y in p.apply(range(N)):
            if len(got) == 100:
                # Longer than a period: unless one was cut already, a cut is due at the next
                # pull, midway. (At full speed the stream may end within a single period.)
                time.sleep(0.25)
            got.append(y)
    assert seen[-1] == (N, N, True)  # the last, at the end of the stream
    assert any(0 < n < N for n, _, _ in seen), seen  # and at least one midway
    assert all(n == taken and main for n, taken, main in seen)  # one output per input here
    assert p.checkpointed is not None
    assert (p.checkpointed.inputs, p.checkpointed.token) == (N, N)


def test_a_finished_run_resumes_to_nothing(tmp_path: Path) -> None:
    with Pipeline([triple, Total()], checkpoint=tmp_path / "c") as p:
        assert len(list(p.apply(range(N)))) == N
    with Pipeline([triple, Total()], checkpoint=tmp_path / "c") as p:
        assert list(p.apply(range(N))) == []
        assert p.checkpointed is not None
        assert p.checkpointed.inputs == N


def test_an_input_that_starts_at_the_checkpoint(tmp_path: Path) -> None:
    stages = lambda: [triple, Total()]  # noqa: E731
    got: list[int] = []
    with Pipeline(stages(), checkpoint=tmp_path / "c", on_checkpoint=lambda n: len(got)) as p:
        for y in p.apply(range(N)):
            got.append(y)
            if len(got) == 100:
                p.checkpoint()
            if len(got) == 150:
                break
    assert p.checkpointed is not None
    n = p.checkpointed.inputs
    got = got[:p.checkpointed.token]
    with Pipeline(stages(), checkpoint=tmp_path / "c") as p:
        got.extend(p.apply(range(n, N), skip=False))
    assert got == reference(stages)


def test_a_different_pipeline_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with Pipeline([triple, Total()], checkpoint=path) as p:
        list(p.apply(range(10)))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"written by a different pipeline \(stage 1 "
                                         r"\(Total\(\)\): batch_size=8 then, batch_size=4 now"):
        Pipeline([triple, Total(batch_size=4)], checkpoint=path)
    with pytest.raises(ValueError, match="it has 2 stages, this pipeline 3"):
        Pipeline([triple, Total(), triple], checkpoint=path)
    assert path.read_bytes() == before


def test_a_write_cut_short_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A crash while a checkpoint is written leaves its temporary file half
    written: the previous checkpoint is the one resumed from."""
    path = tmp_path / "c"
    with Pipeline([triple, Total()], checkpoint=path) as p:
        list(p.apply(range(10)))
    whole = path.read_bytes()
    (tmp_path / "c.tmp").write_bytes(whole[:len(whole) // 2])
    with Pipeline([triple, Total()], checkpoint=path) as p:
        assert p.checkpointed is not None
        assert p.checkpointed.inputs == 10
        assert list(p.apply(range(12))) == [3 * 10 + 135, 3 * 11 + 3 * 10 + 135]


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "c"
    with Pipeline([triple, Total()], checkpoint=path) as p:
        list(p.apply(range(10)))
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * keep)])
    with pytest.raises(ValueError, match=r"is damaged|cut short"):
        Pipeline([triple, Total()], checkpoint=path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("hello")
    with pytest.raises(ValueError, match="is not a blpipe checkpoint"):
        Pipeline([triple], checkpoint=tmp_path / "c")


@pytest.mark.parametrize(("attrs", "words"), [
    ({"stateful": False, "ordered": False}, "ordered=False cannot be checkpointed"),
    ({"stateful": True, "expand": True}, "a dedicated stage with expand = True"),
])
def test_stages_a_cut_cannot_pass_are_refused(tmp_path: Path, attrs: dict[str, Any],
                                              words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Pipeline([stage(lambda x: [x], **attrs)], checkpoint=tmp_path / "c")


class OpensAStream:
    """Opens a generator on its first call, as a stage may open a file: from
    then on its state does not pickle."""

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)
        self.stream: Any = None

    def __call__(self, x: int) -> int:
        self.stream = self.stream or (i for i in range(3))
        return x


@pytest.mark.parametrize("where", [{"stateful": True}, {"run_in_master": True}])
def test_a_state_that_will_not_pickle(tmp_path: Path, where: dict[str, Any]) -> None:
    with Pipeline([OpensAStream(**where)], checkpoint=tmp_path / "c") as p, \
            pytest.raises(SerializationError, match=r"cannot be written: stage 0 "
                                                    r"\(OpensAStream\(\)\): TypeError: cannot "
                                                    r"pickle 'generator' object"):
        list(p.apply(range(10)))
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("every", "error"), [(0, ValueError), (-1.0, ValueError),
                                              ("1", TypeError), (True, TypeError)])
def test_checkpoint_every_is_checked(tmp_path: Path, every: Any, error: type) -> None:
    with pytest.raises(error, match="checkpoint_every="):
        Pipeline([triple], checkpoint=tmp_path / "c", checkpoint_every=every)


def test_checkpoint_needs_a_file() -> None:
    with Pipeline([triple]) as p, pytest.raises(RuntimeError, match="pass checkpoint=path"):
        p.checkpoint()


def test_on_checkpoint_must_be_callable(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"on_checkpoint=3\) is an int; it must be a callable"):
        Pipeline([triple], checkpoint=tmp_path / "c", on_checkpoint=3)  # type: ignore[arg-type]
