"""Data-parallel training on CPU: two gloo ranks launched by torchrun (``tests/train/_distributed_worker.py``).

ML on two ranks follows the single process with the same global batch; FAB runs, checkpoints and resumes on two
ranks exactly, and resumes across world sizes (2 -> 1, 1 -> 2); a rank that raises ends the job with its error, within
a timeout and without leaving processes behind. Two torchrun launches in all (about 20 s on 2 shared cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from bgflow_se3.train import (
    DistributedContext,
    MaximumLikelihoodObjective,
    PrioritisedReplayBuffer,
    TrainConfig,
    Trainer,
    fit_ml,
    init_from_env,
    rank_seed,
    read_checkpoint,
)
from tests.train._distributed_worker import (
    FAB_CONFIG,
    ML_BATCH,
    ML_ITERATIONS,
    fab_objective,
    mixture,
    ml_data,
    ml_kwargs,
    params,
)
from tests.train._helpers import GaussianAugmentedFlow

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_distributed_worker.py")
LAUNCH_TIMEOUT_S = 150
EVALUATIONS_PER_AIS_BATCH = 16 * (1 + 2 * 4)  # batch x (1 + n_intermediate x n_leapfrog)


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (the launch's children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def launch(scenario: str, out: Path) -> tuple[subprocess.CompletedProcess, float, list[int]]:
    """torchrun with 2 ranks on the worker; returns the finished process, its wall time (s) and leftover pids.

    The launch gets its own session: on timeout the whole process group is killed and the test fails."""
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), BGFLOW_DISTRIBUTED_TEST=marker)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--monitor-interval",
        "0.2",
        str(WORKER),
        scenario,
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"torchrun {scenario} hung for {LAUNCH_TIMEOUT_S} s:\n{stdout[-4000:]}")
    wall = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # do not leave them running even when the test fails
        os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, stdout), wall, left


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The "train" scenario's output folder (one launch for the module), after a single-process FAB checkpoint at
    iteration 3 was written for the 1 -> 2 resume."""
    out = tmp_path_factory.mktemp("distributed")
    single = Trainer(GaussianAugmentedFlow().double(), fab_objective(mixture()), FAB_CONFIG, out / "fab_single")
    single.run(until=3)
    proc, wall, left = launch("train", out)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not left
    print(f"train launch: {wall:.1f} s")
    return out


def test_ml_on_two_ranks_matches_one_process_with_the_global_batch(trained):
    two = torch.load(trained / "ml.pt")
    flow = GaussianAugmentedFlow().double()
    one = fit_ml(flow, ml_data(), **ml_kwargs(2 * ML_BATCH))
    torch.testing.assert_close(two["params"], params(flow), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one.series("loss").tolist()), atol=1e-10, rtol=0)
    assert not torch.equal(params(flow), params(GaussianAugmentedFlow().double()))  # it did train

    # the two-rank checkpoint half way, resumed by one process, lands on the same parameters: the data stream is global
    config = TrainConfig(**{k: v for k, v in ml_kwargs(0).items() if k != "batch_size"}, plot=False)
    resumed_flow = GaussianAugmentedFlow().double()
    objective = MaximumLikelihoodObjective(ml_data(), 2 * ML_BATCH)
    result = Trainer(resumed_flow, objective, config, trained / "ml_one").run(resume=trained / "ml" / "checkpoint.pt")
    assert result.iterations == ML_ITERATIONS
    torch.testing.assert_close(params(resumed_flow), params(flow), atol=1e-10, rtol=0)


