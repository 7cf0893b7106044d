"""Benchmark driver: blpipe against serial code, multiprocessing.Pool and peer libraries.

Run from the repository root::

    python benchmarks/run.py                      # everything, 5 repeats
    python benchmarks/run.py --quick --repeats 1  # smoke run
    python benchmarks/run.py --workloads W1,W3 --systems blpipe,pool --markdown
    python benchmarks/run.py --workloads dask     # blpipe on a Dask executor (opt-in)
    python benchmarks/run.py --workloads shapes   # groups and expansions (opt-in)
    python benchmarks/run.py --floor              # blpipe next to its floor and Pool

Every measurement runs in a fresh interpreter (``_child.py``) under a
timeout; a run that does not finish in time is reported as ``hang`` and its
whole process tree is killed. Repeats are interleaved: repeat 1 runs every
row of W1, then every row of W2, ..., then repeat 2 starts, so machine noise
spreads evenly over the systems. While a child runs, a thread here samples
the resident set size of the child and all its descendants every 10 ms and
keeps the largest sum. Wall time is measured inside the child around the
timed region only. Each child checks its output against the serial
reference and reports ``wrong`` when it differs.

Tables go to standard output, progress to standard error.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's blpipe

import psutil
import systems
import workloads as wl
from systems import Row
from workloads import DASK_WORKLOADS, DEFAULT_WORKLOADS, WORKLOAD_GROUPS, WORKLOADS, Workload

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_child.py"
PEERS = ("pool", "blllib", "pypeln", "mpire")
REF = "blpipe@ref"  # blpipe rows run again on the checkout given by --ref
FLOOR_WORKLOADS, FLOOR_SYSTEMS = ("W1", "W3", "W5"), ("blpipe", "pool", "floor")  # --floor
FLOOR_TARGET = 1.25  # what blpipe ÷ floor on W1 should not exceed
SAMPLE_INTERVAL = 0.01
RESCAN_EVERY = 5  # look for new descendants every 5th sample (50 ms)
STRAGGLER_GRACE = 2.0  # seconds a child's helpers get to exit after it


# --- timeouts ---------------------------------------------------------------


def row_timeout(workload: Workload, row: Row, args: argparse.Namespace) -> float:
    """The timeout for one run: ``--timeout``, capped for workloads that should be short.

    W5 does almost nothing, so a run past 30 s (10 s with ``--quick``) has
    hung. blllib is known to hang at exit when a stateful stage has seen
    all its input (W3, W5), so it gets 60 s (20 s) on W3.
    """
    limit = args.timeout
    if workload.name == "W5":
        limit = min(limit, 10 if args.quick else 30)
    if row.system == "blllib" and workload.name == "W3":
        limit = min(limit, 20 if args.quick else 60)
    return limit


# --- running one child under watch ----------------------------------------


class TreeMonitor(threading.Thread):
    """Samples the summed RSS of a process and all its descendants; keeps the peak.

    Every process ever seen in the tree is remembered, so ones that outlive
    the root (orphans) can still be found and killed afterwards.
    """

    def __init__(self, pid: int, pss: bool = False) -> None:
        super().__init__(daemon=True)
        self.pss = pss  # proportional set size: shared memory counted once, not per process
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {pid: self.root}
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self._stop_event.is_set():
            if tick % RESCAN_EVERY == 0:
                self._rescan()
            self._sample()
            tick += 1
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def _rescan(self) -> None:
        try:
            for p in self.root.children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.Error:
            pass

    def _sample(self) -> None:
        total = 0
        for p in list(self.seen.values()):
            try:
                total += p.memory_full_info().pss if self.pss else p.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)

    def alive(self) -> list[psutil.Process]:
        """Processes of the tree still running (not counting the zombie root)."""
        out = []
        for pid, p in self.seen.items():
            if pid == self.root.pid:
                continue
            if _running(p):
                out.append(p)
        return out


@dataclass
class ChildOutcome:
    timed_out: bool
    returncode: int | None
    peak_rss: int
    leftovers: int
    wall: float


def _group_members(pgid: int, exclude: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        try:
            if p.pid != exclude and os.getpgid(p.pid) == pgid:
                members.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return members


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=1)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap_stragglers(monitor: TreeMonitor, pgid: int) -> int:
    """Kill what the exited child left running; return how many processes that was.

    Helpers such as the forkserver and the resource tracker exit by
    themselves once the child is gone, so they get a short grace period
    before they count as left behind.
    """
    stragglers = {p.pid: p for p in monitor.alive()}
    stragglers.update((p.pid, p) for p in _group_members(pgid, pgid))
    deadline = time.perf_counter() + STRAGGLER_GRACE
    alive = [p for p in stragglers.values() if _running(p)]
    while alive and time.perf_counter() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    _kill(alive)
    return len(alive)


def run_child(cmd: list[str], timeout: float, stdout: Any, stderr: Any,
              pss: bool = False, env: dict[str, str] | None = None) -> ChildOutcome:
    """Run ``cmd`` in its own session; on timeout kill its whole process tree.

    The child is waited for without being reaped (``WNOWAIT``), so its pid,
    and with it its process group, cannot be reused while stragglers in that
    group are looked for and killed; only then is it reaped.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    monitor = TreeMonitor(proc.pid, pss)
    monitor.start()
    timed_out = False
    try:
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                break
            time.sleep(SAMPLE_INTERVAL)
    finally:
        wall = time.perf_counter() - t0
        monitor.stop()
        leftovers = 0
        if timed_out:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # Descendants that moved to another process group, if any.
            _kill([p for pid, p in monitor.seen.items() if pid != proc.pid])
        else:
            leftovers = _reap_stragglers(monitor, proc.pid)
            proc.wait()
    return ChildOutcome(timed_out, proc.returncode, monitor.peak, leftovers, wall)


