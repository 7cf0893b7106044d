"""The CPU budget: pool size with and without n_cpu, and what counts as usable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blpipe import Pipeline, usable_cpu_count
from blpipe._hub.cpu import _cgroup_quota
from tests.stages import Add, RunningSum


def test_usable_count_follows_affinity() -> None:
    assert 1 <= usable_cpu_count() <= len(os.sched_getaffinity(0))
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert usable_cpu_count() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_cgroup_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None


@pytest.mark.parametrize(("n_cpu", "expected"), [(8, 6), (3, 1), (2, 1), (1, 1)])
def test_n_cpu_counts_dedicated_stages(n_cpu: int, expected: int) -> None:
    ops = [Add(1), RunningSum(), RunningSum(), Add(2)]
    with Pipeline(ops, n_cpu=n_cpu) as p:
        assert p.n_cpu == expected


@pytest.mark.parametrize("n_cpu", [None, -1])
def test_default_pool_takes_every_usable_cpu(n_cpu: int | None) -> None:
    ops = [Add(1), RunningSum(), Add(2)]
    with Pipeline(ops, n_cpu=n_cpu) as p:
        assert p.n_cpu == usable_cpu_count()