def test_fab_on_two_ranks_resumes_exactly(trained):
    straight = torch.load(trained / "fab_straight.pt")
    resumed = torch.load(trained / "fab_resumed.pt")
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    assert torch.equal(resumed["params"], straight["params"])
    # both ranks did their own AIS: (setup 2 + 6 iterations) batches each, summed in the result
    per_rank = [r[0] for r in straight["ranks"]]
    assert per_rank == [8 * EVALUATIONS_PER_AIS_BATCH] * 2
    assert straight["n"] == resumed["n"] == sum(per_rank)
    assert straight["ranks"][0][2] == straight["ranks"][1][2]  # HMC step sizes kept equal
    assert straight["ranks"][0][3] != straight["ranks"][1][3]  # each rank its own samples (seed + rank)
    lines = (trained / "fab" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == FAB_CONFIG.n_iterations  # written once, by rank 0
    history = straight["history"]
    assert all(r["n_target_evaluations"] == 2 * (2 + r["iteration"]) * EVALUATIONS_PER_AIS_BATCH for r in history)
    state = read_checkpoint(trained / "fab" / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rank_states"]) == 1


def test_fab_resumes_from_two_ranks_on_one(trained):
    """The 2-rank checkpoint at iteration 3 in one process: both buffers pooled (capped at max_length), the count of
    target evaluations continued, the history kept."""
    saved = read_checkpoint(trained / "fab_at_3.pt")
    objective = fab_objective(mixture())
    flow = GaussianAugmentedFlow().double()
    result = Trainer(flow, objective, FAB_CONFIG, trained / "fab_2_to_1").run(resume=trained / "fab_at_3.pt")
    assert result.iterations == FAB_CONFIG.n_iterations
    assert result.history[:3] == saved["history"]
    n_at_3 = 2 * (2 + 3) * EVALUATIONS_PER_AIS_BATCH
    assert saved["objective"]["n_target_evaluations"] == n_at_3
    assert result.n_target_evaluations == n_at_3 + 3 * EVALUATIONS_PER_AIS_BATCH  # ready buffer: no top-up
    assert len(objective.buffer) == 128
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


def test_fab_resumes_from_one_process_on_two_ranks(trained):
    grown = torch.load(trained / "fab_1to2.pt")
    single = read_checkpoint(trained / "fab_single" / "checkpoint.pt")
    assert [r["iteration"] for r in grown["history"]] == list(range(1, 7))
    assert grown["history"][:3] == single["history"]
    # the single buffer (16 x (2 + 3) = 80 samples) split 40 / 40 (ready: no top-up), then 3 AIS batches per rank
    lengths = [r[0] for r in grown["ranks"]]
    assert lengths == [40 + 3 * 16] * 2
    n_at_3 = (2 + 3) * EVALUATIONS_PER_AIS_BATCH
    assert grown["n"] == n_at_3 + 2 * 3 * EVALUATIONS_PER_AIS_BATCH


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    """Rank 1's target raises in the first iteration while rank 0 waits in a collective (timeout 60 s): torchrun must
    end the job with the error within seconds, not when the collective times out, and leave no process behind."""
    proc, _, left = launch("fail", tmp_path)
    ended = time.time()
    assert proc.returncode != 0
    found = re.search(r"injected failure on rank 1 at (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout[-4000:]
    assert ended - float(found.group(1)) < 20, f"the job ended {ended - float(found.group(1)):.0f} s after the error"
    assert not left, f"processes left behind: {left}"


def test_buffer_from_shards_pools_by_age_and_deals_round_robin():
    buffers = []
    for offset in (0.0, 100.0):
        b = PrioritisedReplayBuffer(4, 1)
        for i in range(6):  # a full ring: holds 2, 3, 4, 5 (oldest first)
            x = torch.full((1, 2, 1), offset + i, dtype=torch.float64)
            b.add(x, x[:, None], torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
        buffers.append(b.state_dict())
    one = PrioritisedReplayBuffer.from_shards(buffers, 0, 1)
    assert one._ordered()[0][:, 0, 0].tolist() == [4.0, 104.0, 5.0, 105.0]  # the newest max_length, by age
    shares = [PrioritisedReplayBuffer.from_shards(buffers, r, 2) for r in range(2)]
    assert shares[0]._ordered()[0][:, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert shares[1]._ordered()[0][:, 0, 0].tolist() == [102.0, 103.0, 104.0, 105.0]


def test_single_process_detection_starts_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_env()
    assert not ctx.distributed and (ctx.rank, ctx.world_size) == (0, 1)
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()
    assert rank_seed(3, 1) == 4 and rank_seed(3, 1, 10) != rank_seed(3, 0, 10)
    with pytest.raises(ValueError, match="backend"):
        DistributedContext(0, 2)
