"""Equilibrium reference data for the particle benchmarks (DW4, LJ13, LJ55) from parallel Metropolis chains.

Many independent random-walk Metropolis chains run in the CoM-free subspace (every proposal has its centre of
mass removed, so the chains never leave it and the proposal stays symmetric). The step size is tuned during a
first burn-in towards a target acceptance, the integrated autocorrelation time ``tau_int`` of the reduced energy
is measured on a pilot run, and burn-in and thinning are set from it. Equilibrium is checked before anything is
saved: the mean energy of independent groups of chains must agree, and the virial identity
``E[x . grad u] = (n_atoms - 1) * dim`` must hold within its error. Samples are shuffled with a fixed seed and
split into train / val / test, cached as ``.npy`` files outside git (``~/.cache/bgflow_se3/<name>/`` unless
``BGFLOW_SE3_CACHE`` or ``cache_dir`` says otherwise). Lengths are in the reduced units of the targets.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..energy import DoubleWellEnergy, Energy, LennardJonesEnergy
from ..errors import ConvergenceError

__all__ = [
    "PARTICLE_SYSTEMS",
    "EquilibriumCheck",
    "MetropolisResult",
    "ParticleDataConfig",
    "check_equilibrium",
    "default_cache_dir",
    "integrated_autocorrelation_time",
    "load_particle_data",
    "make_particle_data",
    "metropolis_chains",
    "particle_energy",
    "remove_com",
    "stale_cache_reason",
    "target_signature",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ParticleDataConfig:
    """Settings of one data recipe. Steps count whole-configuration Metropolis moves of every chain."""

    n_chains: int  # independent chains run in parallel
    n_train: int
    n_val: int
    n_test: int
    init_spacing: float  # lattice spacing of the initial configurations (reduced length units)
    tune_steps: int  # first burn-in, with step-size adaptation
    pilot_steps: int  # fixed-step pilot run on which tau_int is measured
    n_leapfrog: int = 0  # 0: random-walk Metropolis; > 0: HMC with this many leapfrog steps
    target_acceptance: float = 0.4
    burn_in_factor: float = 20.0  # extra burn-in after the pilot = burn_in_factor * tau_int steps
    thin_factor: float = 2.0  # keep one sample every thin_factor * tau_int steps
    seed: int = 0


#: The shipped recipes. DW4 and LJ13 take a minute or two on one CPU core; LJ55 is slow (tens of minutes).
PARTICLE_SYSTEMS: dict[str, ParticleDataConfig] = {
    "dw4": ParticleDataConfig(
        n_chains=1000, n_train=10000, n_val=1000, n_test=1000, init_spacing=4.0, tune_steps=1000, pilot_steps=2000
    ),
    "lj13": ParticleDataConfig(
        n_chains=1000,
        n_train=10000,
        n_val=1000,
        n_test=1000,
        init_spacing=1.1,
        tune_steps=200,
        pilot_steps=400,
        n_leapfrog=10,
        target_acceptance=0.65,
    ),
    "lj55": ParticleDataConfig(
        n_chains=1000,
        n_train=10000,
        n_val=1000,
        n_test=1000,
        init_spacing=1.1,
        tune_steps=500,
        pilot_steps=1000,
        n_leapfrog=10,
        target_acceptance=0.65,
    ),
}


def particle_energy(name: str) -> Energy:
    """The benchmark target of a particle system: ``"dw4"``, ``"lj13"`` or ``"lj55"``.

    LJ13 and LJ55 sum the pair potential over ordered pairs (bgflow's ``LennardJonesPotential``; the LJ13 and
    LJ55 sets of equivariant flow matching and DEM). E-NF eq. 21 writes the unique-pair sum
    (``LennardJonesEnergy(pair_sum="unique")``), a different ensemble; see ``systems/lj13/README.md`` for why
    neither reproduces the ~30-nat NLLs reported on the public E-NF LJ13 set.
    """
    if name == "dw4":
        return DoubleWellEnergy()
    if name == "lj13":
        return LennardJonesEnergy(13, 3, pair_sum="ordered")
    if name == "lj55":
        return LennardJonesEnergy(55, 3, pair_sum="ordered")
    raise ValueError(f"unknown particle system {name!r}; choose one of {sorted(PARTICLE_SYSTEMS)}")


def target_signature(energy: Energy) -> dict[str, object]:
    """The parameters that define a particle target, as stored in ``meta.json`` (to detect stale caches)."""
    if isinstance(energy, DoubleWellEnergy):
        keys = ("a", "b", "c", "d0", "tau")
    elif isinstance(energy, LennardJonesEnergy):
        keys = ("eps", "rm", "oscillator_scale", "tau", "pair_sum")
    else:
        raise TypeError(f"no signature for {type(energy).__name__}; expected a DW or LJ particle target")
    described = {k: getattr(energy, k) for k in keys}
    return {"class": type(energy).__name__, "n_atoms": energy.n_atoms, "dim": energy.dim, **described}


def _cached_signature(meta: dict, name: str) -> dict[str, object]:
    """The target a cache was made for; caches from before ``meta["target"]`` existed used these defaults."""
    if "target" in meta:
        return meta["target"]
    legacy = {"dw4": DoubleWellEnergy(), "lj13": LennardJonesEnergy(13, 3), "lj55": LennardJonesEnergy(55, 3)}
    return target_signature(legacy[name])


def remove_com(x: Tensor) -> Tensor:
    """Subtract the centre of mass (equal masses). x: shape (batch, n_atoms, dim); returns the same shape."""
    return x - x.mean(dim=-2, keepdim=True)


def default_cache_dir() -> Path:
    """``$BGFLOW_SE3_CACHE`` if set, else ``~/.cache/bgflow_se3``."""
    return Path(os.environ.get("BGFLOW_SE3_CACHE", Path.home() / ".cache" / "bgflow_se3"))


def _initial_configurations(
    n_chains: int, n_atoms: int, dim: int, spacing: float, generator: torch.Generator, dtype: torch.dtype
) -> Tensor:
    """Random subsets of a cubic lattice with small jitter: no overlaps, so LJ energies start finite and moderate."""
    side = math.ceil(n_atoms ** (1.0 / dim))
    while side**dim < n_atoms:
        side += 1
    axes = [torch.arange(side, dtype=dtype)] * dim
    sites = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dim) * spacing
    keys = torch.rand(n_chains, sites.shape[0], generator=generator)
    idx = keys.argsort(dim=1)[:, :n_atoms]
    x = sites[idx] + 0.05 * spacing * torch.randn(n_chains, n_atoms, dim, generator=generator, dtype=dtype)
    return remove_com(x)


@dataclass(frozen=True)
class MetropolisResult:
    """Output of ``metropolis_chains``: ``samples`` (n_kept, n_chains, n_atoms, dim), ``energies`` (n_kept, n_chains),
    the final state (n_chains, n_atoms, dim), the step size used and the acceptance rate."""

    samples: Tensor
    energies: Tensor
    final: Tensor
    step_size: float
    acceptance: float


def metropolis_chains(
    energy: Energy,
    x0: Tensor,
    n_steps: int,
    step_size: float,
    generator: torch.Generator,
    thin: int = 1,
    n_leapfrog: int = 0,
    tune: bool = False,
    target_acceptance: float = 0.4,
    progress: bool = False,
) -> MetropolisResult:
    """Run ``x0.shape[0]`` parallel Metropolis chains on exp(-u) in the CoM-free subspace.

    x0: CoM-free start, shape (n_chains, n_atoms, dim). With ``n_leapfrog = 0`` every proposal is a random walk
    ``x + step_size * (xi - mean(xi))`` with Gaussian ``xi`` (symmetric, never moves the CoM). With
    ``n_leapfrog > 0`` it is Hamiltonian Monte Carlo: CoM-free unit-mass Gaussian momenta and ``n_leapfrog``
    leapfrog steps of size ``step_size`` (the targets are translation invariant, so forces are CoM-free too).
    With ``tune=True`` the step size is multiplied by ``exp(acceptance - target)`` every 20 steps (use only during
    burn-in: adaptation breaks detailed balance). Keeps every ``thin``-th state. Randomness comes from
    ``generator`` (a CPU generator).
    """
    if thin < 1 or n_steps < 0 or n_leapfrog < 0:
        raise ValueError(f"need thin >= 1, n_steps >= 0, n_leapfrog >= 0; got {thin}, {n_steps}, {n_leapfrog}")
    x = x0.clone()
    with torch.no_grad():
        u = energy(x)
    if not bool(torch.isfinite(u).all()):
        raise ValueError("the initial configurations have non-finite energy; start from finite configurations")
    force = energy.force(x) if n_leapfrog else None
    kept_x, kept_u = [], []
    accepted_total, window_accepted = 0.0, 0.0
    steps = range(n_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="MCMC", leave=False)
    for step in steps:
        xi = remove_com(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
        if n_leapfrog:
            proposal, p, f_new = x, xi + 0.5 * step_size * force, force
            for k in range(n_leapfrog):
                proposal = proposal + step_size * p
                f_new = energy.force(proposal)
                p = p + (step_size if k < n_leapfrog - 1 else 0.5 * step_size) * f_new
            with torch.no_grad():
                u_new = energy(proposal)
            log_ratio = u - u_new + 0.5 * (xi.pow(2).sum(dim=(1, 2)) - p.pow(2).sum(dim=(1, 2)))
        else:
            proposal = x + step_size * xi
            with torch.no_grad():
                u_new = energy(proposal)
            log_ratio = u - u_new
        log_uniform = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device).log()
        accept = log_uniform < log_ratio  # u_new = inf or NaN is never accepted
        x = torch.where(accept[:, None, None], proposal, x)
        u = torch.where(accept, u_new, u)
        if n_leapfrog:
            force = torch.where(accept[:, None, None], f_new, force)
        rate = accept.to(x.dtype).mean().item()
        accepted_total += rate
        window_accepted += rate
        if tune and (step + 1) % 20 == 0:
            step_size *= math.exp(window_accepted / 20 - target_acceptance)
            window_accepted = 0.0
        if (step + 1) % thin == 0:
            kept_x.append(x.detach().clone())
            kept_u.append(u.detach().clone())
    return MetropolisResult(
        samples=torch.stack(kept_x) if kept_x else x.new_zeros((0, *x.shape)),
        energies=torch.stack(kept_u) if kept_u else x.new_zeros((0, x.shape[0])),
        final=x.detach(),
        step_size=step_size,
        acceptance=accepted_total / max(n_steps, 1),
    )


def integrated_autocorrelation_time(series: Tensor, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time of a multi-chain series, in steps (1 = uncorrelated).

    series: shape (n_steps, n_chains). The autocorrelation function is averaged over chains (each centred on the
    grand mean) and summed with Sokal's self-consistent window ``M >= window_factor * tau``.
    """
    if series.ndim != 2 or series.shape[0] < 4:
        raise ValueError(f"series must have shape (n_steps >= 4, n_chains), got {tuple(series.shape)}")
    s = series.double() - series.double().mean()
    n = s.shape[0]
    spectrum = torch.fft.rfft(s, n=2 * n, dim=0)
    acf = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n, dim=0)[:n].mean(dim=1)
    if acf[0] <= 0:
        raise ValueError("the series is constant; its autocorrelation time is undefined")
    rho = acf / acf[0]
    tau = 2.0 * torch.cumsum(rho, 0) - 1.0
    for m in range(1, n):
        if m >= window_factor * tau[m].item():
            return max(float(tau[m]), 1.0)
    raise ConvergenceError(
        f"the series ({n} steps) is too short to estimate its autocorrelation time (tau > {float(tau[-1]):.1f}); "
        "run more steps"
    )


