"""The thread policy: cores from affinity and cgroup quota, busy cores, our workers, and the user's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bgflow_se3.threads as threads


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    monkeypatch.delenv(threads.ENV_SETTING, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_user_threads", None)
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setattr(threads, "_STARTUP_TORCH_THREADS", before)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, busy, workers, expected",
    [(2, 0, 0, 2), (2, 1, 0, 1), (2, 0, 1, 1), (2, 0, 2, 1), (8, 2, 2, 4), (8, 9, 0, 1), (16, 0, 0, 16)],
)
def test_torch_threads_are_the_free_cores(cores, busy, workers, expected):
    plan = threads.plan_threads(workers, cores=cores, busy=busy)
    assert plan.torch_threads == expected
    assert plan.openmm_threads == 1
    assert f"{cores} usable cores" in plan.reason


def test_the_one_setting_wins(monkeypatch):
    monkeypatch.setenv(threads.ENV_SETTING, "3")
    assert threads.plan_threads(0, cores=2, busy=1).torch_threads == 3
    threads.set_threads(1)
    plan = threads.plan_threads(0, cores=8, busy=0)
    assert (plan.torch_threads, plan.reason) == (1, "set_threads()")
    threads.set_threads(None)
    assert threads.plan_threads(0, cores=2, busy=0).torch_threads == 3
    monkeypatch.setenv(threads.ENV_SETTING, "zero")
    with pytest.raises(ValueError, match=threads.ENV_SETTING):
        threads.plan_threads(0, cores=2, busy=0)
    with pytest.raises(ValueError, match="positive"):
        threads.set_threads(0)


def test_omp_num_threads_and_a_callers_choice_are_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.plan_threads(0, cores=8, busy=0).reason == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(threads._STARTUP_TORCH_THREADS + 1)  # the caller chose
    plan = threads.plan_threads(0, cores=8, busy=0)
    assert plan.torch_threads == threads._STARTUP_TORCH_THREADS + 1
    assert "caller" in plan.reason


def test_apply_sets_torch_and_may_revise_its_own_choice(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "_busy_cores", lambda cores: 0)
    plan = threads.apply_thread_policy(n_workers=1)
    assert torch.get_num_threads() == plan.torch_threads == 1
    plan = threads.apply_thread_policy(n_workers=0)  # our own earlier choice is not a user's choice
    assert torch.get_num_threads() == plan.torch_threads == 2


def test_usable_cores_follow_affinity_and_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    assert threads.usable_cores() == 4
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 1.5)
    assert threads.usable_cores() == 2
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 0.2)
    assert threads.usable_cores() == 1


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the quota at tmp_path: an empty /proc/self, no cgroup mounts; the affinity mask is 4 CPUs."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    monkeypatch.setattr(threads, "PROC_SELF", tmp_path / "proc" / "self")
    monkeypatch.setattr(threads, "CGROUP2_MOUNT", tmp_path / "no_cgroup2")
    monkeypatch.setattr(threads, "CGROUP1_CPU_MOUNT", tmp_path / "no_cgroup1")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    return tmp_path


def write_proc(root: Path, cgroup: str, mountinfo: str = "") -> None:
    """The fake /proc/self/cgroup and /proc/self/mountinfo."""
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    if mountinfo:
        (root / "proc" / "self" / "mountinfo").write_text(mountinfo)


def mountinfo_line(point: Path, fstype: str, options: str, root: str = "/") -> str:
    return f"35 31 0:32 {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - {fstype} {fstype} {options}\n"


def write_cpu_max(directory: Path, cpu_max: str | None) -> None:
    """One cgroup v2 directory, with cpu.max (none for None)."""
    directory.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (directory / "cpu.max").write_text(f"{cpu_max}\n")


def write_cfs(directory: Path, quota: int, period: int = 100000) -> None:
    """One cgroup v1 cpu-controller directory (cpu.cfs_quota_us, cpu.cfs_period_us)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_cgroup_v2_quota_of_its_own_cgroup_and_the_tightest_ancestor(fake_root):
    cg = fake_root / "sys" / "fs" / "cgroup"
    write_proc(fake_root, "0::/slurm/job_1/step_0\n", mountinfo_line(cg, "cgroup2", "rw,nsdelegate"))
    write_cpu_max(cg, None)  # the root cgroup has no cpu.max
    write_cpu_max(cg / "slurm", "max 100000")
    write_cpu_max(cg / "slurm" / "job_1", "50000 100000")  # half a core on the job: binds its step too
    write_cpu_max(cg / "slurm" / "job_1" / "step_0", "300000 100000")  # a looser child quota
    assert threads._cgroup_cpu_quota() == pytest.approx(0.5)
    assert threads.usable_cores() == 1
    # the child's own quota binds once it is the tighter one; nothing at the job level: the child's alone
    write_cpu_max(cg / "slurm" / "job_1", "max 100000")
    write_cpu_max(cg / "slurm" / "job_1" / "step_0", "250000 100000")
    assert threads._cgroup_cpu_quota() == pytest.approx(2.5)
    assert threads.usable_cores() == 3


