"""How many CPU threads torch may use: from the CPUs this process may actually run on, and from where it runs.

On a busy machine an intra-op thread that the OS has descheduled stalls every parallel kernel until it runs again,
so asking for more threads than there are free CPUs turns seconds into minutes (PERFORMANCE.md). Hence:

* :func:`available_cpus` — the CPUs this process may use: its affinity mask (``os.sched_getaffinity``, which
  ``taskset`` / Slurm / Docker ``--cpuset-cpus`` set) and its cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; Docker ``--cpus``, Kubernetes limits), whichever is smaller, and
  never more than an explicit ``OMP_NUM_THREADS``.
* :func:`free_cpus` — those CPUs less the ones other processes keep busy right now (``/proc/stat`` busy time
  less this process's own CPU time): with two busy-loop jobs beside it on 2 CPUs a command runs 1 thread, which
  never waits, instead of 2 that stall every kernel.
* :func:`torch_threads` — intra-op threads for a context: the main process (CLI, scripts) uses the free CPUs; a
  napari worker thread leaves one more to the event loop and the canvas; a Dask worker gets its share.
* :func:`worker_layout` — (workers, threads per worker) for a cohort's local cluster, never oversubscribing.
* :func:`using_torch_threads` — a context manager that sets torch's threads for a block and restores them;
  :func:`capped_torch_threads` only lowers them to :func:`available_cpus` (library entry points).

Lowest layer (beside ``errors`` and ``files``): imports torch only inside the functions that set threads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONTEXTS = ("main", "napari", "dask")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
BIG_MACHINE_CPUS = 8  # from here on a cohort worker gets 2 torch threads (fewer processes, less memory)


# ---------------------------------------------------------------------- what the OS allows
def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the OS has no affinity call)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(text: str | None) -> float | None:
    """CPUs of a cgroup v2 ``cpu.max`` line (``"max 100000"`` = no limit, ``"150000 100000"`` = 1.5)."""
    if not text:
        return None
    parts = text.split()
    try:
        if parts[0] == "max":
            return None
        quota, period = float(parts[0]), float(parts[1]) if len(parts) > 1 else 100000.0
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs of cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota −1 = no limit)."""
    try:
        quota, period = float(quota_text), float(period_text)
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_self_cgroup: Path, controller: str | None) -> list[Path]:
    """This process's cgroup folder and its parents up to ``root`` (limits of any ancestor apply too)."""
    text = _read(proc_self_cgroup) or ""
    rel = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller is None and hid == "0" and controllers == "":
            rel = path
        elif controller is not None and controller in controllers.split(","):
            rel = path
    dirs = [root]
    if rel and rel != "/":
        parts = [p for p in rel.strip("/").split("/") if p]
        dirs = [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def cgroup_cpus(root=CGROUP_ROOT, proc_self_cgroup=PROC_SELF_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half), or None when unlimited / unknown.

    cgroup v2: the smallest ``cpu.max`` of the process's cgroup and its ancestors. cgroup v1: ``cpu.cfs_quota_us``
    / ``cpu.cfs_period_us`` of the ``cpu`` controller (mounted as ``cpu``, ``cpu,cpuacct`` or ``cpuacct,cpu``).
    """
    root, proc_self_cgroup = Path(root), Path(proc_self_cgroup)
    if (root / "cgroup.controllers").exists():  # v2, unified
        limits = [_quota_v2(_read(d / "cpu.max")) for d in _own_cgroup_dirs(root, proc_self_cgroup, None)]
        limits = [x for x in limits if x is not None]
        return min(limits) if limits else None
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        if not base.is_dir():
            continue
        limits = [_quota_v1(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
                  for d in _own_cgroup_dirs(base, proc_self_cgroup, "cpu")]
        limits = [x for x in limits if x is not None]
        return min(limits) if limits else None
    return None


def _env_threads() -> int | None:
    """An explicit ``OMP_NUM_THREADS`` (a positive integer), which the user meant as a limit."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def available_cpus(*, root=CGROUP_ROOT, proc_self_cgroup=PROC_SELF_CGROUP, respect_env: bool = True) -> int:
    """CPUs this process may use (≥ 1): min(affinity, cgroup quota rounded down, ``OMP_NUM_THREADS`` if set)."""
    n = affinity_cpus()
    quota = cgroup_cpus(root, proc_self_cgroup)
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 1e-9)))
    env = _env_threads() if respect_env else None
    if env is not None:
        n = min(n, env)
    return max(1, n)


# ---------------------------------------------------------------------- what other processes leave free
PROC_STAT = Path("/proc/stat")
LOAD_SAMPLE_S = 0.1  # a fresh sample of /proc/stat when the last one is missing or stale
LOAD_STALE_S = 30.0
_last_sample: tuple[float, float, dict[int, tuple[int, int]]] | None = None
_last_value: float | None = None


