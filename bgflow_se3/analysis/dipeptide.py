"""The evaluation of a flow trained on a dipeptide (alanine dipeptide), shared by the examples and the CLI.

``evaluate_dipeptide`` draws flow samples with their target energies, writes them (mdtraj-readable trajectory and
the arrays the free-energy scripts read), and reports: reverse ESS, the fraction of D-chirality samples, the
Ramachandran KL against MD data and the phi KL against an umbrella-sampling profile (each unweighted and
reweighted by the importance weights), and the phi-state free-energy difference through pymbar MBAR.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..energy.base import Energy
from ..errors import ConvergenceError, EmptyStateError, LowOverlapWarning, NonFiniteInputError
from ..reweight import effective_sample_size, free_energy_difference, log_importance_weights, pareto_k
from ..reweight.fes import free_energy_surface
from ..reweight.state_pair import state_pair_free_energy
from ..sampling.flow_samples import sample_with_energies
from ..sampling.joint import JointFlow
from .chirality import L_CHIRALITY_SIGN, chirality_signs, d_chirality_fraction
from .dihedrals import as_mdtraj_topology, phi_psi
from .plots import free_energy_profile_figure, ramachandran_panels_figure
from .ramachandran import histogram_kl, periodic_histogram, phi_profile_kl, ramachandran_kl

__all__ = ["evaluate_dipeptide"]

SAMPLE_FILES = ("samples.dcd", "topology.pdb", "samples.npz", "ramachandran.png")


def _kl_pair(kl_fn, weights: np.ndarray | None) -> tuple[float, float]:
    """(unweighted, reweighted) divergence; the reweighted one is NaN when every weight is zero."""
    plain = kl_fn(None)
    reweighted = kl_fn(weights) if weights is not None else math.nan
    return plain, reweighted


def _phi_profile_figure(phi, log_q, u, log_p_aug, umbrella_profile, out: Path) -> None:
    """phi_profile.png: the reweighted flow's phi free-energy profile (pymbar FES, one-sigma band) against the
    umbrella-sampling profile when there is one. Skipped (with a warning) when no sample has nonzero weight."""
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fes = free_energy_surface(phi, log_q, u, log_p_aug=log_p_aug, bins=np.linspace(-np.pi, np.pi, 37))
        reference = None if umbrella_profile is None else (umbrella_profile[0], umbrella_profile[1], None)
        df = np.where(np.isfinite(fes.df), fes.df, np.nan)
        figure = free_energy_profile_figure(
            fes.centers[0], fes.f, df, reference=reference, label="flow, reweighted", reference_label="umbrella"
        )
    except (ValueError, ConvergenceError) as error:
        warnings.warn(f"no phi profile figure: {error}", stacklevel=3)
        return
    figure.savefig(out / "phi_profile.png")
    plt.close(figure)


def evaluate_dipeptide(
    flow: nn.Module,
    energy: Energy,
    topology: Any,
    n_samples: int,
    out_dir: str | Path,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    reference_md: np.ndarray | None = None,
    umbrella_profile: tuple[np.ndarray, np.ndarray] | None = None,
    umbrella_ramachandran: np.ndarray | None = None,
    bins: int = 64,
    restrict_to_l: bool = True,
    n_bootstrap: int = 200,
    min_effective_samples: float = 50.0,
    max_trajectory_frames: int = 100_000,
) -> dict[str, float]:
    """Sample, save and score a flow on a dipeptide; returns the numbers for ``results.json``.

    flow: the trained flow, sampled in its own dtype and device (use float64). energy: the target, reduced u.
    topology: openmm or mdtraj topology of the molecule (one phi, one psi). n_samples: flow samples to draw.
    out_dir: receives ``samples.dcd`` (the first ``max_trajectory_frames`` samples) + ``topology.pdb``
    (``mdtraj.load``), ``samples.npz`` (every sample: x in nm as float32, log_q, u (+inf for D samples when
    restricted), log_p_aug in float64, and ``augmented``, whether the flow has auxiliary variables: the format of
    ``bgflow_se3.cli.SAMPLES_FORMAT``, the input of ``bgflow-se3 free-energy`` and ``examples/free_energy_aldp.py``),
    ``ramachandran.png`` and ``phi_profile.png`` (the reweighted phi profile against the umbrella profile).
    reference_md: reference configurations (n, n_atoms, 3), nm, e.g. MD frames: gives ``kl_md`` and
    ``kl_md_reweighted``, KL(MD || flow) in nats on a periodic ``bins`` x ``bins`` (phi, psi) histogram.
    umbrella_profile: ``(centers, f)`` of a phi profile in kT (``systems.aldp_references.load_profile``): gives
    ``kl_phi_umbrella`` and ``kl_phi_umbrella_reweighted``, KL(umbrella || flow) along phi, nats.
    umbrella_ramachandran: (phi, psi) probability of the target on b x b periodic bins (index [phi, psi], bins as
    ``periodic_histogram``; ``systems.aldp_references.reference_ramachandran``: MBAR-reweighted umbrella MD): gives
    ``kl_ramachandran_umbrella`` and ``kl_ramachandran_umbrella_reweighted``, KL(reference || flow), nats, on
    its b x b bins, and a panel of the figure.
    Divergences without their reference are NaN. Samples with non-finite coordinates are dropped from the
    angles (counted in ``n_nonfinite_samples``) and keep weight zero.
    restrict_to_l: the target is the L molecule: samples with a D alpha carbon get u = +inf (weight 0; the force
    field gives mirror images equal energy, so they would otherwise be counted with their own phi).
    The phi-state free energy F(phi > 0) - F(phi <= 0) (kT) is pymbar's EXP estimate over the L samples with a
    bootstrap error (``n_bootstrap`` resamples; 0: the delta method); it is flagged reliable when each state rests
    on at least ``min_effective_samples`` effective samples and pymbar reported no low overlap.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import mdtraj

    top = as_mdtraj_topology(topology)
    samples = sample_with_energies(flow, energy, n_samples, generator, batch_size)
    finite = np.isfinite(samples.x).all(axis=(1, 2))
    if not finite.any():
        raise NonFiniteInputError(f"all {n_samples} flow samples hold NaN or inf coordinates: the flow is broken")
    u = np.where(finite, samples.u, math.inf)
    d_fraction = d_chirality_fraction(top, samples.x[finite])
    if restrict_to_l:
        is_l = np.zeros(len(finite), dtype=bool)
        is_l[finite] = (chirality_signs(top, samples.x[finite]) == L_CHIRALITY_SIGN).all(axis=1)
        u = np.where(is_l, u, math.inf)
    log_q = np.where(finite, samples.log_q, 0.0)  # dropped samples keep weight 0 through u = inf
    log_w = log_importance_weights(log_q, u, log_p_aug=samples.log_p_aug)
    x = samples.x[finite]
    trajectory = mdtraj.Trajectory(x[:max_trajectory_frames].astype(np.float32), top)
    trajectory.save_dcd(str(out / "samples.dcd"))
    trajectory[0].save_pdb(str(out / "topology.pdb"))
    np.savez(
        out / "samples.npz",
        x=x.astype(np.float32),
        log_q=log_q[finite],
        u=u[finite],
        log_p_aug=samples.log_p_aug[finite],
        augmented=(flow if isinstance(flow, JointFlow) else JointFlow(flow)).n_aug > 0,
    )

    phi, psi = phi_psi(top, x)
    log_w_kept = log_w[finite]
    weights = np.exp(log_w_kept - log_w_kept.max()) if np.isfinite(log_w_kept).any() else None
    panels = [(phi, psi, None, "flow samples")]
    if weights is not None:
        panels.append((phi, psi, weights, "flow samples, reweighted"))
    flow_angles = np.stack([phi, psi], 1)
    results = {"kl_md": math.nan, "kl_md_reweighted": math.nan}
    if reference_md is not None:
        ref_phi, ref_psi = phi_psi(top, reference_md)
        panels.append((ref_phi, ref_psi, None, "MD reference"))
        reference = np.stack([ref_phi, ref_psi], 1)
        results["kl_md"], results["kl_md_reweighted"] = _kl_pair(
            lambda w: ramachandran_kl(reference, flow_angles, bins=bins, weights_q=w), weights
        )
    results["kl_ramachandran_umbrella"], results["kl_ramachandran_umbrella_reweighted"] = math.nan, math.nan
    if umbrella_ramachandran is not None:
        reference_p = np.asarray(umbrella_ramachandran, dtype=np.float64)
        b = reference_p.shape[0]
        if reference_p.shape != (b, b) or not (reference_p >= 0).all() or not reference_p.sum() > 0:
            raise ValueError(f"umbrella_ramachandran must be a non-negative (b, b) histogram, got {reference_p.shape}")
        results["kl_ramachandran_umbrella"], results["kl_ramachandran_umbrella_reweighted"] = _kl_pair(
            lambda w: histogram_kl(reference_p, periodic_histogram(flow_angles, b, w)), weights
        )
        grid = -np.pi + (np.arange(b) + 0.5) * 2 * np.pi / b  # the reference drawn as weighted bin centres
        grid_phi, grid_psi = np.meshgrid(grid, grid, indexing="ij")
        panels.append((grid_phi.ravel(), grid_psi.ravel(), reference_p.ravel(), "umbrella MD (MBAR)"))
    results["kl_phi_umbrella"], results["kl_phi_umbrella_reweighted"] = math.nan, math.nan
    if umbrella_profile is not None:
        centers, f = umbrella_profile
        results["kl_phi_umbrella"], results["kl_phi_umbrella_reweighted"] = _kl_pair(
            lambda w: phi_profile_kl(centers, f, phi, weights_q=w), weights
        )
    ramachandran_panels_figure(panels, bins=bins).savefig(out / "ramachandran.png")
    _phi_profile_figure(phi, log_q[finite], u[finite], samples.log_p_aug[finite], umbrella_profile, out)

    positive = np.zeros(len(finite), dtype=bool)
    positive[finite] = phi > 0
    in_0_2 = np.zeros(len(finite), dtype=bool)
    in_0_2[finite] = (phi > 0) & (phi < 2)
    # F(phi > 0) - F(phi <= 0) and its verdict: the rule the workflow's torsion states share
    pair = state_pair_free_energy(
        log_q,
        u,
        positive,
        finite & ~positive,
        log_p_aug=samples.log_p_aug,
        n_bootstrap=n_bootstrap,
        seed=0,
        min_effective_samples=min_effective_samples,
        labels=("phi > 0", "phi <= 0"),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowOverlapWarning)
            delta_f_0_2 = free_energy_difference(
                log_q, u, in_0_2, finite & ~in_0_2, log_p_aug=samples.log_p_aug, method="exp", n_bootstrap=0
            ).value
    except (EmptyStateError, ConvergenceError):
        delta_f_0_2 = math.nan
    return {
        "n_samples": int(n_samples),
        "n_nonfinite_samples": int((~finite).sum()),
        "reverse_ess": float(effective_sample_size(log_w).fraction),
        "pareto_k": pareto_k(log_w),  # all samples' weight tail (reweight.tail): above 0.7 the flow misses mass
        "d_chirality_fraction": d_fraction,
        "restricted_to_l": bool(restrict_to_l),
        "effective_samples_phi_positive": pair.effective_a,
        "effective_samples_phi_negative": pair.effective_b,
        # the weight-tail index of each state (reweight.tail): above ~0.7 the flow covers the state too thinly
        "pareto_k_phi_positive": pair.pareto_k_a,
        "pareto_k_phi_negative": pair.pareto_k_b,
        **results,
        "kl_bins": bins,
        "dF_phi_positive_minus_negative_kT": pair.value,
        "dF_stderr_kT": pair.stderr,
        "dF_error": pair.error,
        # False when pymbar failed or warned of low overlap, a state has too few effective samples or heavy-tailed
        # weights: then the value and its error bar are not to be trusted
        "dF_reliable": pair.reliable,
        "dF_warning": pair.warning,
        "dF_phi_in_0_2_minus_rest_kT": delta_f_0_2,
    }