def test_cgroup_v2_unlimited_leaves_the_affinity_mask(fake_root, monkeypatch):
    cg = fake_root / "cg"
    write_proc(fake_root, "0::/job\n", mountinfo_line(cg, "cgroup2", "rw"))
    write_cpu_max(cg, None)
    write_cpu_max(cg / "job", "max 100000")
    assert threads._cgroup_cpu_quota() is None
    assert threads.usable_cores() == 4
    # no mountinfo: CGROUP2_MOUNT is assumed
    write_cpu_max(cg / "job", "150000 100000")
    (fake_root / "proc" / "self" / "mountinfo").unlink()
    monkeypatch.setattr(threads, "CGROUP2_MOUNT", cg)
    assert threads._cgroup_cpu_quota() == pytest.approx(1.5)
    assert threads.usable_cores() == 2


def test_cgroup_v1_cpu_cpuacct_mount(fake_root, monkeypatch):
    root = fake_root / "sys" / "fs" / "cgroup"
    cpu = root / "cpu,cpuacct"
    cgroup = "11:cpuset:/slurm/uid_1/job_1\n4:memory:/slurm/uid_1/job_1\n3:cpu,cpuacct:/slurm/uid_1/job_1/step_0\n"
    mounts = (
        mountinfo_line(root / "cpuset", "cgroup", "rw,cpuset")
        + mountinfo_line(cpu, "cgroup", "rw,cpu,cpuacct")
        + mountinfo_line(root / "memory", "cgroup", "rw,memory")
        + mountinfo_line(root / "unified", "cgroup2", "rw")
    )
    write_proc(fake_root, cgroup + "0::/\n", mounts)
    (root / "unified").mkdir(parents=True)
    write_cfs(root / "cpuset" / "slurm" / "uid_1" / "job_1", 50000)  # not the cpu controller: ignored
    write_cfs(cpu, -1)  # v1's "no quota"
    write_cfs(cpu / "slurm" / "uid_1", -1)
    write_cfs(cpu / "slurm" / "uid_1" / "job_1", -1)
    write_cfs(cpu / "slurm" / "uid_1" / "job_1" / "step_0", -1)
    assert threads._cgroup_cpu_quota() is None
    assert threads.usable_cores() == 4
    write_cfs(cpu / "slurm" / "uid_1" / "job_1", 100000, 50000)  # 2 cores on the job
    assert threads._cgroup_cpu_quota() == pytest.approx(2.0)
    assert threads.usable_cores() == 2
    # no mountinfo: CGROUP1_CPU_MOUNT is assumed
    (fake_root / "proc" / "self" / "mountinfo").unlink()
    monkeypatch.setattr(threads, "CGROUP1_CPU_MOUNT", cpu)
    assert threads._cgroup_cpu_quota() == pytest.approx(2.0)


def test_no_proc_no_quota(fake_root):
    assert threads._cgroup_cpu_quota() is None  # no /proc/self/cgroup
    assert threads.usable_cores() == 4


def test_busy_cores_count_other_work_on_our_cpus(monkeypatch):
    # two CPUs, 100 jiffies each in the window: 150 busy jiffies = 1.5 cores, of which we used 0.4
    samples = iter([(1000, 4000), (1150, 4200)])
    own = iter([10.0, 10.1])
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda cpus: next(samples))
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    clock = iter([0.0, 0.25])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: next(clock))
    assert threads._busy_cores(2) == 1  # 1.5 - 0.4 = 1.1 -> 1


def test_busy_cores_fall_back_to_the_load_average(monkeypatch):
    def no_proc(cpus):
        raise OSError("no /proc/stat")

    monkeypatch.setattr(threads, "_cpu_jiffies", no_proc)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.7, 0.0, 0.0))
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 1)
    assert threads._busy_cores(4) == 2
    assert threads._busy_cores(1) == 1


def test_a_busy_neighbour_is_seen(tmp_path):
    # a real spinning process on one of our CPUs shows up as (at least) one busy core within a quarter second
    import subprocess
    import sys

    cpus = sorted(threads.os.sched_getaffinity(0))
    code = f"import os, time; os.sched_setaffinity(0, {{{cpus[0]}}}); t = time.time()\nwhile time.time() - t < 5: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        threads.time.sleep(0.5)
        assert threads._busy_cores(len(cpus)) >= 1
    finally:
        spinner.kill()
        spinner.wait()
