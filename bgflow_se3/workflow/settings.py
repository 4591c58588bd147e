"""The workflow's sizes: seeded Langevin data, the flow (sized from the molecule), maximum likelihood, FAB, samples.

``WorkflowSettings()`` are the defaults of ``bgflow-se3 run``: a capped dipeptide (22 atoms) finishes in about
15-20 minutes on 2 CPU cores. ``WorkflowSettings.smoke()`` are the smallest sizes that run every stage (seconds;
tests). Nothing here names a molecule: the flow's width follows the number of internal coordinates
(``flow_config``), everything else is per replica, per iteration or per sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["WorkflowSettings", "flow_config"]


def flow_config(n_atoms: int) -> dict[str, Any]:
    """``InternalCoordinateFlow`` settings for a molecule of ``n_atoms``: 8 couplings of 8-bin splines, MLPs of two
    hidden layers at least twice as wide as the 3 n_atoms - 6 internal coordinates (multiples of 64, 128 to 512):
    128 for alanine dipeptide (22 atoms, the width of the shipped flow), 256 for the tetrapeptide (42), 384 for the
    hexapeptide (62)."""
    if n_atoms < 4:
        raise ValueError(f"the flow needs at least 4 atoms, got {n_atoms}")
    n_internal = 3 * n_atoms - 6
    hidden = min(512, max(128, 64 * math.ceil(2 * n_internal / 64)))
    return {"n_layers": 8, "hidden": hidden, "n_hidden": 2, "n_bins": 8}


@dataclass(frozen=True)
class WorkflowSettings:
    """Every size of a workflow run (units in the names). The flow's ``hidden`` width and spline ``n_bins`` default
    to ``flow_config``.

    temperature_K: of the target. Seeded Langevin (``coverage.seeded_langevin``): replicas, md_ps (production per
    replica), md_equilibration_ps, md_save_every_ps. Maximum likelihood on those frames: ml_iterations,
    ml_batch_size, ml_lr (Adam, warm-up then cosine). FAB fine-tuning on the target (alpha = 2, AIS with HMC,
    prioritised replay buffer): fab_iterations, fab_batch_size, fab_lr, fab_intermediate (AIS distributions),
    fab_leapfrog, fab_updates (gradient steps per AIS batch), fab_step_size_nm (initial HMC step), fab_buffer_batches
    (buffer length in batches; ``fab_buffer_min_batches`` are filled before the first update). n_samples: flow
    samples drawn and reweighted with float64 energies for the estimates. n_bootstrap: resamples of each error
    bar. min_ess: effective samples each state needs for a ``reliable`` estimate. seed: every random stream of the
    run.
    """

    temperature_K: float = 300.0
    replicas: int = 504
    md_ps: float = 20.0
    md_equilibration_ps: float = 1.0
    md_save_every_ps: float = 0.1
    hidden: int | None = None
    n_bins: int | None = None
    ml_iterations: int = 3000
    ml_batch_size: int = 512
    ml_lr: float = 1e-3
    fab_iterations: int = 150
    fab_batch_size: int = 128
    fab_lr: float = 2e-5
    fab_intermediate: int = 2
    fab_leapfrog: int = 3
    fab_updates: int = 4
    fab_step_size_nm: float = 0.002
    fab_buffer_batches: int = 64
    n_samples: int = 200_000
    n_bootstrap: int = 200
    min_ess: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {
            "temperature_K": self.temperature_K,
            "replicas": self.replicas,
            "md_ps": self.md_ps,
            "md_save_every_ps": self.md_save_every_ps,
            "ml_iterations": self.ml_iterations,
            "ml_batch_size": self.ml_batch_size,
            "ml_lr": self.ml_lr,
            "fab_iterations": self.fab_iterations,
            "fab_batch_size": self.fab_batch_size,
            "fab_lr": self.fab_lr,
            "fab_intermediate": self.fab_intermediate,
            "fab_leapfrog": self.fab_leapfrog,
            "fab_updates": self.fab_updates,
            "fab_step_size_nm": self.fab_step_size_nm,
            "n_samples": self.n_samples,
        }
        bad = [f"{k}={v}" for k, v in positive.items() if not v > 0]
        if self.md_equilibration_ps < 0:
            bad.append(f"md_equilibration_ps={self.md_equilibration_ps}")
        if self.hidden is not None and self.hidden < 1:
            bad.append(f"hidden={self.hidden}")
        if self.n_bins is not None and self.n_bins < 2:
            bad.append(f"n_bins={self.n_bins} (a spline needs at least 2 bins)")
        if self.fab_buffer_batches < self.fab_updates:
            bad.append(f"fab_buffer_batches={self.fab_buffer_batches} (needs >= fab_updates, {self.fab_updates})")
        if self.n_bootstrap == 1 or self.n_bootstrap < 0:
            bad.append(f"n_bootstrap={self.n_bootstrap} (0: the delta method, or >= 2 resamples)")
        if bad:
            raise ValueError(f"invalid workflow settings: {', '.join(bad)} (sizes, times and rates must be positive)")

    @property
    def fab_buffer_min_batches(self) -> int:
        """Batches the buffer holds before the first FAB update: 1/16 of its length, at least one per update."""
        return max(self.fab_updates, self.fab_buffer_batches // 16)

    @classmethod
    def smoke(cls, **overrides: Any) -> WorkflowSettings:
        """The smallest sizes that run every stage (for tests and a first look; the numbers mean nothing)."""
        sizes = dict(
            replicas=12,
            md_ps=0.2,
            md_equilibration_ps=0.02,
            md_save_every_ps=0.02,
            hidden=32,
            ml_iterations=20,
            ml_batch_size=64,
            fab_iterations=3,
            fab_batch_size=16,
            fab_updates=2,
            fab_buffer_batches=32,
            n_samples=512,
            n_bootstrap=0,
        )
        return cls(**{**sizes, **overrides})

    def with_changes(self, **changes: Any) -> WorkflowSettings:
        """A copy with ``changes`` (checked like the constructor)."""
        return replace(self, **changes)

    def flow_config(self, n_atoms: int) -> dict[str, Any]:
        """The flow's constructor settings for a molecule of ``n_atoms`` (``hidden`` and ``n_bins`` override)."""
        config = flow_config(n_atoms)
        if self.hidden is not None:
            config["hidden"] = int(self.hidden)
        if self.n_bins is not None:
            config["n_bins"] = int(self.n_bins)
        return config

    def as_dict(self) -> dict[str, Any]:
        """Every setting, JSON-serialisable (``run.json``)."""
        return asdict(self)
