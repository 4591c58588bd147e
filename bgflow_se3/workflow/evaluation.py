"""The workflow's last stage: flow samples reweighted with float64 energies into free energies, files and figures.

``evaluate_molecule`` draws flow samples, scores them with the exact target (float64; configurations of the other
handedness get u = +inf, weight 0), writes them (``samples.npz`` in the format of ``bgflow-se3 free-energy``,
``samples.dcd`` + ``topology.pdb`` for mdtraj) and reports, through ``states.torsion_free_energies`` and
``states.state_free_energies``, F(torsion > 0) - F(torsion <= 0) for each requested torsion and F_A - F_B for each
requested pair of named states, each with a bootstrap error, effective samples per state and the ``reliable`` flag.
Figures: ``ramachandran.png`` (per residue of a peptide: flow samples reweighted) and ``torsion_profiles.png`` (the
reweighted free-energy profile of every torsion, a reference overlaid where one is given).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConvergenceError, LowOverlapWarning, NonFiniteInputError
from ..files import save_npz_atomically
from ..reweight import effective_sample_size, log_importance_weights, pareto_k
from ..reweight.fes import free_energy_surface
from ..sampling.flow_samples import sample_with_energies
from ..sampling.joint import JointFlow
from .states import State, Torsion, state_free_energies, torsion_free_energies, torsion_values

__all__ = ["evaluate_molecule"]

PROFILE_BINS = 36
MAX_TRAJECTORY_FRAMES = 100_000


def _profiles(angles: np.ndarray, torsions: Sequence[Torsion], log_q, u, log_p_aug, references) -> list:
    """(title, centers, f, df, reference) per torsion: the reweighted profile along the angle (pymbar FES)."""
    profiles = []
    bins = np.linspace(-np.pi, np.pi, PROFILE_BINS + 1)
    for k, torsion in enumerate(torsions):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fes = free_energy_surface(angles[:, k], log_q, u, log_p_aug=log_p_aug, bins=bins)
            centers, f, df = fes.centers[0], fes.f, fes.df
        except (ValueError, ConvergenceError) as error:
            warnings.warn(f"no profile of torsion {torsion.name}: {error}", stacklevel=3)
            centers, f, df = 0.5 * (bins[1:] + bins[:-1]), np.full(PROFILE_BINS, np.inf), None
        profiles.append((torsion.name, centers, f, df, (references or {}).get(torsion.name)))
    return profiles


def _residue_pairs(torsions: Sequence[Torsion]) -> list[tuple[int, int, str]]:
    """(phi column, psi column, residue label) for each residue whose phi<k> and psi<k> are both among torsions."""
    index = {t.name: k for k, t in enumerate(torsions)}
    pairs = []
    for name, k in index.items():
        if name.startswith("phi") and f"psi{name[3:]}" in index:
            pairs.append((k, index[f"psi{name[3:]}"], f"residue {name[3:]}"))
    return pairs


def evaluate_molecule(
    flow: nn.Module,
    energy: Any,
    topology: Any,
    allowed: Callable[[torch.Tensor], torch.Tensor],
    torsions: Sequence[Torsion],
    out_dir: str | Path,
    n_samples: int,
    *,
    plot_torsions: Sequence[Torsion] = (),
    states: Mapping[str, State] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    references: Mapping[str, tuple[Any, Any]] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    n_bootstrap: int = 200,
    min_ess: float = 50.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample ``flow`` (in its own dtype: use float64), reweight to ``energy`` and report free energies.

    energy: the exact reduced target (float64 ``TorchForceField`` or ``OpenMMEnergy``). allowed: x (batch, n_atoms,
    3) -> bool (batch,), the configurations of the user's molecule (``analysis.same_handedness``); the others get
    u = +inf. torsions: the torsions whose F(> 0) - F(<= 0) is reported (``torsion_free_energies`` in the result).
    plot_torsions: further torsions drawn in ``torsion_profiles.png`` and used for the per-residue Ramachandran
    plot (for peptides: every phi and psi). states, pairs: named states and the pairs to compare
    (``state_free_energies``; default no states). references: torsion name -> (centers, f in kT) drawn over its
    profile. Returns the numbers for ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import mdtraj

    from ..analysis.dihedrals import as_mdtraj_topology
    from ..analysis.plots import profiles_grid_figure, ramachandran_panels_figure

    samples = sample_with_energies(flow, energy, n_samples, generator, batch_size)
    finite = np.isfinite(samples.x).all(axis=(1, 2))
    if not finite.any():
        raise NonFiniteInputError(f"all {n_samples} flow samples hold NaN or inf coordinates: the flow is broken")
    same = np.zeros(n_samples, dtype=bool)
    with torch.no_grad():
        for start in range(0, n_samples, batch_size):
            part = torch.from_numpy(samples.x[start : start + batch_size])
            ok = finite[start : start + batch_size]
            part = torch.where(torch.from_numpy(ok)[:, None, None], part, 0)  # NaN rows: no handedness
            same[start : start + batch_size] = ok & allowed(part).numpy()
    u = np.where(finite & same, samples.u, math.inf)
    log_q = np.where(finite, samples.log_q, 0.0)
    log_p_aug = samples.log_p_aug
    log_w = log_importance_weights(log_q, u, log_p_aug=log_p_aug)
    x = np.where(finite[:, None, None], samples.x, np.nan)

    top = as_mdtraj_topology(topology)
    kept = x[finite]
    trajectory = mdtraj.Trajectory(kept[:MAX_TRAJECTORY_FRAMES].astype(np.float32), top)
    trajectory.save_dcd(str(out / "samples.dcd"))
    trajectory[0].save_pdb(str(out / "topology.pdb"))
    save_npz_atomically(
        out / "samples.npz",
        x=kept.astype(np.float32),
        log_q=log_q[finite],
        u=u[finite],
        log_p_aug=log_p_aug[finite],
        augmented=(flow if isinstance(flow, JointFlow) else JointFlow(flow)).n_aug > 0,
    )

    with warnings.catch_warnings():  # low overlap is reported per entry (``reliable``, ``warning``)
        warnings.simplefilter("ignore", LowOverlapWarning)
        table = torsion_free_energies(
            x, log_q, u, torsions, log_p_aug=log_p_aug, n_bootstrap=n_bootstrap, seed=seed, min_ess=min_ess
        )
        state_table = []
        if states:
            state_table = state_free_energies(
                x, log_q, u, states, pairs, log_p_aug=log_p_aug, n_bootstrap=n_bootstrap, seed=seed, min_ess=min_ess
            )

    drawn = list(dict.fromkeys([*torsions, *plot_torsions]))
    angles = torsion_values(kept, drawn)
    profiles = _profiles(angles, drawn, log_q[finite], u[finite], log_p_aug[finite], references)
    profiles_grid_figure(profiles).savefig(out / "torsion_profiles.png")
    kept_log_w = log_w[finite]
    if np.isfinite(kept_log_w).any():
        weights = np.exp(kept_log_w - kept_log_w.max())
        panels = [(angles[:, i], angles[:, j], weights, label) for i, j, label in _residue_pairs(drawn)]
        if panels:
            ramachandran_panels_figure(panels).savefig(out / "ramachandran.png")

    ess = effective_sample_size(log_w)
    return {
        "n_samples": int(n_samples),
        "n_nonfinite_samples": int((~finite).sum()),
        "other_handedness_fraction": float(1.0 - same[finite].mean()),
        "reverse_ess": float(ess.fraction),
        "effective_samples": float(ess.count),
        "pareto_k": pareto_k(log_w),
        "torsion_free_energies": table,
        "state_free_energies": state_table,
        "all_reliable": bool(all(e["reliable"] for e in table) and all(e["reliable"] for e in state_table)),
    }