# --- one measurement --------------------------------------------------------


@dataclass
class Run:
    """One run of one row, as recorded in the JSON output."""

    workload: str
    row: str
    system: str
    repeat: int
    status: str  # ok | wrong | error | hang
    seconds: float | None = None
    first_output_seconds: float | None = None
    peak_rss_mb: float | None = None
    wall_seconds: float | None = None
    leftovers: int = 0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # see systems.Measurement.extra

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


def measure_once(workload: Workload, row: Row, repeat: int, cfg: Config,
                 args: argparse.Namespace, scratch: Path) -> Run:
    result_path = scratch / "result.json"
    consumed_path = scratch / "result.json.consumed"
    result_path.unlink(missing_ok=True)
    consumed_path.unlink(missing_ok=True)
    n = workload.n(args.quick)
    env = None
    label = row.label
    if row.system == REF:  # the same row, with the reference checkout's blpipe imported
        env = {**os.environ, "PYTHONPATH": str(args.ref), "BLPIPE_BENCH_REF": str(args.ref)}
        label = label.replace(REF, "blpipe", 1)
    cmd = [sys.executable, str(CHILD), label, workload.name, "--n", str(n),
           "--iterations", str(cfg.iterations.get(workload.name, 0)),
           "--expect", cfg.references[workload.name], "--result", str(result_path)]
    timeout = row_timeout(workload, row, args)
    with open(scratch / "stdout", "w+b") as out, open(scratch / "stderr", "w+b") as err:
        outcome = run_child(cmd, timeout, out, err, workload.pss, env)
        err.seek(0)
        err_tail = err.read()[-2000:].decode(errors="replace").strip()
    result: dict[str, Any] = {}
    if result_path.exists():
        result = json.loads(result_path.read_text())
    run = Run(workload.name, row.label, row.system, repeat, status="error",
              peak_rss_mb=outcome.peak_rss / 2**20, wall_seconds=outcome.wall,
              leftovers=outcome.leftovers)
    if outcome.timed_out:
        run.status = "hang"
        if result:
            run.note = f"finished ({result['status']}) but did not exit within {timeout:g} s"
        elif consumed_path.exists():
            consumed = json.loads(consumed_path.read_text())
            verdict = "right" if consumed["ok"] else f"wrong: {consumed['digest']}"
            run.note = (f"all outputs consumed ({verdict}), then shutting down "
                        f"did not finish within {timeout:g} s")
        else:
            run.note = f"not all outputs within {timeout:g} s"
    elif not result:
        last = err_tail.splitlines()[-1] if err_tail else ""
        run.note = f"exit code {outcome.returncode}, no result: {last}"
    else:
        run.status = str(result["status"])
        run.seconds = result.get("seconds")
        run.first_output_seconds = result.get("first_output_seconds")
        run.extra = result.get("extra") or {}
        if run.status == "wrong":
            run.note = f"got {result['digest']}, expected {result['expected']}"
        if outcome.returncode:
            run.add_note(f"exit code {outcome.returncode} after the result")
    if outcome.leftovers:
        run.add_note(f"left {outcome.leftovers} process(es) running (killed)")
    return run


