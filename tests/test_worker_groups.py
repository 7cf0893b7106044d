"""Who is blamed when a linked worker dies, and what a stage that cannot load gives."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from blpipe import BrokenPipeline, Pipeline, RemoteTraceback, SerializationError
from blpipe._hub.pool import Link
from tests.stages import Echo, LoadsNowhere, UnpicklesNowhere


def worker(label: str, exitcode: int | None) -> Any:
    proc = SimpleNamespace(exitcode=exitcode, join=lambda timeout=None: None)
    return SimpleNamespace(label=label, proc=proc)


def blame(codes: list[int | None], dead: int, exitcode: int | None,
          death: Any = None) -> Any:
    """Link._blame on workers with these exit codes, ``dead`` being the one seen."""
    link = Link.__new__(Link)
    link.workers = [worker(f"stage {i}", c) for i, c in enumerate(codes)]
    link.death = death
    link._blame(link.workers[dead], exitcode)
    return link.death


def test_the_dead_one_is_named() -> None:
    assert blame([None, -9, None], 1, -9) == ("stage 1", -9)


def test_an_earlier_failure_is_named_over_a_later_clean_exit() -> None:
    # stage 2 saw end of file and exited 0 first; stage 0 was killed before it
    assert blame([-11, 0, 0], 2, 0) == ("stage 0", -11)


def test_a_clean_exit_is_named_when_nothing_else_failed() -> None:
    assert blame([None, 0], 1, 0) == ("stage 1", 0)


def test_a_death_already_blamed_is_kept() -> None:
    assert blame([None, -9], 1, -9, death=("stage 0", -6)) == ("stage 0", -6)
    # but a clean exit noted first gives way to a real failure
    assert blame([None, -9], 1, -9, death=("stage 1", 0)) == ("stage 1", -9)


@pytest.mark.parametrize("stateful", [False, True], ids=["pool", "dedicated"])
def test_a_stage_that_cannot_load_in_its_worker(start_method: str, stateful: bool) -> None:
    with (Pipeline([Echo(False, batch_size=4), LoadsNowhere(stateful)], n_cpu=2,
                   start_method=start_method) as p,
          pytest.raises(BrokenPipeline) as info):
        list(p.apply(range(10)))
    assert "stage 1 (LoadsNowhere())" in str(info.value)
    assert "could not be loaded in its worker process" in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "LoadsNowhere cannot be rebuilt here" in str(info.value.__cause__)


def test_an_input_that_cannot_be_unpickled_in_the_worker(start_method: str) -> None:
    items = [1, 2, UnpicklesNowhere(), 4]
    got: list[Any] = []
    with (Pipeline([Echo(False, batch_size=1)], n_cpu=1, start_method=start_method) as p,
          pytest.raises(SerializationError) as info):
        got.extend(p.apply(items))
    assert got == [1, 2]
    assert "cannot be unpickled in its worker process" in str(info.value)
    assert "stage 0 (Echo())" in str(info.value)
    assert "UnpicklesNowhere cannot be rebuilt here" in str(info.value.__cause__)


def test_a_stage_that_cannot_load_on_an_executor() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with (ThreadPoolExecutor(2) as ex,
          Pipeline([LoadsNowhere(False)], executor=ex) as p,
          pytest.raises(BrokenPipeline) as info):
        list(p.apply(range(10)))
    assert "stage 0 (LoadsNowhere()) could not be loaded" in str(info.value)
    assert "LoadsNowhere cannot be rebuilt here" in str(info.value.__cause__)
