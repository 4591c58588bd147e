"""Faults during training lose nothing: stop signals, a killed process, unwritable or full output folders, bad or
corrupt checkpoints, changed settings on resume, non-finite energies; and training applies the thread policy."""

from __future__ import annotations

import builtins
import errno
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import openmm
import pytest
import torch
from _training_helpers import (
    FlakyEnergy,
    SignallingEnergy,
    comparable,
    make_trainer,
    parameters,
)

import bgflow_se3.files as atomic_files
import bgflow_se3.threads as threads
import bgflow_se3.train.checkpoint as checkpoint_files
import bgflow_se3.train.config as train_config
import bgflow_se3.train.disk_space as disk_space
import bgflow_se3.train.loop as loop
import bgflow_se3.train.worker_threads as worker_threads
from bgflow_se3 import DoubleWellEnergy, OpenMMEnergy
from bgflow_se3.energy import RestrictedEnergy
from bgflow_se3.flow import KernelFlow
from bgflow_se3.threads import ThreadPlan
from bgflow_se3.train import (
    CheckpointError,
    FABObjective,
    OutputWriteError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    read_checkpoint,
)
from bgflow_se3.train.worker_threads import rank_share

SCRIPT = Path(__file__).with_name("_training_helpers.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Every run here (in this process and in the subprocesses) on one torch thread: the comparisons are bit for bit,
    and the thread policy could otherwise pick another count for the resumed run (reductions in another order)."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(threads.ENV_SETTING, "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def straight():
    """The uninterrupted run: (history, parameters) after all iterations."""
    trainer = make_trainer(None)
    result = trainer.run()
    return comparable(result.history), parameters(trainer)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A valid checkpoint of the test run after 2 of its iterations."""
    out = tmp_path_factory.mktemp("valid")
    make_trainer(out).run(until=2)
    return out / "checkpoint.pt"


def assert_same_run(trainer: Trainer, history: list[dict[str, float]], straight) -> None:
    assert comparable(history) == straight[0]
    assert torch.equal(parameters(trainer), straight[1])


# ---- 1. SIGINT and SIGTERM ---------------------------------------------------------------------------------------
def train_in_subprocess(out: Path, signum: int, *extra: str) -> subprocess.CompletedProcess:
    """Start the test run in a fresh interpreter, send ``signum`` once it has logged 3 iterations, wait for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), *extra]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
            assert time.monotonic() < deadline, "the run logged no 3 iterations in 120 s"
            time.sleep(0.02)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_checkpoints_and_resume_continues_exactly(tmp_path, signum, straight):
    out = tmp_path / "run"
    done = train_in_subprocess(out, signum)
    name = signal.Signals(signum).name
    assert done.returncode == 128 + signum, done.stderr
    assert f"training stopped by {name} after iteration" in done.stderr
    assert "run(resume=True) continues" in done.stderr
    assert not (out / "checkpoint.pt.tmp").exists()
    stopped_at = read_checkpoint(out / "checkpoint.pt")["iteration"]
    assert 3 <= stopped_at < len(straight[0])  # stopped early, after the iteration it was in

    resumed = make_trainer(out)  # a fresh process would build the same trainer
    result = resumed.run(resume=True)
    assert_same_run(resumed, result.history, straight)


def test_checkpoints_are_periodic_by_default():
    """Every run with an out_dir checkpoints every 5 minutes unless told otherwise, so a killed run can resume."""
    assert TrainConfig().checkpoint_every_s == 300.0
    with pytest.raises(ValueError, match="checkpoint_every_s >= 0"):
        TrainConfig(checkpoint_every_s=-1.0)


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, straight, caplog):
    """SIGKILL (no handler runs) after 3 logged iterations of a run that checkpoints whenever 1 ns has passed: a
    checkpoint of an iteration before the kill is on disk, and resuming from it ends where the uninterrupted run
    does."""
    out = tmp_path / "run"
    done = train_in_subprocess(out, signal.SIGKILL, "--checkpoint-every-s", "1e-9")
    assert done.returncode == -signal.SIGKILL, done.stderr
    saved = read_checkpoint(out / "checkpoint.pt")["iteration"]
    assert 2 <= saved < len(straight[0])

    resumed = make_trainer(out, checkpoint_every_s=1e-9)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        result = resumed.run(resume=True)
    assert f"at iteration {saved}" in "".join(r.getMessage() for r in caplog.records if "resumed from" in r.msg)
    assert_same_run(resumed, result.history, straight)


