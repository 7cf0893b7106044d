"""Each kind of stage runs where the contract says, checked by pid."""

from __future__ import annotations

import os

import psutil

from blpipe import Pipeline
from tests.helpers import live_children
from tests.stages import Pid


def test_placement_by_pid(start_method: str) -> None:
    ops = [
        Pid("pool", batch_size=8),
        Pid("dedicated", stateful=True, batch_size=4),
        Pid("window", stateful=2, batch_size=8),
        Pid("master", run_in_master=True),
        Pid("dedicated2", stateful=True),
    ]
    with Pipeline(ops, n_cpu=4, start_method=start_method) as p:
        pool_size = p.n_cpu
        children = {c.pid for c in psutil.Process().children(recursive=True)}
        outputs = list(p.apply(range(200)))
    assert pool_size == 2  # 4 minus two dedicated stages
    assert [x for x, _ in outputs] == list(range(1, 200))  # the window drops one
    seen: dict[str, set[int]] = {}
    for _, trace in outputs:
        for name, pid in trace:
            seen.setdefault(name, set()).add(pid)
    me = os.getpid()
    assert seen["master"] == {me}
    for name in ("dedicated", "dedicated2"):
        (pid,) = seen[name]
        assert pid != me
        assert pid in children
    pool = seen["pool"] | seen["window"]
    assert len(pool) <= pool_size
    assert pool <= children
    assert not pool & (seen["dedicated"] | seen["dedicated2"])
    assert seen["dedicated"] != seen["dedicated2"]


def test_processes_start_at_enter_not_before() -> None:
    p = Pipeline([Pid("pool", batch_size=4), Pid("dedicated", stateful=True)], n_cpu=3)
    assert not live_children()
    with p:
        assert len(live_children()) == 3
