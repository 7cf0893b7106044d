"""Ctrl-C and SIGTERM on a real script: prompt exit, one traceback, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "endless_total.py"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize(("how", "expected"), [
    ("SIGINT to the group", "KeyboardInterrupt"),
    ("SIGTERM to the parent", "terminated\n"),  # SystemExit prints its message
])
def test_signal_stops_everything(start_method: str, how: str, expected: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), start_method], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a shell may have started this test with SIGINT ignored; a terminal's child would not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "running\n"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 3
        sent = time.monotonic()
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert took < 1.0, took  # measured: ~35 ms, interpreter exit included
    assert err.count(expected) == 1, err  # the caller's only: no storm from workers
    assert err.count("Traceback") <= 1, err
    assert "resource_tracker" not in err, err  # no leaked semaphore or shared memory
    _, alive = psutil.wait_procs(workers, timeout=2)
    assert not alive