def test_a_second_sigint_while_the_checkpoint_is_written_leaves_a_good_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    done = train_in_subprocess(out, signal.SIGINT, "--signal-during-save")
    assert done.returncode == 130, done.stderr
    assert "a checkpoint is being written; stopping once it is complete" in done.stderr
    assert not (out / "checkpoint.pt.tmp").exists()
    resumed = make_trainer(out)
    result = resumed.run(resume=True)
    assert_same_run(resumed, result.history, straight)


def test_a_signal_in_process_raises_training_interrupted_and_restores_the_handlers(tmp_path, straight):
    def mine(signum, frame):
        raise AssertionError("the trainer's handler should be active during run()")

    previous = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        energy = SignallingEnergy(DoubleWellEnergy(), signal.SIGTERM, at_calls=(20,))
        trainer = make_trainer(tmp_path, energy=energy)
        with pytest.raises(TrainingInterrupted) as stop:
            trainer.run()
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(stop.value, KeyboardInterrupt) and stop.value.exit_code == 143
    assert stop.value.checkpoint_path == tmp_path / "checkpoint.pt"
    assert stop.value.result.iterations == stop.value.iteration < len(straight[0])
    resumed = make_trainer(tmp_path)
    assert_same_run(resumed, resumed.run(resume=True).history, straight)


