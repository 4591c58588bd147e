"""The whole workflow: a checked molecule -> seeded Langevin data -> maximum likelihood -> FAB -> reweighted free
energies, each stage checkpointed in one output folder.

``run_workflow(molecule, out_dir)`` runs, for any molecule ``check_molecule`` accepts (nothing here names one):

1. **coverage**: ``coverage.seeded_langevin`` over the basins of every seeded torsion (for peptides each residue's
   phi and psi) on the target restricted to the molecule's handedness; frames saved in ``coverage/``; the frames
   each state got are reported (``coverage.json``) and a state no replica reached is refused before training;
2. **ml**: an ``InternalCoordinateFlow`` sized from the molecule (``settings.flow_config``) trained by maximum
   likelihood on those frames (``ml/``: checkpoint, metrics, training curves);
3. **fab**: FAB fine-tuning on the target (``fab/``), float32 ``TorchForceField`` energies (``OpenMMEnergy`` when
   the System does not compile, as ``Molecule.energy_backend`` says);
4. **evaluation**: flow samples reweighted with float64 energies (``evaluation.evaluate_molecule``).

Folder: ``run.json`` (inputs' fingerprint, torsions, settings; written first), ``coverage/``, ``ml/``, ``fab/``,
``samples.npz``, ``samples.dcd`` + ``topology.pdb``, ``ramachandran.png``, ``torsion_profiles.png`` and
``results.json``. ``resume=True`` continues an interrupted run in the same folder (finished stages are loaded, the
interrupted one continues from its checkpoint, bit-identical to an uninterrupted run); it refuses a folder whose
run was made from other inputs or settings, and without ``resume`` a folder that already holds a run is refused
rather than overwritten (``RunFolderError``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunFolderError
from ..files import save_npy_atomically
from ..jsonio import write_json
from .inputs import Molecule
from .references import UmbrellaReference, check_reference_atoms, compare_with_reference
from .settings import WorkflowSettings
from .states import State, Torsion, negative_state, positive_state

__all__ = ["RUN_FILE", "run_workflow", "seeded_torsions"]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: run.json entries that may differ when a run is resumed (they change nothing that was computed)
RESUMABLE_CHANGES = ("created",)


def seeded_torsions(molecule: Molecule, torsions: Sequence[Torsion]) -> list[Torsion]:
    """The torsions whose basins the training data are seeded in, one per central bond: for a peptide every
    residue's phi and psi, then the other rotatable torsions (``rotatable.rotatable_torsions``: side chains), then
    ``torsions`` (the ones the user asks about) about bonds not yet seeded."""
    from .rotatable import rotatable_torsions
    from .states import peptide_torsions

    try:
        backbone = peptide_torsions(molecule.topology)
    except ValueError:
        backbone = []
    seeded, bonds = [], set()
    for torsion in [*backbone, *rotatable_torsions(molecule.topology), *torsions]:
        bond = frozenset(torsion.atoms[1:3])
        if bond not in bonds:
            bonds.add(bond)
            seeded.append(torsion)
    return seeded


#: a held-out NLL this many nats above the training NLL gets a warning (the flow memorised its replicas)
GAP_WARNING_NATS = 3.0


def _held_out_check(flow, train: torch.Tensor, valid: torch.Tensor, seed: int) -> tuple[float, float]:
    """(mean NLL of training frames, of held-out frames), nats, in float64; the training frames are a random
    subset as large as the held-out set, so both means have the same noise. NaN without held-out frames."""
    if not len(valid):
        return math.nan, math.nan
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(valid)]
    with torch.no_grad():
        flow.double()
        return float(-flow.log_prob(train[pick].double()).mean()), float(-flow.log_prob(valid.double()).mean())


def _check_references(references: Mapping[str, UmbrellaReference], torsions: Sequence[Torsion]) -> None:
    """Every reference names a reported torsion and, where the cache records it, biased that torsion's atoms."""
    by_name = {t.name: t for t in torsions}
    for name, reference in references.items():
        if name not in by_name:
            raise ValueError(f"reference for {name!r}, which is not a reported torsion ({', '.join(by_name)})")
        check_reference_atoms(reference, name, by_name[name].atoms)