@dataclass(frozen=True)
class EquilibriumCheck:
    """Equilibrium diagnostics on CoM-free samples. Errors are one sigma of the mean."""

    virial: float  # mean of x . grad u
    virial_expected: float  # (n_atoms - 1) * dim
    virial_stderr: float
    group_energy_means: tuple[float, ...]  # mean u in each independent group of chains
    group_energy_stderrs: tuple[float, ...]
    energy_chi2: float  # chi^2 of the group means around their weighted mean
    energy_dof: int
    passed: bool


def check_equilibrium(
    energy: Energy, samples: Tensor, tau: float = 1.0, n_groups: int = 4, z_max: float = 4.0
) -> EquilibriumCheck:
    """Check the virial identity and agreement of mean energies between independent groups of chains.

    samples: shape (n_kept, n_chains, n_atoms, dim) (chains along dim 1, at temperature tau = 1 of the target).
    tau: integrated autocorrelation time in units of the kept samples (inflates errors by sqrt(tau)).
    Passes when the virial is within ``z_max`` sigma of ``(n_atoms - 1) * dim`` and the chi^2 of the group energy
    means is below the ``chi^2`` value that ``z_max`` sigma would correspond to (a one-sided bound).
    """
    n_kept, n_chains = samples.shape[:2]
    if n_chains < n_groups:
        raise ValueError(f"need at least n_groups={n_groups} chains, got {n_chains}")
    flat = remove_com(samples.reshape(-1, *samples.shape[2:]))
    virial = (flat * -energy.force(flat)).sum(dim=(1, 2)).reshape(n_kept, n_chains).double()
    u = energy(flat).reshape(n_kept, n_chains).double()
    inflation = math.sqrt(max(tau, 1.0))
    v_mean = virial.mean().item()
    v_err = virial.std().item() / math.sqrt(virial.numel()) * inflation
    expected = float((energy.n_atoms - 1) * energy.dim)
    means, errs = [], []
    for group in torch.tensor_split(u, n_groups, dim=1):
        means.append(group.mean().item())
        errs.append(group.std().item() / math.sqrt(group.numel()) * inflation)
    m, e = np.array(means), np.array(errs)
    w = 1.0 / e**2
    pooled = float((w * m).sum() / w.sum())
    chi2 = float((w * (m - pooled) ** 2).sum())
    dof = n_groups - 1
    # Wilson-Hilferty: the chi^2(dof) quantile at the normal z_max.
    chi2_max = dof * (1 - 2 / (9 * dof) + z_max * math.sqrt(2 / (9 * dof))) ** 3
    passed = abs(v_mean - expected) < z_max * v_err and chi2 < chi2_max
    return EquilibriumCheck(v_mean, expected, v_err, tuple(means), tuple(errs), chi2, dof, passed)