@pytest.fixture
def sigint_raises():
    """SIGINT as in a terminal (a launcher running the tests in the background may have it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_signal_mid_iteration_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, sigint_raises):
    energy = SignallingEnergy(DoubleWellEnergy(), signal.SIGINT, at_calls=(19, 20))
    trainer = make_trainer(tmp_path, energy=energy, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopped at once") as stop:
        trainer.run()
    assert not isinstance(stop.value, TrainingInterrupted)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["iteration"]
    assert 2 <= saved <= trainer.iteration and f"the checkpoint of iteration {saved}" in str(stop.value)


def test_an_ignored_signal_stays_ignored():
    """A job started in the background (SIGINT ignored, e.g. ``nohup`` or ``&`` in a script) trains on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        energy = SignallingEnergy(DoubleWellEnergy(), signal.SIGINT, at_calls=(10,))
        result = make_trainer(None, 4, energy=energy).run()
        assert energy.n_calls > 10 and result.iterations == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_iteration(tmp_path):
    """torchrun, 2 gloo ranks: rank 1 alone gets SIGTERM (at its 20th target evaluation, in iteration 5); both ranks
    finish that iteration, write one checkpoint of both ranks and exit 143. Time-based checkpoints are due after every
    iteration on rank 0's clock and never on rank 1's: the ranks must follow rank 0 (deciding apart, they would block
    in different collectives)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--monitor-interval", "0.2", str(SCRIPT), "--out", str(tmp_path), "--sigterm-rank-1-at-call", "20"]
    command += ["--checkpoint-every-s", "1e-9", "--rank-1-clock-stopped"]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"torchrun hung: {proc.communicate()[0][-4000:]}")
    stops = re.findall(r"rank (\d): training stopped by SIGTERM after iteration (\d+) of", output)
    assert sorted(stops) == [("0", "5"), ("1", "5")], output[-4000:]
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["iteration"], state["world_size"], len(state["rank_states"])) == (5, 2, 1)
    assert proc.returncode != 0
    # rank 0's clock alone times the checkpoints (rank 1's never finds one due): both ranks wrote each one together,
    # one after each of iterations 1 to 4 and the final one
    counts = re.findall(r"rank (\d): (\d+) checkpoints", output)
    assert sorted(counts) == [("0", "5"), ("1", "5")], output[-4000:]


# ---- 2. unwritable output, full disk -----------------------------------------------------------------------------
def _raise_on(monkeypatch, predicate, code: int, partial: bool = False) -> None:
    """Make ``open`` of ``bgflow_se3.train.checkpoint`` (output probe) and ``bgflow_se3.files`` (the atomic writes of
    the checkpoint files) fail with OSError(code) for
    paths matching ``predicate`` (after writing half of the data when ``partial``), as a read-only folder or a full
    disk would."""

    class HalfWritten:
        def __init__(self, f):
            self.f = f

        def write(self, data) -> int:
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        if predicate(Path(path), mode):
            if not partial:
                raise OSError(code, os.strerror(code), str(path))
            return HalfWritten(builtins.open(path, mode, *args, **kwargs))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_files, "open", fake_open, raising=False)
    monkeypatch.setattr(atomic_files, "open", fake_open, raising=False)


@pytest.mark.parametrize("case", ["read_only_folder", "path_under_a_file", "full_disk"])
def test_an_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, case):
    out = tmp_path / "out"
    if case == "read_only_folder":
        out.mkdir()
        out.chmod(0o500)
        if os.geteuid() == 0:  # root writes anyway: simulate what the folder's mode does to everyone else
            _raise_on(monkeypatch, lambda path, mode: path.parent == out and "r" not in mode, errno.EACCES)
    elif case == "path_under_a_file":
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "out"
    else:
        _raise_on(monkeypatch, lambda path, mode: path.name.startswith(".write_probe"), errno.ENOSPC, partial=True)
    trainer = make_trainer(out)
    before = parameters(trainer)
    try:
        with pytest.raises(OutputWriteError, match="nothing was trained") as error:
            trainer.run()
    finally:
        if out.is_dir():
            out.chmod(0o700)
    assert str(out) in str(error.value)
    assert isinstance(error.value, OSError) and error.value.errno in (errno.EACCES, errno.ENOTDIR, errno.ENOSPC)
    assert trainer.objective.target.n_evaluations == 0 and torch.equal(parameters(trainer), before)
    assert not out.is_dir() or not list(out.iterdir())  # no probe file left behind


def test_a_full_disk_at_a_periodic_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, straight):
    writes = []

    def fourth_iteration(path, mode):
        if path.name == "checkpoint.pt.tmp":
            writes.append(path)
            return len(writes) == 2  # the checkpoint of iteration 4; the one of iteration 2 succeeded
        return False

    _raise_on(monkeypatch, fourth_iteration, errno.ENOSPC, partial=True)
    trainer = make_trainer(tmp_path, checkpoint_every=2)
    with pytest.raises(OutputWriteError, match="the checkpoint of iteration 2 .* is intact") as error:
        trainer.run()
    assert error.value.errno == errno.ENOSPC and str(tmp_path / "checkpoint.pt") in str(error.value)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
    assert not (tmp_path / "checkpoint.pt.tmp").exists()

    monkeypatch.undo()  # space freed: resuming loses nothing
    resumed = make_trainer(tmp_path, checkpoint_every=2)
    assert_same_run(resumed, resumed.run(resume=True).history, straight)


def test_a_failed_first_checkpoint_does_not_advise_resuming(tmp_path, monkeypatch):
    """The disk fills up during training and the final checkpoint, the run's first, cannot be written: nothing can be
    resumed, and the message says so instead of advising run(resume=True)."""
    _raise_on(monkeypatch, lambda path, mode: path.name == "checkpoint.pt.tmp", errno.ENOSPC, partial=True)
    trainer = make_trainer(tmp_path, 3)
    with pytest.raises(OutputWriteError, match="no checkpoint of this run is on disk") as error:
        trainer.run()
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and str(tmp_path / "checkpoint.pt") in message
    assert "run(resume=True)" not in message and "train again from the start" in message
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "checkpoint.pt.tmp").exists()


def _free_disk(monkeypatch, free: int) -> None:
    """Make every disk report ``free`` free bytes."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2 * free, free, free))


