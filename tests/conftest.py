"""Shared fixtures: every test must leave no process and no blpipe thread behind."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from tests.helpers import START_METHODS, wait_no_children


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Dask tests run last: a Dask client leaves threads running in this
    process, and forking a multi-threaded process (every test after them, under
    fork) risks children that deadlock."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_dask.py"))


@pytest.fixture(autouse=True)
def no_leaks(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    threads = set(threading.enumerate())
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(out)  # hand the test's output back to pytest's report
    sys.stderr.write(err)
    assert "resource_tracker" not in err, err  # it reports leaked semaphores and segments
    left = wait_no_children()
    for child in left:
        child.kill()
    assert not left, f"processes left behind: {left}"
    extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert not extra, f"threads left behind: {extra}"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)