# --- configuration shared by all runs ---------------------------------------


@dataclass
class Config:
    iterations: dict[str, int] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)


def environment() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("blpipe", "blllib", "pypeln", "mpire", "psutil", "dask", "distributed"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    import multiprocessing

    return {
        "cores": str(systems.usable_cores()),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "default_start_method": multiprocessing.get_start_method(),
        **{f"{k}_version": v for k, v in versions.items()},
    }


def env_line(env: dict[str, str]) -> str:
    cores = env["cores"]
    if env["cpu_count"] != cores:
        cores += f" (os.cpu_count(): {env['cpu_count']})"
    return (f"cores: {cores} | Python {env['python']} | {env['date']} | "
            f"{env['platform']} | default start method: {env['default_start_method']}")


def versions_line(env: dict[str, str], dask: bool = False) -> str:
    dists = ("blpipe", "distributed") if dask else ("blpipe", "blllib", "pypeln", "mpire")
    return " | ".join(f"{d} {env[f'{d}_version']}" for d in dists)


# --- summary ----------------------------------------------------------------


@dataclass
class Summary:
    workload: str
    row: str
    system: str
    match: str | None
    status: str
    runs: int
    ok_runs: int
    median_seconds: float | None
    items_per_second: float | None
    speedup_vs_serial: float | None
    blpipe_ratio: float | None  # blpipe's throughput / this row's (peers only)
    peak_rss_mb: float | None
    median_first_output_seconds: float | None
    notes: list[str]
    extra: dict[str, float] = field(default_factory=dict)  # medians of the runs' extra figures


def summarize(workload: Workload, rows: list[Row], runs: list[Run], n: int) -> list[Summary]:
    out: list[Summary] = []
    for row in rows:
        mine = [r for r in runs if r.row == row.label]
        if row.na:
            out.append(Summary(workload.name, row.label, row.system, row.match, "n/a", 0, 0,
                               None, None, None, None, None, None, [row.na]))
            continue
        if not mine:
            continue
        counts = {s: sum(r.status == s for r in mine) for s in ("hang", "error", "wrong", "ok")}
        status = next((s for s in ("hang", "error", "wrong") if counts[s]), "ok")
        if status != "ok":
            status += f" {counts[status]}/{len(mine)}"
        timed = [r.seconds for r in mine if r.seconds is not None and r.status in ("ok", "wrong")]
        first = [r.first_output_seconds for r in mine
                 if r.first_output_seconds is not None and r.status in ("ok", "wrong")]
        rss = [r.peak_rss_mb for r in mine if r.peak_rss_mb and r.status in ("ok", "wrong")]
        median = statistics.median(timed) if timed else None
        notes = sorted({r.note for r in mine if r.note})
        done = [r for r in mine if r.status in ("ok", "wrong")]
        extra = {key: statistics.median(values)
                 for key in sorted({k for r in done for k in r.extra})
                 if (values := [r.extra[key] for r in done if key in r.extra])}
        out.append(Summary(
            workload.name, row.label, row.system, row.match, status, len(mine), counts["ok"],
            median, n / median if median and n > 1 else None, None, None,
            max(rss) if rss else None, statistics.median(first) if first else None, notes,
            extra))
    serial = next((s for s in out if s.system == "serial" and s.status == "ok"), None)
    for s in out:
        if n == 1:
            break  # a speed-up over a plain function call on one item means nothing
        if serial and serial.median_seconds and s.median_seconds and s.status == "ok":
            s.speedup_vs_serial = serial.median_seconds / s.median_seconds
    for s in out:
        # blpipe-dask too: there "blpipe ÷ row" is its wall time ÷ blpipe's own pool's,
        # at the same batch_size
        if s.system in (*PEERS, "blpipe-dask") and s.status == "ok" and s.median_seconds:
            best = own_pool(out, s) if s.system == "blpipe-dask" else best_blpipe(out, s.match)
            if best and best.median_seconds:
                s.blpipe_ratio = s.median_seconds / best.median_seconds
    return out


def _fastest(candidates: list[Summary]) -> Summary | None:
    ok = [s for s in candidates if s.status == "ok" and s.median_seconds]
    return min(ok, key=lambda s: s.median_seconds or 0.0, default=None)


def best_blpipe(summaries: list[Summary], match: str | None) -> Summary | None:
    """The fastest correct blpipe row, with the same start method when rows have one."""
    mine = [s for s in summaries if s.system == "blpipe"]
    same = [s for s in mine if s.match == match]
    return _fastest(same or mine)


def best_peers(summaries: list[Summary], blpipe_row: Summary) -> list[tuple[str, Summary]]:
    """Per peer system its fastest correct row comparable with ``blpipe_row``."""
    found = []
    for system in PEERS:
        rows = [s for s in summaries if s.system == system]
        same = [s for s in rows if s.match == blpipe_row.match]
        best = _fastest(same or rows)
        if best:
            found.append((system, best))
    return found


# --- rendering --------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def _fmt_ratio(value: float | None) -> str:
    """A ratio with two significant digits past leading zeros, never in exponent form."""
    if value is None:
        return "—"
    decimals = max(2, 1 - math.floor(math.log10(value))) if value > 0 else 2
    return f"{value:.{decimals}f}x"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


COLUMNS = ("row", "status", "runs", "median s", "items/s", "vs serial",
           "blpipe ÷ row", "peak RSS MB", "1st output s")


def table_rows(summaries: list[Summary]) -> list[tuple[str, ...]]:
    return [(s.row, s.status, str(s.runs) if s.runs else "—", _fmt(s.median_seconds, ".3f"),
             _fmt_rate(s.items_per_second), _fmt_ratio(s.speedup_vs_serial),
             _fmt_ratio(s.blpipe_ratio), _fmt(s.peak_rss_mb, ".0f"),
             _fmt(s.median_first_output_seconds, ".3f")) for s in summaries]


def comparison_lines(summaries: list[Summary]) -> list[str]:
    lines = []
    for b in summaries:
        if b.system != "blpipe" or b.status != "ok":
            continue
        peers = best_peers(summaries, b)
        if not peers:
            continue
        each = ", ".join(f"{sys_} {(p.median_seconds or 0) / (b.median_seconds or 1):.2f}x"
                         f" ({p.row})" for sys_, p in peers)
        top = min((p for _, p in peers), key=lambda p: p.median_seconds or 0.0)
        ratio = (top.median_seconds or 0) / (b.median_seconds or 1)
        lines.append(f"{b.row}: {ratio:.2f}x the best peer ({top.row}); per peer: {each}")
    return lines


def ref_lines(summaries: list[Summary]) -> list[str]:
    """Each blpipe row against the same row on the ``--ref`` checkout."""
    lines = []
    for r in (s for s in summaries if s.system == REF):
        b = next((s for s in summaries if s.row == r.row.replace(REF, "blpipe", 1)), None)
        if b is None or not (b.median_seconds and r.median_seconds):
            continue
        lines.append(f"{b.row}: {r.median_seconds / b.median_seconds:.2f}x as fast as on "
                     f"--ref ({b.median_seconds:.3f} s against {r.median_seconds:.3f} s)")
    return lines


def own_pool(summaries: list[Summary], dask_row: Summary) -> Summary | None:
    """The blpipe row with the same batch_size as a ``blpipe-dask`` row."""
    label = re.sub(r",?workers=\d+", "", dask_row.row.replace("blpipe-dask", "blpipe", 1))
    return next((s for s in summaries if s.system == "blpipe" and s.row == label), None)


def dask_lines(summaries: list[Summary]) -> list[str]:
    """W2dask, W1dask: blpipe on the Dask executor against blpipe's own pool.

    Each Dask row is compared with the own-pool row of the same batch_size.
    The ratio is of the two median wall times. The per-chunk overhead is
    their difference divided by the number of chunks the executor ran
    (counted by :class:`systems.CountingExecutor` around ``submit``): what
    each chunk sent through Dask added to the wall time, with as many chunks
    in flight as ``batch_size`` allows (at most three per worker).
    """
    lines: list[str] = []
    for dk in (s for s in summaries if s.system == "blpipe-dask"):
        if dk.status == "n/a":
            continue  # the row's note says why
        if dk.status != "ok" or not dk.median_seconds:
            lines.append(f"{dk.row}: {dk.status} (see the notes): no ratio or overhead")
            continue
        ex = dk.extra
        if "cluster_startup_s" in ex and not lines:
            workers = dict(systems.find_row(WORKLOADS[dk.workload], dk.row).params)["workers"]
            lines.append(
                f"Dask cluster start-up, NOT in the wall time: median "
                f"{ex['cluster_startup_s']:.3f} s (LocalCluster(n_workers={workers}, "
                f"threads_per_worker=1, processes=True), Client, wait_for_workers); shut-down, "
                f"not in it either: median {ex.get('cluster_shutdown_s', math.nan):.3f} s. The "
                f"wall time runs from creating the Pipeline to leaving its with block on the "
                f"running cluster; blpipe's own pool starts and stops its workers inside it")
        own = own_pool(summaries, dk)
        if own is None or not own.median_seconds:
            lines.append(f"{dk.row}: the own pool at its batch_size has no correct run")
            continue
        diff = dk.median_seconds - own.median_seconds
        line = (f"{dk.row} ÷ {own.row}, wall time (medians): "
                f"{dk.median_seconds / own.median_seconds:.2f}x "
                f"({dk.median_seconds:.3f} s / {own.median_seconds:.3f} s)")
        chunks = ex.get("chunks")
        if chunks:
            line += (f"; per-chunk overhead {diff / chunks * 1e3:.2f} ms = (Dask - own pool) / "
                     f"{chunks:.0f} chunks (executor.submit calls, median)")
        if "chunk_latency_median_s" in ex:
            line += (f"; chunk round trip on Dask: median "
                     f"{ex['chunk_latency_median_s'] * 1e3:.1f} ms")
            if "chunks_in_flight_mean" in ex:
                line += f", {ex['chunks_in_flight_mean']:.1f} chunks in flight on average"
        lines.append(line)
    return lines


def budget_lines(summaries: list[Summary]) -> list[str]:
    """W6: peak memory with the byte budget against without it."""
    rows = {s.row: s for s in summaries if s.system == "blpipe" and s.status == "ok"}
    with_ = next((s for s in rows.values() if "budget_mib" in s.row), None)
    without = next((s for s in rows.values() if "budget_mib" not in s.row), None)
    if not (with_ and without and with_.peak_rss_mb and without.peak_rss_mb):
        return []
    budget = int(re.search(r"budget_mib=(\d+)", with_.row).group(1))  # type: ignore[union-attr]
    top = max(wl.BUDGET_SIZES) >> 20
    return [f"peak PSS of the process tree: {with_.peak_rss_mb:.0f} MB with a {budget} MiB "
            f"budget (bytes in flight peaked at {with_.extra.get('peak_bytes_mib', 0):.0f} "
            f"MiB), {without.peak_rss_mb:.0f} MB without; over the budget: "
            f"{with_.peak_rss_mb - budget:.0f} MB (items up to {top} MiB); wall time "
            f"{(with_.median_seconds or 0) / (without.median_seconds or 1):.2f}x"]


def auto_lines(summaries: list[Summary]) -> list[str]:
    """W7, W7chain: n_cpu='auto' against the better of the two fixed rules."""
    rows = [s for s in summaries if s.system == "blpipe" and s.status == "ok"]
    auto = next((s for s in rows if "n_cpu=auto" in s.row), None)
    fixed = [s for s in rows if s is not auto]
    best = _fastest(fixed)
    if auto is None or best is None or not auto.median_seconds:
        return []
    active = auto.extra.get("pool_active")
    shown = f"; auto ended with {active:.0f} pool worker(s) active" if active else ""
    return [f"n_cpu='auto' ÷ the better fixed rule ({best.row}), wall time: "
            f"{auto.median_seconds / (best.median_seconds or 1):.3f}x{shown}"]


def checkpoint_lines(summaries: list[Summary]) -> list[str]:
    """W3: a checkpoint every second against none, the file's size, the time to resume."""
    rows = {s.row: s for s in summaries if s.system == "blpipe" and s.status == "ok"}
    with_ = next((s for s in rows.values() if "ckpt_s" in s.row), None)
    without = next((s for s in rows.values() if "ckpt_s" not in s.row and "@" not in s.row),
                   None)
    if not (with_ and without and with_.median_seconds and without.median_seconds):
        return []
    return [f"checkpoints ({with_.row}) ÷ none ({without.row}), wall time: "
            f"{with_.median_seconds / without.median_seconds:.3f}x; a checkpoint: "
            f"{with_.extra.get('checkpoint_bytes', 0):,.0f} bytes; resuming from it (read, "
            f"restore, start the workers, end): {with_.extra.get('resume_s', 0) * 1e3:.0f} ms"]


def group_lines(summaries: list[Summary]) -> list[str]:
    """W8: each system's best grouped row against the same system called per item."""
    lines = []
    for system in ("serial", "blpipe", "pool"):
        rows = [s for s in summaries if s.system == system]
        grouped = _fastest([s for s in rows if "group=" in s.row])
        per_item = _fastest([s for s in rows if "group=" not in s.row])
        if grouped and per_item and grouped.median_seconds and per_item.median_seconds:
            lines.append(f"{system}: grouped by {wl.GROUP} ({grouped.row}) is "
                         f"{per_item.median_seconds / grouped.median_seconds:.1f}x as fast "
                         f"as called per item ({per_item.row})")
    return lines


def _ratio(key: str, b: Summary | None, other: Summary | None,
           ratios: dict[str, dict[str, Any]]) -> str | None:
    """``b``'s median wall time ÷ ``other``'s, recorded in ``ratios`` under ``key``, and
    shown as ``1.23x (b-seconds, other-seconds)``; ``None`` when either has no correct run."""
    if not (b and other and b.median_seconds and other.median_seconds):
        return None
    ratio = b.median_seconds / other.median_seconds
    ratios[key] = {"ratio": ratio, "blpipe_row": b.row, "blpipe_s": b.median_seconds,
                   "other_row": other.row, "other_s": other.median_seconds}
    return f"{ratio:.2f}x ({{}} {b.median_seconds:.3f} s, {{}} {other.median_seconds:.3f} s)"


def floor_lines(summaries: list[Summary], ratios: dict[str, dict[str, Any]]) -> list[str]:
    """W1: each blpipe row ÷ the floor row of the same batch_size, wall time (medians)."""
    lines = []
    ok = {s.row: s for s in summaries if s.status == "ok"}
    for f in (s for s in summaries if s.system == "floor"):
        bs = f.row.removeprefix("floor[bs=").removesuffix("]")
        key = f"{f.workload} blpipe/floor bs={bs}"
        shown = _ratio(key, ok.get(f"blpipe[bs={bs}]"), ok.get(f.row), ratios)
        if shown is None:
            lines.append(f"blpipe ÷ floor at bs={bs}: — (a row has no correct run)")
            continue
        ratios[key]["target"] = FLOOR_TARGET
        lines.append(f"blpipe ÷ floor at bs={bs}: " + shown.format("blpipe", "floor"))
    return lines


def pool_lines(name: str, summaries: list[Summary],
               ratios: dict[str, dict[str, Any]]) -> list[str]:
    """``--floor``, W3 and W5: the fastest blpipe row (without checkpoints) ÷ the fastest
    Pool row, wall time (medians); on W5 per start method."""
    lines = []
    for match in (None, *systems.START_METHODS):
        b = _fastest([s for s in summaries if s.system == "blpipe" and s.match == match
                      and "ckpt_s" not in s.row])
        p = _fastest([s for s in summaries if s.system == "pool" and s.match == match])
        what = name + (f" {match}" if match else "")
        shown = _ratio(f"{what} blpipe/pool", b, p, ratios)
        if b and p and shown:
            kind = "start-stop" if name == "W5" else "wall"
            lines.append(f"{what}: blpipe ÷ Pool {kind} " + shown.format(b.row, p.row))
    return lines


def render(workload: Workload, summaries: list[Summary], env: dict[str, str], cfg: Config,
           n: int, markdown: bool, floor_mode: bool = False,
           ratios: dict[str, dict[str, Any]] | None = None) -> str:
    what = f"{workload.name} {workload.title}: {workload.summary}; n = {n:,}"
    if workload.name in cfg.iterations:
        what += (f"; CPU stage ≈ {workload.spin_seconds * 1e3:g} ms "
                 f"({cfg.iterations[workload.name]:,} iterations)")
    if workload.pss:
        what += "; the peak RSS column holds PSS here (shared memory counted once)"
    dask = workload.name in DASK_WORKLOADS
    header = [env_line(env), versions_line(env, dask), what]
    body = table_rows(summaries)
    notes = [f"{s.row}: {note}" for s in summaries for note in s.notes]
    comparisons = [*comparison_lines(summaries), *ref_lines(summaries),
                   *(dask_lines(summaries) if dask else [])]
    if workload.name == "W6":
        comparisons += budget_lines(summaries)
    if workload.name in ("W7", "W7chain"):
        comparisons += auto_lines(summaries)
    if workload.name == "W8":
        comparisons += group_lines(summaries)
    if workload.name == "W3":
        comparisons += checkpoint_lines(summaries)
    ratios = {} if ratios is None else ratios
    comparisons += floor_lines(summaries, ratios)
    if floor_mode and workload.name in ("W3", "W5"):
        comparisons += pool_lines(workload.name, summaries, ratios)
    lines: list[str] = []
    if markdown:
        lines.append(f"### {workload.name} — {workload.title}")
        lines.append("")
        lines += [f"{h}  " for h in header[:-1]] + [header[-1], ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(COLUMNS) - 1)) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        if comparisons:
            lines += ["", *(f"- {c}" for c in comparisons)]
        if notes:
            lines += ["", *(f"- {note}" for note in notes)]
    else:
        widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
        lines += [*header, ""]
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True))))
        lines.append("  ".join("-" * w for w in widths))
        for cells in body:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
        if comparisons:
            lines += ["", *(f"  {c}" for c in comparisons)]
        if notes:
            lines += ["", *(f"  note: {note}" for note in notes)]
    return "\n".join(lines) + "\n"