def test_too_little_disk_space_for_the_checkpoints_fails_before_the_first_iteration(tmp_path, monkeypatch):
    """The 4 KiB probe passes, but the disk cannot hold the checkpoints: the run stops before its first iteration,
    naming the bytes needed (at least two final checkpoints and the metrics log, whose size the test measures in an
    unhindered run, plus the margin) and free. With that much space free it trains to the end."""
    full = make_trainer(tmp_path / "full")
    full.run()
    final = (tmp_path / "full" / "checkpoint.pt").stat().st_size + (tmp_path / "full" / "metrics.jsonl").stat().st_size

    out = tmp_path / "out"
    _free_disk(monkeypatch, 2 * final)
    trainer = make_trainer(out)
    before = parameters(trainer)
    with pytest.raises(OutputWriteError, match="not enough free disk space") as error:
        trainer.run()
    found = re.search(r"need about (\d+) bytes .*, (\d+) bytes are free", str(error.value))
    assert found and int(found.group(2)) == 2 * final and str(out) in str(error.value)
    needed = int(found.group(1))
    assert 2 * final + disk_space._DISK_MARGIN_BYTES <= needed <= 3 * final + disk_space._DISK_MARGIN_BYTES
    assert error.value.errno == errno.ENOSPC and "no iteration was trained" in str(error.value)
    assert trainer.iteration == 0 and torch.equal(parameters(trainer), before)
    assert not (out / "checkpoint.pt").exists()

    _free_disk(monkeypatch, needed)
    assert make_trainer(out).run().iterations == len(full.history)


# ---- 3. bad checkpoints -----------------------------------------------------------------------------------------
def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupted(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = os.urandom(64)
    data[-200:] = bytes(200)  # the zip directory at the end
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x80\x04garbage, not a pickle" + os.urandom(100))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flow_weights_only(path: Path) -> None:
    torch.save(read_checkpoint(path)["flow"], path)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_truncated, "cannot read the checkpoint"),
        (_corrupted, "cannot read the checkpoint"),
        (_garbage, "cannot read the checkpoint"),
        (_empty, "cannot read the checkpoint"),
        (_flow_weights_only, "is not a bgflow_se3 training checkpoint"),
    ],
    ids=["truncated", "corrupted", "garbage", "empty", "flow_weights_only"],
)
def test_an_unreadable_checkpoint_is_named_never_a_fresh_start(tmp_path, checkpoint, damage, expected):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    damage(path)
    trainer = make_trainer(tmp_path)
    before = parameters(trainer)
    with pytest.raises(CheckpointError, match=expected) as error:
        trainer.run(resume=True)
    assert str(path) in str(error.value)
    assert trainer.iteration == 0 and trainer.objective.target.n_evaluations == 0
    assert torch.equal(parameters(trainer), before)


def _flip_8_bytes_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_fails_its_checksum_before_any_state_changes(tmp_path, checkpoint):
    """Eight flipped bytes in the middle of the file (replay-buffer data, which unpickles fine) are found by the
    checksum."""
    path = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    _flip_8_bytes_in_the_middle(path)
    trainer = make_trainer(tmp_path)
    before = parameters(trainer)
    with pytest.raises(CheckpointError, match="SHA-256 checksum does not match") as error:
        trainer.run(resume=True)
    assert str(path) in str(error.value) and "cannot read the checkpoint" in str(error.value)
    assert trainer.iteration == 0 and trainer.objective.target.n_evaluations == 0
    assert torch.equal(parameters(trainer), before) and len(trainer.objective.buffer) == 0


