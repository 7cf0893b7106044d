"""Workers never outlive the caller (Linux): killed by the kernel as their parent ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blpipe import Pipeline, WorkerDied
from blpipe._core.deathsig import die_with_parent
from tests.helpers import live_children, wait_no_children
from tests.stages import BIG, SIGKILL, Add, RunningSum

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")

SCRIPT = Path(__file__).parent / "scripts" / "stuck_forever.py"
MARKERS = {"pool", "sleeper1", "sleeper2", "thread"}


def group_members(pgid: int) -> dict[int, str]:
    """The live processes of process group ``pgid``, with their command lines.
    A zombie is dead: who reaps it depends on the container's init."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in "ZX":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_killing_the_caller_mid_call_leaves_no_process(start_method: str,
                                                       tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), start_method, str(tmp_path)],
                            stderr=subprocess.PIPE, start_new_session=True)
    pgid = proc.pid
    try:
        deadline = time.monotonic() + 60  # spawn on a busy machine is slow
        while {p.name for p in tmp_path.iterdir()} != MARKERS:
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
            time.sleep(0.02)
        before = group_members(pgid)
        assert len(before) >= 5, before  # the caller, two dedicated and two pool workers
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        while (left := group_members(pgid)) and time.monotonic() - killed < 1.0:
            time.sleep(0.01)
        took = time.monotonic() - killed
    finally:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert not left, f"alive {took:.2f} s after the caller was killed: {left}"
    print(f"{start_method}: {len(before)} processes gone {took * 1000:.0f} ms after SIGKILL")


def exit_code_of(platform: str, parent: str) -> int:
    """How a forked child exits after ``die_with_parent``: 0 if it returned."""
    caller = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            sys.platform = platform
            die_with_parent(caller if parent == "alive" else os.getpid())
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("platform", "parent", "code"), [
    ("linux", "alive", 0),
    ("linux", "gone", 1),  # the caller died before the prctl: it was reparented
    ("darwin", "gone", 0),  # no prctl: nothing is done
])
def test_a_worker_whose_caller_died_first_exits_at_once(platform: str, parent: str,
                                                        code: int) -> None:
    assert exit_code_of(platform, parent) == code


def stages() -> list[object]:
    return [Add(1, batch_size=8), RunningSum(batch_size=4)]


@pytest.mark.timeout(60)
# the run starts in a thread, so Python 3.12+ warns about fork in a threaded process
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_workers_die_with_the_thread_that_started_them(start_method: str) -> None:
    """The documented rule: under fork and spawn the kernel tracks the thread
    that forked a worker, so its end kills the worker and the run fails; a
    fork server's workers are its own, and the run goes on."""
    expected = [sum(range(1, i + 2)) % BIG for i in range(2000)]
    p = Pipeline(stages(), n_cpu=2, start_method=start_method)
    out = p.apply(range(2000))
    got = []
    starter = threading.Thread(target=lambda: got.append(next(out)))  # starts the workers
    starter.start()
    starter.join()
    with p:
        if start_method == "forkserver":
            workers = live_children()
            time.sleep(0.5)  # time for a signal to land, had there been one
            assert all(w.is_running() for w in workers)
            got += out
            assert got == expected
        else:
            assert not wait_no_children(5.0)  # the thread's end killed them
            with pytest.raises(WorkerDied) as caught:
                got += out
            assert caught.value.exitcode == SIGKILL
            assert got == expected[:len(got)]


@pytest.mark.timeout(60)
def test_consuming_in_a_thread_that_ends_is_fine(start_method: str) -> None:
    """Workers started in the main thread outlive the threads that consume."""
    with Pipeline(stages(), n_cpu=2, start_method=start_method) as p:
        out = p.apply(range(100))
        got = [next(out)]
        reader = threading.Thread(target=lambda: got.extend(next(out) for _ in range(49)))
        reader.start()
        reader.join()
        time.sleep(0.2)  # time for a signal to land, had there been one
        got += out
    assert got == [sum(range(1, i + 2)) for i in range(100)]
