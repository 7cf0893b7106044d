"""The proof of checkpoints: a real script, SIGKILLed with its whole process group
at random moments and run again each time, commits exactly the output of an
uninterrupted run, with no gap and no duplicate."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scripts.checkpointed import expected

SCRIPT = Path(__file__).parent / "scripts" / "checkpointed.py"
N = 8_000


def killed_and_resumed(tmp_path: Path, start_method: str, kills: int, seed: int,
                       within: tuple[float, float], script: Path = SCRIPT, n: int = N,
                       want: Callable[[int], list[str]] = expected) -> int:
    """Run ``script`` over and over, each run SIGKILLed at a random moment
    until ``kills`` kills have hit a running program; each time a run ends by
    itself, its output must be ``want(n)``, and a fresh round starts while kills
    are left. Returns the rounds."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    hit = rounds = 0
    while hit < kills:
        rounds += 1
        out, ckpt = tmp_path / f"out{rounds}.txt", tmp_path / f"run{rounds}.ckpt"
        while True:
            proc = subprocess.Popen([sys.executable, str(script), start_method, str(out),
                                     str(ckpt), str(n)], start_new_session=True, env=env)
            try:
                proc.wait(timeout=rng.uniform(*within) if hit < kills else 120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hit += 1
                continue
            assert proc.returncode == 0, f"a run of round {rounds} failed: {proc.returncode}"
            break
        assert out.read_text().split() == want(n), f"round {rounds}"
    return rounds


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("start_method", "kills", "within"), [
    ("fork", 20, (0.05, 0.6)),
    ("spawn", 10, (0.3, 1.6)),
])
def test_a_killed_program_resumes_exactly(tmp_path: Path, start_method: str, kills: int,
                                          within: tuple[float, float]) -> None:
    killed_and_resumed(tmp_path, start_method, kills, seed=kills, within=within)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("start_method", "within"), [("fork", (0.02, 0.8)),
                                                      ("forkserver", (0.1, 1.2))])
def test_a_killed_program_resumes_exactly_stress(tmp_path: Path, start_method: str,
                                                 within: tuple[float, float]) -> None:
    """Longer: 40 kills each, from before the first checkpoint to well into the run."""
    killed_and_resumed(tmp_path, start_method, 40, seed=7, within=within)