def test_a_checkpoint_without_a_checksum_still_resumes_with_a_warning(tmp_path, checkpoint, caplog):
    """Checkpoints written before they had a checksum (plain ``torch.save``) are read unchecked, and said to be."""
    path = tmp_path / "checkpoint.pt"
    torch.save(read_checkpoint(checkpoint), path)
    trainer = make_trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger=checkpoint_files.__name__):
        trainer.load_checkpoint(path)
    assert trainer.iteration == 2
    assert any("has no checksum" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(lr=2e-3), ["lr=0.001 there, 0.002 here"]),
        (dict(n_iterations=20, warmup_iterations=3), ["n_iterations=12 there, 20 here", "warmup_iterations=2 there"]),
        (dict(seed=1, min_log_q=-100.0), ["seed=0 there, 1 here", "min_log_q=-10000.0 there, -100.0 here"]),
    ],
    ids=["lr", "n_iterations_and_warmup", "seed_and_min_log_q"],
)
def test_resuming_with_other_settings_is_refused_by_name(tmp_path, checkpoint, change, expected):
    """Settings the checkpoint's state would silently override (lr, seed) or that change the rest of the run (the
    schedule's length, the guards) must equal those it was written with."""
    path = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    base = make_trainer(tmp_path)
    trainer = Trainer(base.flow, base.objective, replace(base.config, **change), tmp_path)
    before = parameters(trainer)
    with pytest.raises(CheckpointError, match="written with other training settings") as error:
        trainer.run(resume=True)
    message = str(error.value)
    assert str(path) in message and all(text in message for text in expected), message
    assert "train from scratch in another out_dir" in message
    assert trainer.iteration == 0 and torch.equal(parameters(trainer), before)


def test_resuming_may_change_what_is_shown_logged_or_saved(tmp_path, checkpoint):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    base = make_trainer(tmp_path)
    free = dict(progress=True, plot=True, checkpoint_every=1, checkpoint_every_s=60.0, eval_every=2, n_eval=8)
    assert set(free) == train_config.FREE_SETTINGS
    trainer = Trainer(base.flow, base.objective, replace(base.config, **free), tmp_path)
    trainer.load_checkpoint(path)
    assert trainer.iteration == 2


@pytest.mark.parametrize(
    "other, expected",
    [
        (dict(hidden=16), r"do not fit this AugmentedCouplingFlow .*of another shape \(.* there, .* here"),
        ("kernel_flow", "holds a AugmentedCouplingFlow; this Trainer trains a KernelFlow"),
        (dict(objective="kl"), "written by a FABObjective run; this Trainer runs ReverseKLObjective"),
    ],
    ids=["larger_flow", "other_flow_class", "other_objective"],
)
def test_a_checkpoint_of_another_setup_is_refused_by_name(tmp_path, checkpoint, other, expected):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, path)
    if other == "kernel_flow":
        trainer = make_trainer(tmp_path)
        trainer = Trainer(
            KernelFlow(4, 2, n_kernels=4, n_time=2, n_steps=2), trainer.objective, trainer.config, tmp_path
        )
    else:
        trainer = make_trainer(tmp_path, **other)
    before = parameters(trainer)
    with pytest.raises(CheckpointError, match=expected) as error:
        trainer.run(resume=True)
    assert str(path) in str(error.value)
    assert trainer.iteration == 0 and torch.equal(parameters(trainer), before)


def test_a_checkpoint_without_class_names_is_still_checked(tmp_path, checkpoint):
    """Checkpoints written before the class names were stored: the weights and the objective state are checked."""
    state = read_checkpoint(checkpoint)
    del state["flow_class"], state["objective_class"]
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="of another shape"):
        make_trainer(tmp_path, hidden=16).run(resume=True)
    state["objective"] = {"n_target_evaluations": 0}  # a reverse-KL run's objective state, into FAB
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit this Trainer .*KeyError"):
        make_trainer(tmp_path).run(resume=True)


# ---- 4. non-finite energies -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_fab_trains_through_non_finite_energies_and_counts_them(value):
    energy = FlakyEnergy(DoubleWellEnergy(), value, call_fraction=0.05, seed=3)
    trainer = make_trainer(None, 20, energy=energy)
    result = trainer.run()
    assert energy.n_poisoned > 0 and energy.n_calls > 40
    last = result.history[-1]
    assert last["n_nonfinite_target"] == energy.n_poisoned  # each poisoned row counted once
    assert last["n_dropped_samples"] <= energy.n_poisoned
    assert result.iterations == 20 and math.isfinite(last["loss"])
    assert bool(torch.isfinite(parameters(trainer)).all())


