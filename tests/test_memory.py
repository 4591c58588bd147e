"""The CPU memory guard reads the limits that bind this process: its own cgroup and the ancestors (v2 and v1),
the address-space limit (ulimit -v) and MemAvailable, each from a fake /proc and cgroup tree under tmp_path."""

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import bgflow_se3.memory as memory
from bgflow_se3 import AugmentedCouplingFlow
from bgflow_se3.errors import InsufficientMemoryError
from bgflow_se3.flow.frames import remove_com

GB = 10**9
LIMIT_4GB = 4 * 2**30  # what SLURM writes for --mem=4G: 4.29 GB


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the guard at tmp_path: an empty /proc/self, 64 GB MemAvailable, no cgroup mounts, no ulimit -v."""
    proc_self = tmp_path / "proc" / "self"
    proc_self.mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: 100000000 kB\nMemAvailable: {64 * GB // 1024} kB\n")
    monkeypatch.setattr(memory, "PROC_SELF", proc_self)
    monkeypatch.setattr(memory, "PROC_MEMINFO", tmp_path / "proc" / "meminfo")
    monkeypatch.setattr(memory, "CGROUP2_MOUNT", tmp_path / "no_cgroup2")
    monkeypatch.setattr(memory, "CGROUP1_MEMORY_MOUNT", tmp_path / "no_cgroup1")
    set_address_space_limit(monkeypatch, resource.RLIM_INFINITY)
    return tmp_path


def set_address_space_limit(monkeypatch: pytest.MonkeyPatch, soft: int) -> None:
    """Make ``resource.getrlimit(RLIMIT_AS)`` report ``soft`` (bytes); other limits stay real."""
    real = resource.getrlimit
    monkeypatch.setattr(
        resource,
        "getrlimit",
        lambda which: (soft, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which),
    )


def write_proc(root: Path, cgroup: str, mountinfo: str = "") -> None:
    """The fake /proc/self/cgroup and /proc/self/mountinfo."""
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    if mountinfo:
        (root / "proc" / "self" / "mountinfo").write_text(mountinfo)


def write_cgroup(directory: Path, limit: str | int | None, usage: int, **stat: int) -> None:
    """One cgroup directory with v2 files (memory.max; no file for limit=None), memory.current, memory.stat."""
    directory.mkdir(parents=True, exist_ok=True)
    if limit is not None:
        (directory / "memory.max").write_text(f"{limit}\n")
    (directory / "memory.current").write_text(f"{usage}\n")
    (directory / "memory.stat").write_text("".join(f"{k} {v}\n" for k, v in {"anon": usage, **stat}.items()))


def write_cgroup_v1(directory: Path, limit: int, usage: int) -> None:
    """One cgroup v1 memory-controller directory (memory.limit_in_bytes, memory.usage_in_bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (directory / "memory.usage_in_bytes").write_text(f"{usage}\n")


def mountinfo_line(point: Path, fstype: str, options: str, root: str = "/") -> str:
    return f"35 31 0:32 {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - {fstype} {fstype} {options}\n"


def test_cgroup_v2_reads_its_own_cgroup_and_the_tightest_ancestor(fake_root):
    cg = fake_root / "sys" / "fs" / "cgroup"
    write_proc(fake_root, "0::/slurm/job_1/step_0\n", mountinfo_line(cg, "cgroup2", "rw,nsdelegate"))
    write_cgroup(cg, None, 50 * GB)  # the root cgroup has no memory.max
    write_cgroup(cg / "slurm", "max", 10 * GB)
    write_cgroup(cg / "slurm" / "job_1", LIMIT_4GB, 4_000_000_000)
    write_cgroup(cg / "slurm" / "job_1" / "step_0", 8 * GB, 3_900_000_000)  # a looser child limit: the parent binds
    free = memory.available_memory("cpu")
    assert free.n_bytes == LIMIT_4GB - 4_000_000_000
    assert free.limit.startswith(f"the cgroup memory limit of 4.29 GB ({cg}/slurm/job_1/memory.max)")
    assert memory.available_bytes("cpu") == free.n_bytes
    # the child's own limit binds once it is the tighter one
    write_cgroup(cg / "slurm" / "job_1" / "step_0", 4_100_000_000, 3_900_000_000)
    free = memory.available_memory("cpu")
    assert free.n_bytes == 200_000_000 and f"({cg}/slurm/job_1/step_0/memory.max)" in free.limit


def test_cgroup_v2_does_not_count_reclaimable_page_cache(fake_root):
    cg = fake_root / "cg"
    write_proc(fake_root, "0::/job\n", mountinfo_line(cg, "cgroup2", "rw"))
    write_cgroup(cg / "job", 2 * GB, int(1.5 * GB), inactive_file=GB)
    assert memory.available_bytes("cpu") == int(1.5 * GB)


def test_cgroup_v2_mount_of_a_subtree_and_the_fallback_mount(fake_root, monkeypatch):
    # a container without a cgroup namespace: the mount shows /docker/abc, /proc/self/cgroup names the full path
    cg = fake_root / "cg"
    write_proc(fake_root, "0::/docker/abc\n", mountinfo_line(cg, "cgroup2", "rw", root="/docker/abc"))
    write_cgroup(cg, GB, GB // 4)
    assert memory.available_bytes("cpu") == GB - GB // 4
    # no mountinfo: /sys/fs/cgroup (CGROUP2_MOUNT) is assumed; a path it does not hold falls back to its top
    (fake_root / "proc" / "self" / "mountinfo").unlink()
    monkeypatch.setattr(memory, "CGROUP2_MOUNT", cg)
    assert memory.available_bytes("cpu") == GB - GB // 4


def test_cgroup_v1_memory_controller_with_a_parent_limit(fake_root, monkeypatch):
    mem = fake_root / "sys" / "fs" / "cgroup" / "memory"
    cgroup = "12:pids:/slurm/uid_1/job_1\n4:memory:/slurm/uid_1/job_1/step_batch\n3:cpu,cpuacct:/slurm\n0::/\n"
    mounts = mountinfo_line(fake_root / "sys/fs/cgroup/cpu", "cgroup", "rw,cpu,cpuacct") + mountinfo_line(
        mem, "cgroup", "rw,memory"
    )
    write_proc(fake_root, cgroup, mounts)
    write_cgroup_v1(mem, 9223372036854771712, 50 * GB)  # v1's "no limit"
    write_cgroup_v1(mem / "slurm" / "uid_1", 9223372036854771712, 10 * GB)
    write_cgroup_v1(mem / "slurm" / "uid_1" / "job_1", LIMIT_4GB, 4_000_000_000)
    write_cgroup_v1(mem / "slurm" / "uid_1" / "job_1" / "step_batch", 9223372036854771712, 3_000_000_000)
    free = memory.available_memory("cpu")
    assert free.n_bytes == LIMIT_4GB - 4_000_000_000
    assert f"4.29 GB ({mem}/slurm/uid_1/job_1/memory.limit_in_bytes)" in free.limit
    # no mountinfo: /sys/fs/cgroup/memory (CGROUP1_MEMORY_MOUNT) is assumed
    (fake_root / "proc" / "self" / "mountinfo").unlink()
    monkeypatch.setattr(memory, "CGROUP1_MEMORY_MOUNT", mem)
    assert memory.available_memory("cpu") == free


def test_hybrid_hierarchy_without_limits_leaves_memavailable(fake_root):
    # this shape (v2 mounted at .../unified without memory files, v1 memory controller without a limit) is common
    unified, mem = fake_root / "cgroup" / "unified", fake_root / "cgroup" / "memory"
    mounts = mountinfo_line(unified, "cgroup2", "rw") + mountinfo_line(mem, "cgroup", "rw,memory")
    write_proc(fake_root, "4:memory:/process_api/abc\n0::/\n", mounts)
    unified.mkdir(parents=True)
    write_cgroup_v1(mem / "process_api" / "abc", 9223372036854771712, 3_000_000)
    free = memory.available_memory("cpu")
    assert free.n_bytes == 64 * GB // 1024 * 1024 and "MemAvailable" in free.limit


def test_address_space_limit_counts_the_virtual_size(fake_root, monkeypatch):
    (fake_root / "proc" / "self" / "status").write_text("Name:\tpython\nVmPeak:\t 2000000 kB\nVmSize:\t 1000000 kB\n")
    set_address_space_limit(monkeypatch, 4_096_000_000)
    free = memory.available_memory("cpu")
    assert free.n_bytes == 4_096_000_000 - 1_024_000_000
    assert free.limit.startswith("the address-space limit (ulimit -v) of 4.1 GB")
    (fake_root / "proc" / "self" / "status").unlink()  # statm: pages
    (fake_root / "proc" / "self" / "statm").write_text("1000 200 100 10 0 500 0\n")
    assert memory.available_bytes("cpu") == 4_096_000_000 - 1000 * os.sysconf("SC_PAGE_SIZE")


def test_check_fits_names_the_binding_limit(fake_root):
    cg = fake_root / "sys" / "fs" / "cgroup"
    write_proc(fake_root, "0::/slurm/job_1\n", mountinfo_line(cg, "cgroup2", "rw"))
    write_cgroup(cg / "slurm" / "job_1", LIMIT_4GB, 4_200_000_000)
    memory.check_fits(50e6, "cpu", "x", "y")  # 50 MB of 94.97 MB free: fits under the 0.8 share
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_fits(100e6, "cpu", "log q + backward of 200 configurations", "use a smaller batch")
    message = str(info.value)
    assert message.startswith("log q + backward of 200 configurations would need about 100 MB on cpu, but only")
    assert f"the cgroup memory limit of 4.29 GB ({cg}/slurm/job_1/memory.max)" in message
    assert message.endswith("; use a smaller batch")


# ------------------------------------------------------------------------------------- the flow's guard, end to end
def small_aldp_sized_flow() -> AugmentedCouplingFlow:
    """22 atoms like alanine dipeptide, a small network (about 1 MB of graph per configuration in float32)."""
    torch.manual_seed(0)
    return AugmentedCouplingFlow(22, 3, [i % 4 for i in range(22)], n_blocks=2, hidden=16, egnn_layers=1)


def test_flow_log_q_in_a_4gb_job_cgroup_raises_naming_the_limit(fake_root):
    """A SLURM-like job: the 4 GiB limit sits on the job's cgroup, the process runs in a step below it."""
    flow = small_aldp_sized_flow()
    per_config = flow.graph_bytes_per_configuration()
    cg = fake_root / "sys" / "fs" / "cgroup"
    write_proc(
        fake_root, "0::/system.slice/slurmstepd.scope/job_1/step_0/user/task_0\n", mountinfo_line(cg, "cgroup2", "rw")
    )
    job = cg / "system.slice" / "slurmstepd.scope" / "job_1"
    write_cgroup(job, LIMIT_4GB, LIMIT_4GB - int(100 * per_config))  # room for ~80 configurations' graphs
    write_cgroup(job / "step_0" / "user" / "task_0", "max", LIMIT_4GB - int(100 * per_config))
    x = remove_com(torch.randn(200, 22, 3, generator=torch.Generator().manual_seed(1)))
    a = flow.sample_aug_target(x)
    with pytest.raises(InsufficientMemoryError) as info:
        flow.log_prob_joint(x, a)  # log q with gradients: the graph of 200 configurations
    assert "inverse pass of 200 configurations with gradients would need about" in str(info.value)
    assert f"the cgroup memory limit of 4.29 GB ({job}/memory.max)" in str(info.value)
    with torch.no_grad():
        assert flow.log_prob_joint(x, a).shape == (200,)  # no graph, no guard


ULIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from bgflow_se3.errors import InsufficientMemoryError
    from bgflow_se3.flow.frames import remove_com
    from tests.test_memory import small_aldp_sized_flow

    flow = small_aldp_sized_flow()
    per_config = flow.graph_bytes_per_configuration()
    size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = size + 10**9 if hard == resource.RLIM_INFINITY else min(size + 10**9, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))  # what ulimit -v does
    x = remove_com(torch.randn(int(3e9 / per_config), 22, 3))  # a graph of about 3 GB
    a = flow.sample_aug_target(x)
    try:
        flow.log_prob_joint(x, a).sum().backward()
    except InsufficientMemoryError as error:
        print(error)
        sys.exit(3)
    """
)


def test_flow_log_q_under_ulimit_v_raises_before_it_allocates():
    """A real address-space limit (set in the child once torch is loaded: VmSize + 1 GB) and a batch whose graph
    needs about 3 GB: InsufficientMemoryError naming ulimit -v, not the allocator's bare RuntimeError."""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else "MemAvailable: 0 kB"
    if int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024 < 2 * 10**9:
        pytest.skip("under 2 GB MemAvailable: the machine's memory, not ulimit -v, would bind")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ULIMIT_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "with gradients would need about" in done.stdout
    assert "the address-space limit (ulimit -v) of" in done.stdout, done.stdout