def make_particle_data(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    config: ParticleDataConfig | None = None,
    progress: bool = True,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> Path:
    """Generate, check and cache train/val/test data of a particle system; returns the folder.

    Writes ``train.npy``, ``val.npy``, ``test.npy`` (float64, shape (n, n_atoms, dim), CoM-free) and
    ``meta.json`` (settings, tau_int, acceptance, checks, wall time) to ``<cache_dir>/<name>/``.
    Raises ``ConvergenceError`` when the equilibrium checks fail and ``strict`` is True. ``device``: where the
    chains run (``"cuda"`` speeds up LJ55); random numbers come from a seeded CPU generator either way.
    """
    energy = particle_energy(name).double().to(device)
    config = config if config is not None else PARTICLE_SYSTEMS[name]
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = out / name
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    x = _initial_configurations(config.n_chains, energy.n_atoms, energy.dim, config.init_spacing, gen, torch.float64)
    logger.info("%s: tuning the step size for %d steps", name, config.tune_steps)
    kw = {"n_leapfrog": config.n_leapfrog, "progress": progress}
    tuned = metropolis_chains(
        energy, x, config.tune_steps, 0.05, gen, thin=config.tune_steps, tune=True,
        target_acceptance=config.target_acceptance, **kw,
    )  # fmt: skip
    step = tuned.step_size
    pilot = metropolis_chains(energy, tuned.final, config.pilot_steps, step, gen, **kw)
    # measured on the second half of the pilot, so that what is left of the initial drift does not count
    tau_int = integrated_autocorrelation_time(pilot.energies[config.pilot_steps // 2 :])
    burn_in = int(math.ceil(config.burn_in_factor * tau_int))
    thin = max(1, int(math.ceil(config.thin_factor * tau_int)))
    n_total = config.n_train + config.n_val + config.n_test
    per_chain = int(math.ceil(n_total / config.n_chains))
    logger.info("%s: tau_int=%.1f steps, burn-in %d, thin %d, %d per chain", name, tau_int, burn_in, thin, per_chain)
    burned = metropolis_chains(energy, pilot.final, burn_in, step, gen, thin=max(burn_in, 1), **kw)
    run = metropolis_chains(energy, burned.final, per_chain * thin, step, gen, thin=thin, **kw)
    # the kept samples are thin >= 2 tau_int apart; measure what is left of the correlation for the error bars
    rho = math.exp(-thin / tau_int)  # residual correlation of consecutive kept samples, inflating the error bars
    check = check_equilibrium(energy, run.samples, tau=(1.0 + rho) / (1.0 - rho))
    if not check.passed:
        message = f"{name}: equilibrium checks failed: {check}"
        if strict:
            raise ConvergenceError(message + "; increase burn-in or pilot length in the config")
        logger.warning(message)
    flat = remove_com(run.samples.reshape(-1, energy.n_atoms, energy.dim))
    perm = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(config.seed + 1))
    flat = flat[perm.to(flat.device)][:n_total]
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum([0, config.n_train, config.n_val, config.n_test])
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        np.save(out / f"{split}.npy", flat[lo:hi].cpu().numpy())
    meta = {
        "system": name,
        "target": target_signature(energy),
        "config": asdict(config),
        "step_size": step,
        "acceptance": run.acceptance,
        "tau_int_steps": tau_int,
        "burn_in_steps": config.tune_steps + config.pilot_steps + burn_in,
        "thin_steps": thin,
        "check": asdict(check),
        "wall_time_s": time.perf_counter() - start,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    logger.info("%s: wrote %s in %.0f s", name, out, meta["wall_time_s"])
    return out


def stale_cache_reason(name: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """Why the cached data of ``name`` do not fit the current target (``particle_energy(name)``), or None.

    None also when there is no ``meta.json`` to judge by. Caches written before the target was recorded count as
    made with the default targets of that time (DW4, ordered-pair LJ).
    """
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
    if not (folder / "meta.json").exists():
        return None
    cached = _cached_signature(json.loads((folder / "meta.json").read_text()), name)
    wanted = target_signature(particle_energy(name))
    if cached == wanted:
        return None
    return f"the cached {name} data at {folder} were made for the target {cached}, not {wanted}"


def load_particle_data(
    name: str,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    make_if_missing: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Equilibrium samples of ``"dw4"``, ``"lj13"`` or ``"lj55"``: shape (n, n_atoms, dim), CoM-free, reduced units.

    split: ``"train"``, ``"val"`` or ``"test"``. Generates the data with ``make_particle_data`` (with a progress
    bar) when the cache has none, or has data made for another target (``stale_cache_reason``), and
    ``make_if_missing`` is True; otherwise raises ``FileNotFoundError``.
    """
    if name not in PARTICLE_SYSTEMS:
        raise ValueError(f"unknown particle system {name!r}; choose one of {sorted(PARTICLE_SYSTEMS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
    path = folder / f"{split}.npy"
    stale = stale_cache_reason(name, cache_dir) if path.exists() else None
    if not path.exists() or stale:
        if not make_if_missing:
            reason = stale or f"no {name} data at {path}"
            raise FileNotFoundError(
                f"{reason}; run `python systems/particles_make_data.py {name} --force` or pass make_if_missing=True"
            )
        logger.warning("%s: generating it (LJ55 takes long)", stale or f"no cached {name} data at {folder}")
        make_particle_data(name, cache_dir=cache_dir)
    return torch.from_numpy(np.load(path)).to(dtype)