def _fingerprint(molecule: Molecule) -> dict[str, Any]:
    """SHA-256 of the serialized System and of the structure (positions to 1e-6 nm, atom names, bonds)."""
    import openmm

    system = hashlib.sha256(openmm.XmlSerializer.serialize(molecule.system).encode()).hexdigest()
    structure = hashlib.sha256()
    structure.update(np.round(np.asarray(molecule.positions_nm), 6).tobytes())
    structure.update(" ".join(a.name for a in molecule.topology.atoms()).encode())
    structure.update(np.asarray(molecule.bonds, dtype=np.int64).tobytes())
    return {"n_atoms": molecule.n_atoms, "system_sha256": system, "structure_sha256": structure.hexdigest()}


def _state_record(state: State) -> str:
    """How ``run.json`` records a state: a ``TorsionState``'s torsion and ranges; other callables by name only
    (their code cannot be compared between runs)."""
    from .states import TorsionState

    if isinstance(state, TorsionState):
        return f"{state.torsion.name} {list(state.torsion.atoms)} in {[list(r) for r in state.ranges]}"
    return f"callable {getattr(state, '__qualname__', type(state).__name__)}"


def _manifest(molecule: Molecule, torsions, states, settings: WorkflowSettings) -> dict[str, Any]:
    return {
        "molecule": _fingerprint(molecule),
        "energy_backend": molecule.energy_backend,
        "torsions": [{"name": t.name, "atoms": list(t.atoms)} for t in torsions],
        "states": {name: _state_record(state) for name, state in sorted(states.items())},
        "settings": settings.as_dict(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} in the folder, {b!r} now")
    return diffs


def _open_run_folder(out: Path, manifest: dict[str, Any], resume: bool) -> None:
    """Write ``run.json``, or check it against this run when resuming; refuse to overwrite another run."""
    path = out / RUN_FILE
    if path.exists():
        if not resume:
            raise RunFolderError(
                f"{out} already holds a run ({RUN_FILE}); continue it with --resume (resume=True) or choose "
                "another output folder: nothing was overwritten"
            )
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunFolderError(f"cannot read {path} ({e}): the folder's run cannot be resumed") from e
        diffs = _differences(old, json.loads(json.dumps(manifest)))
        if diffs:
            raise RunFolderError(
                f"{out} holds a run made from other inputs or settings, so it cannot be resumed with these: "
                f"{'; '.join(diffs[:6])}{'; ...' if len(diffs) > 6 else ''}. Resume with the same inputs and "
                "options, or choose another output folder"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


def _energy(molecule: Molecule, temperature: float):
    """The target (reduced, kT) restricted to the molecule's handedness, and the handedness predicate."""
    from ..analysis.stereo import same_handedness
    from ..energy import OpenMMEnergy, RestrictedEnergy, TorchForceField

    allowed = same_handedness(molecule.topology, molecule.positions_nm)
    if molecule.energy_backend == "TorchForceField":
        base = TorchForceField.from_system(molecule.system, temperature)
    else:
        logger.warning("%s", molecule.backend_reason)
        base = OpenMMEnergy(molecule.system, temperature)
    return RestrictedEnergy(base, allowed), allowed


def _coverage(molecule, energy, torsions, states, settings: WorkflowSettings, folder: Path, progress: bool):
    """Stage 1: seeded Langevin frames (loaded when the folder holds them) and the frames each state got."""
    from .coverage import check_coverage, seeded_langevin, state_coverage

    frames_path, report_path = folder / "frames.npy", folder / "coverage.json"
    if report_path.exists() and frames_path.exists():
        frames = torch.from_numpy(np.load(frames_path))
        report = json.loads(report_path.read_text())
        logger.info("coverage: %d frames loaded from %s", frames.shape[0] * frames.shape[1], folder)
        return frames, report
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = seeded_langevin(
        molecule,
        energy,
        torsions,
        settings.replicas,
        settings.md_ps,
        equilibration_ps=settings.md_equilibration_ps,
        save_every_ps=settings.md_save_every_ps,
        generator=torch.Generator().manual_seed(settings.seed),
        progress=progress,
    )
    flat = data.flat()
    counts = state_coverage(flat.double(), states)
    report = {
        "n_frames": int(flat.shape[0]),
        "n_replicas": settings.replicas,
        "seeded_torsions": [t.name for t in data.torsions],
        "frames_per_state": counts,
        "n_energy_evaluations": data.n_energy_evaluations,
        "wall_time_s": time.perf_counter() - start,
    }
    check_coverage(counts, report["n_frames"])
    save_npy_atomically(frames_path, data.frames.numpy().astype(np.float32))
    write_json(report_path, report)  # last: its presence marks the stage done
    return data.frames, report


def _print_coverage(report: Mapping[str, Any], say: Callable[[str], None]) -> None:
    say(f"coverage: {report['n_frames']} frames from {report['n_replicas']} seeded Langevin replicas")
    for name, n in report["frames_per_state"].items():
        say(f"  {name:>24}: {n:>8} frames ({100 * n / max(1, report['n_frames']):.1f} %)")


def run_workflow(
    molecule: Molecule,
    out_dir: str | Path,
    *,
    torsions: Sequence[Torsion] | None = None,
    states: Mapping[str, State] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    settings: WorkflowSettings | None = None,
    references: Mapping[str, UmbrellaReference] | None = None,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Free energies of ``molecule`` (a checked ``workflow.Molecule``) from scratch; returns ``results.json``'s dict.

    torsions: whose F(> 0) - F(<= 0) to report (default: every residue's phi of a peptide; a molecule that is no
    peptide must name them). states, pairs: further named states (callables on coordinates, e.g.
    ``TorsionState``) and the pairs to compare (default every pair). settings: sizes (default
    ``WorkflowSettings()``). references: torsion name -> ``UmbrellaReference`` (``load_umbrella_reference``): its
    profile is drawn under the flow's and each entry of ``torsion_free_energies`` gets the comparison
    (``compare_with_reference``); checked before anything runs (a name that is not a torsion, or a reference made
    for other atoms, raises ``ValueError``). resume: continue the run in ``out_dir``. say: where progress lines go.
    Raises ``UnreachedStateError`` before training when no training frame reaches a state, ``RunFolderError`` for
    a folder holding another run, ``TrainingInterrupted`` at SIGINT / SIGTERM (checkpoint written; resume).
    """
    from ..flow import InternalCoordinateFlow
    from ..sampling import TargetDensity
    from ..train import FABObjective, MaximumLikelihoodObjective, TrainConfig, Trainer, training_summary
    from .coverage import split_replicas
    from .evaluation import evaluate_molecule
    from .states import peptide_torsions

    settings = settings or WorkflowSettings()
    start = time.perf_counter()
    out = Path(out_dir)
    if torsions is None:
        try:
            torsions = [t for t in peptide_torsions(molecule.topology) if t.name.startswith("phi")]
        except ValueError as e:
            raise ValueError(
                "the molecule is not a peptide, so there is no default torsion: name the torsions to compare, "
                "Torsion('name', (a, b, c, d)) (CLI: --torsion name=a,b,c,d)"
            ) from e
    torsions = list(torsions)
    if not torsions and not states:
        raise ValueError("nothing to compute: name at least one torsion or state")
    states = dict(states or {})
    for t in torsions:
        if max(t.atoms) >= molecule.n_atoms:
            raise ValueError(f"torsion {t.name} names atom {max(t.atoms)}, but the molecule has {molecule.n_atoms}")
    references = dict(references or {})
    _check_references(references, torsions)
    _open_run_folder(out, _manifest(molecule, torsions, states, settings), resume)
    seeded = seeded_torsions(molecule, torsions)
    coverage_states = {s.label: s for t in torsions for s in (positive_state(t), negative_state(t))} | states
    energy, allowed = _energy(molecule, settings.temperature_K)
    torch.manual_seed(settings.seed)

    say(f"energy: {molecule.energy_backend} ({molecule.backend_reason})")
    frames, coverage = _coverage(molecule, energy, seeded, coverage_states, settings, out / "coverage", progress)
    _print_coverage(coverage, say)
    train, valid = split_replicas(frames, 0.1)

    config = settings.flow_config(molecule.n_atoms)
    flow = InternalCoordinateFlow.for_topology(molecule.topology, data=train.double(), seed=settings.seed, **config)
    say(f"flow: InternalCoordinateFlow {config}, {sum(p.numel() for p in flow.parameters())} parameters")
    ml_config = TrainConfig(
        n_iterations=settings.ml_iterations,
        lr=settings.ml_lr,
        warmup_iterations=min(200, settings.ml_iterations // 10 + 1),
        seed=settings.seed,
        progress=progress,
    )
    say(f"maximum likelihood: {settings.ml_iterations} iterations x {settings.ml_batch_size} frames")
    ml = Trainer(flow, MaximumLikelihoodObjective(train, settings.ml_batch_size), ml_config, out_dir=out / "ml")
    ml_result = ml.run(resume=resume)
    train_nll, validation_nll = _held_out_check(flow, train, valid, settings.seed)
    flow.float()
    if math.isfinite(validation_nll):
        say(
            f"maximum likelihood: NLL {train_nll:.2f} on training frames, {validation_nll:.2f} on held-out replicas "
            f"(gap {validation_nll - train_nll:.2f} nats)"
        )
        if validation_nll - train_nll > GAP_WARNING_NATS:
            logger.warning(
                "the flow fits its training frames %.1f nats better than held-out replicas: it has learned the "
                "replicas more than the molecule, and its weights will be heavy-tailed; more replicas (--replicas) "
                "give it more independent starting points",
                validation_nll - train_nll,
            )

    batch = settings.fab_batch_size
    objective = FABObjective(
        TargetDensity(energy, energy_cut=1e3),
        batch_size=batch,
        n_intermediate=settings.fab_intermediate,
        n_leapfrog=settings.fab_leapfrog,
        n_updates=settings.fab_updates,
        step_size=settings.fab_step_size_nm,
        buffer_max_length=batch * settings.fab_buffer_batches,
        buffer_min_length=batch * settings.fab_buffer_min_batches,
    )
    fab_config = TrainConfig(
        n_iterations=settings.fab_iterations,
        lr=settings.fab_lr,
        warmup_iterations=max(1, settings.fab_iterations // 10),
        seed=settings.seed + 1,
        progress=progress,
    )
    say(f"FAB: {settings.fab_iterations} iterations x {batch} AIS samples on the target")
    fab_result = Trainer(flow, objective, fab_config, out_dir=out / "fab").run(resume=resume)

    say(f"evaluation: {settings.n_samples} flow samples reweighted with float64 energies")
    scores = evaluate_molecule(
        flow.double(),
        energy,
        molecule.topology,
        allowed,
        torsions,
        out,
        settings.n_samples,
        plot_torsions=seeded,
        states=states,
        pairs=pairs,
        references={name: ref.profile for name, ref in references.items() if ref.profile is not None},
        generator=torch.Generator().manual_seed(settings.seed + 2),
        n_bootstrap=settings.n_bootstrap,
        min_ess=settings.min_ess,
        seed=settings.seed,
    )
    for entry in scores["torsion_free_energies"]:
        if entry["name"] in references:
            entry.update(compare_with_reference(entry, references[entry["name"]]))
    results = {
        **scores,
        "n_atoms": molecule.n_atoms,
        "energy_backend": molecule.energy_backend,
        "flow": {"class": "InternalCoordinateFlow", **config},
        "coverage": coverage,
        "ml_validation_nll": validation_nll,
        "ml_train_nll": train_nll,
        "ml_wall_time_s": ml_result.wall_time_s,
        "fab": training_summary(fab_result),
        "n_target_evaluations_total": int(
            coverage["n_energy_evaluations"] + fab_result.n_target_evaluations + settings.n_samples
        ),
        "wall_time_s_total": time.perf_counter() - start,
        "resumed": bool(resume),
    }
    write_json(out / "results.json", results)
    return results
