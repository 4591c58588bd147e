"""The thread policy: cores from affinity and cgroup quota, busy cores, our workers, and the user's settings."""

from __future__ import annotations

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


def test_cgroup_v2_quota_is_read(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real_path = threads.Path
    monkeypatch.setattr(threads, "Path", lambda p: cpu_max if str(p) == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert threads._cgroup_cpu_quota() == pytest.approx(1.5)
    cpu_max.write_text("max 100000\n")
    assert threads._cgroup_cpu_quota() is None


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
