"""threads.py: CPUs from affinity and cgroup quotas (fake cgroup trees), thread choices per context, layouts."""

from __future__ import annotations

import os

import pytest
import torch

from napari_rverdict import threads
from napari_rverdict.threads import (available_cpus, cgroup_cpus, torch_threads, using_torch_threads,
                                     worker_layout)


def _v2(tmp_path, own: str | None, root: str | None = None, rel: str = "/app.slice/job"):
    """A fake unified (v2) hierarchy: ``root`` cpu.max at the mount, ``own`` at the process's cgroup."""
    mount = tmp_path / "cgroup"
    (mount / rel.strip("/")).mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("cpu io memory\n")
    if root is not None:
        (mount / "cpu.max").write_text(root + "\n")
    if own is not None:
        (mount / rel.strip("/") / "cpu.max").write_text(own + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{rel}\n")
    return mount, proc


def test_cgroup_v2_quota_in_cpus(tmp_path):
    mount, proc = _v2(tmp_path, "150000 100000")
    assert cgroup_cpus(mount, proc) == pytest.approx(1.5)


def test_cgroup_v2_unlimited_and_ancestor_limit(tmp_path):
    mount, proc = _v2(tmp_path / "a", "max 100000")
    assert cgroup_cpus(mount, proc) is None
    mount, proc = _v2(tmp_path / "b", "max 100000", root="300000 100000")  # the parent's limit applies
    assert cgroup_cpus(mount, proc) == pytest.approx(3.0)
    mount, proc = _v2(tmp_path / "c", "100000 100000", root="400000 100000")  # the smaller one wins
    assert cgroup_cpus(mount, proc) == pytest.approx(1.0)


def test_cgroup_v2_garbage_is_no_limit(tmp_path):
    mount, proc = _v2(tmp_path, "lots")
    assert cgroup_cpus(mount, proc) is None


def test_cgroup_v1_quota(tmp_path):
    mount = tmp_path / "cgroup"
    own = mount / "cpu,cpuacct" / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text("250000\n")
    (own / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpus(mount, proc) == pytest.approx(2.5)
    (own / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(mount, proc) is None


def test_no_cgroup_mount_is_no_limit(tmp_path):
    assert cgroup_cpus(tmp_path / "nothing", tmp_path / "nothing") is None


def test_available_cpus_takes_the_smallest_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    mount, proc = _v2(tmp_path, "250000 100000")
    assert available_cpus(root=mount, proc_self_cgroup=proc) == 2  # 2.5 CPUs of quota → 2 threads
    mount, proc = _v2(tmp_path / "x", "50000 100000")
    assert available_cpus(root=mount, proc_self_cgroup=proc) == 1  # half a CPU still runs one thread
    mount, proc = _v2(tmp_path / "y", "max 100000")
    assert available_cpus(root=mount, proc_self_cgroup=proc) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert available_cpus(root=mount, proc_self_cgroup=proc) == 3
    assert available_cpus(root=mount, proc_self_cgroup=proc, respect_env=False) == 8


def test_available_cpus_never_exceeds_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity call on this OS")
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_torch_threads_per_context():
    assert torch_threads("main", cpus=4) == 4
    assert torch_threads("napari", cpus=4) == 3
    assert torch_threads("napari", cpus=1) == 1
    assert torch_threads("dask", n_workers=3, cpus=8) == 2
    assert torch_threads("dask", n_workers=16, cpus=8) == 1
    with pytest.raises(ValueError, match="unknown thread context"):
        torch_threads("gpu")


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 7, 8, 12, 16, 64, 96])
@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
@pytest.mark.parametrize("tasks", [None, 1, 3, 1000])
def test_layout_never_oversubscribes(cpus, gpus, tasks):
    workers, per = worker_layout(cpus, gpus, tasks)
    assert workers >= 1 and per >= 1
    assert workers * per <= cpus
    if tasks is not None:
        assert workers <= tasks
    if gpus:
        assert workers <= gpus
    else:
        assert workers * per > cpus - workers  # fewer than one CPU a worker left idle (rounding)


def test_layout_examples():
    assert worker_layout(2) == (2, 1)
    assert worker_layout(16) == (8, 2)
    assert worker_layout(16, n_gpus=2) == (2, 8)
    assert worker_layout(16, n_tasks=3) == (3, 5)


def test_using_torch_threads_restores():
    before = torch.get_num_threads()
    with using_torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with using_torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_capped_threads_only_lower(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "free_cpus", lambda **kw: 1)
    with threads.capped_torch_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(threads, "free_cpus", lambda **kw: 64)
    with threads.capped_torch_threads() as n:
        assert n == before  # a caller's (lower) choice stands


PROC_STAT = """cpu  500 0 300 1000 20 0 0 0 0 0
cpu0 100 0 50 400 10 0 0 0 0 0
cpu1 400 0 250 600 10 0 0 0 0 0
cpu7 1 0 1 1 0 0 0 0 0 0
intr 12345
"""


def test_proc_stat_per_cpu_busy_and_total_jiffies():
    got = threads._cpu_jiffies(PROC_STAT, {0, 1})
    assert got == {0: (150, 560), 1: (650, 1260)}  # idle + iowait are not busy; cpu7 is not ours


def test_busy_elsewhere_subtracts_this_process(monkeypatch):
    import time

    t0 = time.monotonic() - 1.0
    monkeypatch.setattr(threads, "_last_sample", (t0, 10.0, {0: (0, 0), 1: (0, 0)}))
    # over 1 s: CPU 0 fully busy, CPU 1 half busy (1.5 CPUs), of which this process used 0.5 CPU-seconds
    monkeypatch.setattr(threads, "_sample", lambda path: (t0 + 1.0, 10.5, {0: (100, 100), 1: (50, 100)}))
    assert threads.busy_elsewhere() == pytest.approx(1.0)
    monkeypatch.setattr(threads, "_sample", lambda path: None)
    assert threads.busy_elsewhere(fresh=True) is None  # no /proc/stat: no claim


def test_free_cpus_leave_out_what_others_keep_busy(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda **kw: 4)
    for others, free in ((None, 4), (0.0, 4), (0.4, 4), (2.0, 2), (2.6, 1), (7.0, 1)):
        monkeypatch.setattr(threads, "busy_elsewhere", lambda others=others: others)
        assert threads.free_cpus() == free