def _cpu_jiffies(text: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """{cpu: (busy, total) jiffies} of the ``cpuN`` lines of /proc/stat for ``cpus``."""
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in fields[:8]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def _sample(proc_stat: Path) -> tuple[float, float, dict[int, tuple[int, int]]] | None:
    text = _read(proc_stat)
    if not text:
        return None
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    t = os.times()
    return time.monotonic(), t.user + t.system, _cpu_jiffies(text, cpus)


def busy_elsewhere(proc_stat=PROC_STAT, *, fresh: bool = False) -> float | None:
    """CPUs of this process's affinity mask kept busy by *other* processes lately (``/proc/stat`` busy time minus
    this process's own CPU time), or None where the OS does not say.

    Measured since the previous call (no waiting), or over a fresh ``LOAD_SAMPLE_S`` when there is no recent one
    (or ``fresh``). A busy-loop process counts as one CPU; this process's own threads count as none.
    """
    global _last_sample, _last_value
    proc_stat = Path(proc_stat)
    prev = _last_sample
    now = time.monotonic()
    if not fresh and prev is not None and now - prev[0] < LOAD_SAMPLE_S and _last_value is not None:
        return _last_value  # asked again within one sample: the last answer
    if fresh or prev is None or not LOAD_SAMPLE_S <= now - prev[0] <= LOAD_STALE_S:
        prev = _sample(proc_stat)
        if prev is None:
            return None
        time.sleep(LOAD_SAMPLE_S)
    cur = _sample(proc_stat)
    if cur is None:
        return None
    _last_sample = cur
    d_busy = sum(cur[2][c][0] - prev[2][c][0] for c in cur[2] if c in prev[2])
    d_total = sum(cur[2][c][1] - prev[2][c][1] for c in cur[2] if c in prev[2])
    if d_total <= 0 or not cur[2]:
        return None
    wall = max(cur[0] - prev[0], 1e-6)
    busy_cpus = d_busy / d_total * len(cur[2])  # jiffies are per CPU: the busy share × the CPUs counted
    own_cpus = (cur[1] - prev[1]) / wall
    _last_value = max(0.0, busy_cpus - own_cpus)
    return _last_value


def free_cpus(**kw) -> int:
    """:func:`available_cpus` less the CPUs other processes keep busy (≥ 1): the threads that will not wait."""
    n = available_cpus(**kw)
    others = busy_elsewhere()
    if others is None:
        return n
    return max(1, min(n, int(math.floor(n - others + 0.5))))


# ---------------------------------------------------------------------- choices
def torch_threads(context: str = "main", *, n_workers: int = 1, cpus: int | None = None) -> int:
    """Intra-op torch threads for ``context`` (≥ 1).

    ``"main"``: the main process of a CLI command or script — every CPU not kept busy by other processes.
    ``"napari"``: a napari worker thread — the same, less one CPU left to the GUI's event loop and rendering.
    ``"dask"``: one task at a time in each of ``n_workers`` Dask workers on this machine — an equal share of
    the available CPUs (the workers are the load; other processes are not measured).
    ``cpus``: the CPUs to share (default: :func:`free_cpus`, or :func:`available_cpus` for ``"dask"``).
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown thread context '{context}'; choose one of: {', '.join(CONTEXTS)}")
    if int(n_workers) != n_workers or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if cpus is not None:
        n = max(1, int(cpus))
    else:
        n = available_cpus() if context == "dask" else free_cpus()
    if context == "napari":
        return max(1, n - 1)
    if context == "dask":
        return max(1, n // int(n_workers))
    return n


def worker_layout(n_cpus: int | None = None, n_gpus: int = 0, n_tasks: int | None = None) -> tuple[int, int]:
    """(workers, torch threads per worker) for a local cluster: workers × threads ≤ ``n_cpus`` always.

    Without GPUs, one single-threaded worker per CPU on small machines (independent processes do not wait on
    each other when the machine is busy), two threads per worker from 8 CPUs on (half the processes, half the
    memory). With GPUs, one worker per GPU (each task then runs on its own device), the CPUs shared among them.
    ``n_tasks`` caps the workers (no idle processes for a cohort of 3). ``n_cpus`` defaults to
    :func:`available_cpus`.
    """
    cpus = available_cpus() if n_cpus is None else max(1, int(n_cpus))
    if n_gpus and n_gpus > 0:
        workers = min(int(n_gpus), cpus)
    else:
        per = 2 if cpus >= BIG_MACHINE_CPUS else 1
        workers = cpus // per
    if n_tasks is not None:
        workers = min(workers, max(1, int(n_tasks)))
    workers = max(1, workers)
    return workers, max(1, cpus // workers)


# ---------------------------------------------------------------------- setting them
def set_torch_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n`` (≥ 1); returns the previous number."""
    import torch

    previous = torch.get_num_threads()
    n = max(1, int(n))
    if n != previous:
        torch.set_num_threads(n)
    return previous


@contextmanager
def using_torch_threads(n: int | str = "main", *, n_workers: int = 1) -> Iterator[int]:
    """Run a block with ``n`` torch threads (a number, or a context for :func:`torch_threads`), then restore them.

    torch's thread count is process-wide: in a worker thread it also applies to other threads' torch work
    while the block runs.
    """
    count = torch_threads(n, n_workers=n_workers) if isinstance(n, str) else max(1, int(n))
    previous = set_torch_threads(count)
    try:
        yield count
    finally:
        set_torch_threads(previous)


@contextmanager
def capped_torch_threads() -> Iterator[int]:
    """torch's current threads capped at :func:`free_cpus` for a block (never raised), then restored: library entry
    points use it so a caller's choice stands, but a cgroup quota or affinity mask is never exceeded (torch by
    itself counts the host's cores) and CPUs other processes keep busy are not waited for. Called often (every
    training record, every prediction), it measures the load since its previous call without waiting."""
    import torch

    with using_torch_threads(min(torch.get_num_threads(), free_cpus())) as n:
        yield n


__all__ = ["CONTEXTS", "affinity_cpus", "available_cpus", "busy_elsewhere", "capped_torch_threads", "cgroup_cpus",
           "free_cpus", "set_torch_threads", "torch_threads", "using_torch_threads", "worker_layout"]
