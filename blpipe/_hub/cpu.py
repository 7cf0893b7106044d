"""How many CPUs this process may really use, and the pool size rule."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or ``None`` when unlimited."""
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" or "cpu" in controllers.split(","):
                candidates.append(path.lstrip("/"))
    except OSError:
        pass
    quotas = []
    for rel in [*candidates, ""]:
        v2 = root / rel / "cpu.max"  # cgroup v2: "max 100000" or "150000 100000"
        v1 = root / "cpu" / rel / "cpu.cfs_quota_us"
        try:
            quota, period = v2.read_text().split()
            if quota != "max":
                quotas.append(int(quota) / int(period))
            continue
        except (OSError, ValueError):
            pass
        try:
            q = int(v1.read_text())
            p = int((v1.parent / "cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quotas.append(q / p)
        except (OSError, ValueError):
            pass
    return min(quotas) if quotas else None


_QUOTA_TTL = 1.0  # seconds a cgroup quota read is reused: constructing pipelines in a loop
_quota: tuple[int, float, float | None] | None = None  # (pid, when read, quota)


def _recent_quota() -> float | None:
    """:func:`_cgroup_quota`, read again after ``_QUOTA_TTL`` seconds or in a child."""
    global _quota
    now = time.monotonic()
    pid = os.getpid()
    if _quota is None or _quota[0] != pid or now - _quota[1] > _QUOTA_TTL:
        _quota = pid, now, _cgroup_quota()
    return _quota[2]


def usable_cpu_count() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota.

    ``os.cpu_count()`` counts the machine's CPUs, which overstates what a
    process pinned by ``taskset`` or limited by a container may use.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _recent_quota()  # a few files to read: a millisecond
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


usable_cpu_count.__module__ = "blpipe"  # where it is exported: what pickle and help() name


def pool_size(n_cpu: int | str | None, dedicated: int) -> int:
    """The shared pool's size under blpipe's CPU budget.

    With ``n_cpu`` given it is the total number of worker processes, so the
    pool gets what the ``dedicated`` stages leave: ``max(1, n_cpu - dedicated)``.
    Without it (``None`` or ``-1``) the pool gets every usable CPU, and so
    does ``"auto"``, which then uses only part of it while dedicated stages
    are busy.
    """
    if n_cpu == "auto":
        return usable_cpu_count()
    if n_cpu is not None and (isinstance(n_cpu, bool) or not isinstance(n_cpu, int)):
        raise TypeError(f"n_cpu={n_cpu!r} must be an int, 'auto' (a pool that adapts to the "
                        f"load), or None for every usable CPU")
    if n_cpu is None or n_cpu == -1:
        return usable_cpu_count()
    if n_cpu < 1:
        raise ValueError(f"n_cpu={n_cpu!r}: it must be >= 1, or -1/None for every usable CPU")
    return max(1, n_cpu - dedicated)