# ---- 5. thread policy -------------------------------------------------------------------------------------------
class _Planned(Exception):
    pass


def tiny_openmm_system() -> openmm.System:
    """Four particles (mass 1 amu) held near the origin by a harmonic external force."""
    system = openmm.System()
    force = openmm.CustomExternalForce("100*(x^2+y^2+z^2)")
    for i in range(4):
        system.addParticle(1.0)
        force.addParticle(i, [])
    system.addForce(force)
    return system


@pytest.mark.parametrize("n_workers, expected", [(1, 0), (2, 2)])
def test_training_plans_threads_for_the_openmm_workers_behind_the_target(monkeypatch, n_workers, expected):
    calls = []

    def plan(n_workers=0, cores=None, busy=None):
        calls.append((n_workers, cores, busy))
        raise _Planned

    monkeypatch.setattr(worker_threads, "apply_thread_policy", plan)
    with OpenMMEnergy(tiny_openmm_system(), 300.0, n_workers=n_workers) as energy:
        restricted = RestrictedEnergy(energy, lambda x: torch.ones(len(x), dtype=torch.bool))
        torch.manual_seed(0)
        flow = KernelFlow(4, 3, n_kernels=4, n_time=2, n_steps=2).double()
        objective = FABObjective(restricted, batch_size=16, n_updates=2, buffer_min_length=32)
        trainer = Trainer(flow, objective, TrainConfig(n_iterations=1, progress=False))
        with pytest.raises(_Planned):
            trainer.run()
    assert calls == [(expected, None, None)]
    assert objective.target.n_evaluations == 0  # planned before any training


def test_the_plan_is_applied_at_each_run_and_logged_once(monkeypatch, caplog):
    calls = []

    def plan(n_workers=0, cores=None, busy=None):
        calls.append((n_workers, cores, busy))
        return ThreadPlan(1, 1, 2, 0, n_workers, "a plan made by the test")

    monkeypatch.setattr(worker_threads, "apply_thread_policy", plan)
    trainer = make_trainer(None, 2)
    with caplog.at_level(logging.INFO, logger=worker_threads.__name__):
        trainer.run(until=1)
        trainer.run()
    assert calls == [(0, None, None)] * 2
    assert sum("a plan made by the test" in r.getMessage() for r in caplog.records) == 1
    assert trainer.thread_plan.reason == "a plan made by the test"


def test_a_users_thread_setting_is_kept(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_user_threads", None)
    monkeypatch.setenv(threads.ENV_SETTING, "1")
    try:
        trainer = make_trainer(None, 1)
        trainer.run()
        assert trainer.thread_plan.reason == threads.ENV_SETTING and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ranks_sharing_a_machine_plan_with_their_share_of_the_cores(monkeypatch):
    assert rank_share(8, 0, 4) == (2, 0)
    assert rank_share(8, 7, 4) == (2, 0)  # 6 cores may be the other ranks'; 1 busy core elsewhere: < 1 each
    assert rank_share(16, 14, 2) == (8, 3)  # 6 busy beyond the other rank's 8, shared
    assert rank_share(2, 2, 4) == (1, 0)

    class TwoLocalRanks:
        distributed, local_world_size = True, 2

    calls = []

    def apply(n_workers, cores, busy):
        calls.append((n_workers, cores, busy))
        return ThreadPlan(1, 1, cores, busy, n_workers, "a rank's share")

    monkeypatch.setattr(worker_threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(
        worker_threads, "plan_threads", lambda n, cores: ThreadPlan(cores, 1, cores, 12, n, "whole machine")
    )
    monkeypatch.setattr(worker_threads, "apply_thread_policy", apply)
    trainer = make_trainer(None, 1)
    trainer.dist = TwoLocalRanks()  # only the thread plan reads it here
    trainer._apply_thread_policy()
    assert calls == [(0, 8, 2)]  # 12 busy on the machine, 8 of them maybe the other rank's: 4 / 2 ranks