# --- driver -----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark blpipe against serial code, multiprocessing.Pool, "
                    "blllib, pypeln and mpire.")
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (default 5)")
    parser.add_argument("--workloads", default=None,
                        help="comma-separated, e.g. W1,W3 (default: all but the opt-in "
                             "W2dask, W1dask, W6, W7, W7chain, W8, W9, W10, W10big; 'dask' "
                             "names W2dask and W1dask, 'auto' W7 and W7chain, 'shapes' "
                             "W8 to W10big)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated, e.g. blpipe,pool (serial is always run; "
                             f"default: all but floor; choose from {', '.join(systems.SYSTEMS)})")
    parser.add_argument("--floor", action="store_true",
                        help=f"blpipe next to its floor: workloads {','.join(FLOOR_WORKLOADS)} "
                             f"(unless --workloads), systems {','.join(FLOOR_SYSTEMS)} (unless "
                             f"--systems), and under the tables blpipe ÷ floor on W1 per "
                             f"batch_size, blpipe ÷ Pool on W3 and W5")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a run counts as a hang "
                             "(default 120, 30 with --quick; W5 and blllib on W3 less)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the items: smoke run")
    parser.add_argument("--slow", type=float, default=60.0,
                        help="a row whose first run takes longer than this many seconds "
                             "is not repeated (default 60)")
    parser.add_argument("--retry-hangs", action="store_true",
                        help="run a row again in later repeats after it hung or failed")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--ref", type=Path,
                        help="another blpipe checkout (say, a git worktree of the commit "
                             "before a change): each blpipe row also runs on it, interleaved, "
                             "as a 'blpipe@ref' row, and its line compares the two")
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 30.0 if args.quick else 120.0
    if args.workloads is None:
        args.workloads = ",".join(FLOOR_WORKLOADS if args.floor else DEFAULT_WORKLOADS)
    if args.systems is None:
        args.systems = ",".join(FLOOR_SYSTEMS if args.floor else systems.DEFAULT_SYSTEMS)
    names: list[str] = []
    for w in (w.strip() for w in args.workloads.split(",")):
        if w and w not in WORKLOADS and w not in WORKLOAD_GROUPS:
            parser.error(f"unknown workload {w!r}; choose from "
                         f"{', '.join([*WORKLOADS, *WORKLOAD_GROUPS])}")
        names += [name for name in WORKLOAD_GROUPS.get(w, (w,)) if name and name not in names]
    args.workloads = names
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in args.systems:
        if s not in systems.SYSTEMS:
            parser.error(f"unknown system {s!r}; choose from {', '.join(systems.SYSTEMS)}")
    if "serial" not in args.systems:
        args.systems.insert(0, "serial")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def unavailable(system: str) -> str | None:
    """Why ``system`` cannot run here, or ``None`` when it can (serial and pool always can)."""
    if system in ("serial", "pool", "floor"):
        return None
    if system != "blpipe-dask":
        return None if _findable(system) else f"{system} is not installed"
    for module in ("dask", "distributed"):
        if not _findable(module):
            return (f"{module} is not importable (python -m pip install distributed, or "
                    f"blpipe[dask]): the Dask row is skipped")
    try:
        import inspect

        import blpipe

        takes_executor = "executor" in inspect.signature(blpipe.Pipeline).parameters
    except Exception as e:
        return f"blpipe could not be imported ({type(e).__name__}: {e})"
    return None if takes_executor else "this blpipe's Pipeline takes no executor= argument"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(args: argparse.Namespace) -> Config:
    """Byte-compile blpipe, calibrate the CPU stages and compute the serial
    reference digests."""
    # As pip install does: without it, where PYTHONDONTWRITEBYTECODE is set, every
    # worker started by spawn or forkserver compiles blpipe's modules from source
    # (tens of ms each), while the standard library's are compiled already.
    for checkout in (HERE.parent, *([args.ref] if args.ref else [])):
        compileall.compile_dir(str(Path(checkout) / "blpipe"), quiet=1)
    cfg = Config()
    for name in args.workloads:
        w = WORKLOADS[name]
        if w.spin_seconds is not None:
            cfg.iterations[name] = wl.calibrate_spin(w.spin_seconds)
    for name in args.workloads:
        t0 = time.perf_counter()
        cfg.references[name] = wl.reference_digest(name, WORKLOADS[name].n(args.quick),
                                                   cfg.iterations.get(name, 0))
        log(f"reference {name}: {cfg.references[name]} ({time.perf_counter() - t0:.1f} s)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    log(env_line(env))
    log(versions_line(env))
    cfg = prepare(args)
    plan = {name: [r for r in systems.rows_for(WORKLOADS[name]) if r.system in args.systems]
            for name in args.workloads}
    if args.ref:
        plan = {name: [*rows, *(dataclasses.replace(r, system=REF, label=r.label.replace(
            "blpipe", REF, 1)) for r in rows if r.system == "blpipe")]
            for name, rows in plan.items()}
    used = [s for s in args.systems if any(r.system == s for rows in plan.values() for r in rows)]
    missing = {s: why for s in used if (why := unavailable(s))}
    for s, why in missing.items():
        log(f"skipping {s}: {why}")
    plan = {name: [dataclasses.replace(r, na=missing.get(r.system)) for r in rows]
            for name, rows in plan.items()}
    runs: list[Run] = []
    dropped: set[tuple[str, str]] = set()  # rows not repeated (hung, failed or slow)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="blpipe-bench-") as tmp:
        scratch = Path(tmp)
        for repeat in range(1, args.repeats + 1):
            for name in args.workloads:
                workload = WORKLOADS[name]
                if workload.max_repeats is not None and repeat > workload.max_repeats:
                    continue
                for row in plan[name]:
                    if row.na or (name, row.label) in dropped:
                        continue
                    run = measure_once(workload, row, repeat, cfg, args, scratch)
                    runs.append(run)
                    shown = f"{run.seconds:.3f} s" if run.seconds is not None else "-"
                    log(f"[{repeat}/{args.repeats}] {name} {row.label}: {run.status} {shown} "
                        f"peak {run.peak_rss_mb:.0f} MB {run.note}".rstrip())
                    last = repeat == min(args.repeats, workload.max_repeats or args.repeats)
                    if run.status in ("hang", "error") and not args.retry_hangs:
                        dropped.add((name, row.label))
                        if not last:
                            run.add_note("not retried")
                    elif run.wall_seconds and run.wall_seconds > args.slow and repeat == 1:
                        dropped.add((name, row.label))
                        if not last:
                            run.add_note(f"measured once (first run took over {args.slow:g} s)")
    log(f"total {time.perf_counter() - started:.0f} s")

    all_summaries: list[Summary] = []
    ratios: dict[str, dict[str, Any]] = {}
    for name in args.workloads:
        workload = WORKLOADS[name]
        n = workload.n(args.quick)
        summaries = summarize(workload, plan[name], [r for r in runs if r.workload == name], n)
        all_summaries += summaries
        print(render(workload, summaries, env, cfg, n, args.markdown, args.floor, ratios))
    if args.json:
        args.json.write_text(json.dumps({
            "environment": env,
            "arguments": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
            "calibration": cfg.iterations,
            "references": cfg.references,
            "runs": [asdict(r) for r in runs],
            "summary": [asdict(s) for s in all_summaries],
            "ratios": ratios,  # blpipe ÷ floor (W1) and ÷ Pool (W3, W5 with --floor), wall
        }, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
