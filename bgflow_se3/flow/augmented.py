"""The SE(3) x S_n equivariant augmented coupling flow (Midgley et al. 2023, arXiv 2308.10364).

The flow models the joint density q(x, a) of CoM-free positions x, shape (batch, n_atoms, dim), and ``n_aug``
augmented copies a, shape (batch, n_aug, n_atoms, dim). Base distribution: x ~ CoM-free Gaussian with standard
deviation ``length_scale``, normalised on the (n_atoms - 1) * dim dimensional subspace; a | x ~ N(x, sigma_aug^2 I).
Each block updates a given x, then x given a; the x-given-a coupling is wrapped in the shift-CoM trick (recentre
on the CoM of a[:, 0], transform, recentre on the CoM of x: unit Jacobian). The augmented target pi(a | x) is
N(x, sigma_aug^2 I), so ``log p(x) + log pi(a | x) - log q(x, a)`` are proper joint importance weights.

Symmetry: ``log_prob_joint`` is invariant under rotations and translations applied to x and a together and under
permutations of atoms of the same type. The "spherical" and "cartesian" projections are SE(3) (a mirror image gets
a different density); the "vector" projection is E(3) (reflection invariant).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import NonFiniteInputError
from ..memory import check_fits, graph_bytes_per_item
from .couplings import PROJECTIONS, Projection, ProjectionCoupling
from .frames import centre_on_aug, centre_on_x, remove_com

__all__ = ["AugmentedCouplingFlow", "FlowSample"]

#: batches below this size skip the memory guard (measuring the graph costs two tiny passes)
_GUARD_MIN_BATCH = 64


class FlowSample(NamedTuple):
    """A batch drawn from the flow."""

    x: Tensor  # (batch, n_atoms, dim), CoM-free, the flow's length units (nm for molecules)
    a: Tensor  # (batch, n_aug, n_atoms, dim), augmented variables
    log_q: Tensor  # (batch,), joint log q(x, a) in nats


class AugmentedCouplingFlow(nn.Module):
    """SE(3) x S_n equivariant augmented coupling flow with exact joint density and one-pass sampling.

    Args:
        n_atoms: atoms (nodes), >= 2. dim: 2 or 3.
        atom_types: integer type per atom (length n_atoms); atoms of equal type are exchangeable. None: all equal.
        n_aug: augmented copies per atom. projection: "spherical" (default), "cartesian" or "vector".
        n_blocks: blocks, each an a|x and an x|a coupling. hidden, egnn_layers, mlp_blocks: EGNN size.
        n_bins: spline bins. sigma_aug: std of a | x in the base and in the augmented target (length units).
        length_scale: std of the base Gaussian on x, the unit of spline intervals and EGNN inputs (length units).
        n_vector_transforms: radial transforms per coupling of the "vector" projection.
        spline_range: half-width of the Cartesian and radial spline intervals, in units of length_scale.
        cartesian_inner: "spline" or "affine" transform of the local coordinates of the "cartesian" projection.
        gradient_checkpointing: when grad mode is on, run each block (a|x and x|a coupling) under
            ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: only the block inputs are kept for backward
            and the block's activations are recomputed there (about one more forward pass of compute, a fraction of
            the memory). Results and gradients are unchanged; it has no effect under ``torch.no_grad()``.
        compile: run every coupling through one ``torch.compile``d function (``couplings.compiled_transform``):
            ~1.8x (log q + backward) and ~2.5x (sampling) the configurations/s of eager on 2 CPU cores once
            compiled, but the first calls compile for ~2 min per graph (training, sampling; ~20 s from inductor's
            on-disk cache), so it pays for training runs, not for quick evaluations.
            Needs a C++ compiler on CPU. Results agree with eager to rounding. ``flow.compiled`` switches it later.

    Gradients: ``sample``, ``log_prob_joint`` and the transforms follow torch's grad mode (they build a graph when it
    is on: wrap them in ``torch.no_grad()`` when only values are needed); the marginal ``log_prob`` is an evaluation
    API that builds no graph unless asked to (see there).

    The module follows ``.double()`` and ``.to(device)``; inputs must match its dtype and device.
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int = 3,
        atom_types: Sequence[int] | Tensor | None = None,
        n_aug: int = 1,
        projection: Projection = "spherical",
        n_blocks: int = 12,
        hidden: int = 128,
        egnn_layers: int = 3,
        mlp_blocks: int = 1,
        n_bins: int = 8,
        sigma_aug: float = 0.1,
        length_scale: float = 1.0,
        n_vector_transforms: int = 3,
        spline_range: float = 10.0,
        cartesian_inner: Literal["spline", "affine"] = "spline",
        gradient_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if n_atoms < 2:
            raise ValueError(f"the flow needs at least 2 atoms, got n_atoms={n_atoms}")
        if n_aug < 1:
            raise ValueError(f"n_aug must be >= 1, got {n_aug}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if not (sigma_aug > 0 and length_scale > 0):
            raise ValueError(f"sigma_aug and length_scale must be positive, got {sigma_aug}, {length_scale}")
        types = torch.zeros(n_atoms, dtype=torch.long) if atom_types is None else torch.as_tensor(atom_types)
        if types.shape != (n_atoms,) or types.is_floating_point() or (types < 0).any():
            raise ValueError(f"atom_types must be {n_atoms} non-negative integers, got {atom_types!r}")
        self.n_atoms, self.dim, self.n_aug = int(n_atoms), int(dim), int(n_aug)
        self.projection = projection
        self.sigma_aug, self.length_scale = float(sigma_aug), float(length_scale)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.sample_chunk_size = 1024  # configurations per pass of ``sample`` under no_grad
        self._graph_bytes: dict[tuple[Any, ...], float] = {}  # measured autograd graph bytes per configuration
        self._measuring = False
        self.register_buffer("atom_types", types.long(), persistent=True)
        kwargs: dict[str, Any] = dict(
            dim=dim,
            n_types=int(types.max()) + 1,
            hidden=hidden,
            egnn_layers=egnn_layers,
            mlp_blocks=mlp_blocks,
            n_bins=n_bins,
            length_scale=length_scale,
            n_vector_transforms=n_vector_transforms,
            spline_range=spline_range,
            cartesian_inner=cartesian_inner,
            compiled=compile,
        )
        self.couplings_a = nn.ModuleList(
            ProjectionCoupling(projection, n_cond=1, n_trans=n_aug, **kwargs) for _ in range(n_blocks)
        )
        self.couplings_x = nn.ModuleList(
            ProjectionCoupling(projection, n_cond=n_aug, n_trans=1, **kwargs) for _ in range(n_blocks)
        )

    @classmethod
    def for_topology(
        cls,
        topology: Any,
        type_by: str | Callable[[Any], Any] = "element",
        **kwargs: Any,
    ) -> AugmentedCouplingFlow:
        """Build a 3D flow for the atoms of an OpenMM or mdtraj topology (duck typed; OpenMM is not imported).

        type_by: "element" (atoms of equal element are exchangeable), "name" (residue name + atom name: finer
        classes, e.g. the C-alpha apart from other carbons), or a callable atom -> hashable class.
        kwargs go to the constructor (n_aug, projection, n_blocks, ...). Types are numbered in sorted order.
        """
        atoms = topology.atoms() if callable(topology.atoms) else topology.atoms
        keys = []
        for atom in atoms:
            if callable(type_by):
                keys.append(type_by(atom))
            elif type_by == "element":
                if atom.element is None:
                    raise ValueError(f"atom {atom.name!r} has no element (virtual site?); pass type_by='name'")
                keys.append(atom.element.symbol)
            elif type_by == "name":
                keys.append(f"{atom.residue.name}:{atom.name}")
            else:
                raise ValueError(f"type_by must be 'element', 'name' or a callable, got {type_by!r}")
        index = {k: i for i, k in enumerate(sorted(set(keys), key=str))}
        return cls(len(keys), dim=3, atom_types=[index[k] for k in keys], **kwargs)

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def compiled(self) -> bool:
        """Whether the couplings run ``torch.compile``d (see ``compile`` in the class docstring); settable."""
        return all(c.compiled for c in self._couplings())

    @compiled.setter
    def compiled(self, value: bool) -> None:
        for coupling in self._couplings():
            coupling.compiled = bool(value)

    def _couplings(self) -> list[ProjectionCoupling]:
        return [*self.couplings_a, *self.couplings_x]

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check(self, x: Tensor, a: Tensor | None = None) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, self.dim):
            raise ValueError(f"x must have shape (batch, {self.n_atoms}, {self.dim}), got {tuple(x.shape)}")
        if a is not None and (a.dim() != 4 or a.shape != (x.shape[0], self.n_aug, self.n_atoms, self.dim)):
            raise ValueError(
                f"a must have shape ({x.shape[0]}, {self.n_aug}, {self.n_atoms}, {self.dim}), got {tuple(a.shape)}"
            )
        for name, t in (("x", x), ("a", a)):
            if t is None:
                continue
            if t.device != self.atom_types.device:
                raise ValueError(
                    f"{name} is on {t.device} but the flow's parameters on {self.atom_types.device}; "
                    f"move one of them ({name}.to({str(self.atom_types.device)!r}) or flow.to({str(t.device)!r}))"
                )
            if t.dtype != self._dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but the flow is {self._dtype}; convert one of them")
            if not torch.isfinite(t).all():
                raise NonFiniteInputError(f"{name} holds NaN or infinite values; remove those configurations")

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        device = self.atom_types.device
        if generator is None:
            return torch.randn(shape, dtype=self._dtype, device=device)
        return torch.randn(shape, dtype=self._dtype, device=generator.device, generator=generator).to(device)

    def _gauss_log_prob(self, diff: Tensor, sigma: float, n_dof: int, dims: tuple[int, ...]) -> Tensor:
        return -0.5 * diff.pow(2).sum(dim=dims) / sigma**2 - 0.5 * n_dof * math.log(2 * math.pi * sigma**2)

    def base_log_prob(self, zx: Tensor, za: Tensor) -> Tensor:
        """Base log density (batch,) at CoM-free zx (batch, n_atoms, dim) and za (batch, n_aug, n_atoms, dim)."""
        n_x = (self.n_atoms - 1) * self.dim
        lp_x = self._gauss_log_prob(zx, self.length_scale, n_x, (1, 2))
        return lp_x + self.log_prob_aug_target(za, zx, _checked=True)

    # -------------------------------------------------------------------------------------------- transforms
    def _forward_block(self, i: int, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Block i latent -> data: a given x, then x given a (shift-CoM). Returns (x, a, log-det, summed aux)."""
        types = self.atom_types
        a_nodes, ld_a, aux_a = self.couplings_a[i](a.transpose(1, 2), x.unsqueeze(2), types)
        x, a = centre_on_aug(x, a_nodes.transpose(1, 2))
        x_nodes, ld_x, aux_x = self.couplings_x[i](x.unsqueeze(2), a.transpose(1, 2), types)
        x, a = centre_on_x(x_nodes.squeeze(2), a)
        return x, a, ld_a + ld_x, aux_a + aux_x

    def _inverse_block(self, i: int, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Block i data -> latent, the inverse of ``_forward_block``. Returns (x, a, log-det, summed aux)."""
        types = self.atom_types
        x, a = centre_on_aug(x, a)
        x_nodes, ld_x, aux_x = self.couplings_x[i].inverse(x.unsqueeze(2), a.transpose(1, 2), types)
        x, a = centre_on_x(x_nodes.squeeze(2), a)
        a_nodes, ld_a, aux_a = self.couplings_a[i].inverse(a.transpose(1, 2), x.unsqueeze(2), types)
        return x, a_nodes.transpose(1, 2), ld_x + ld_a, aux_x + aux_a

    def graph_bytes_per_configuration(self) -> float:
        """Bytes the autograd graph of one pass (all blocks, no checkpointing) saves per configuration.

        Measured once per dtype and device with saved-tensor hooks on batches of 1 and 3 (the difference, so
        parameters saved once per batch do not count), then cached.
        """
        key = (self._dtype, self.atom_types.device)
        if key not in self._graph_bytes:
            device = self.atom_types.device

            def run(batch: int) -> None:
                generator = torch.Generator().manual_seed(0)
                x = remove_com(torch.randn((batch, self.n_atoms, self.dim), generator=generator, dtype=self._dtype))
                a = x.unsqueeze(1) + self.sigma_aug * torch.randn(
                    (batch, self.n_aug, self.n_atoms, self.dim), generator=generator, dtype=self._dtype
                )
                self.inverse_with_log_det(x.to(device), a.to(device))

            # measured on the eager graph: saved-tensor hooks see inside it, and no compilation is triggered here
            checkpointing, compiled = self.gradient_checkpointing, self.compiled
            self.gradient_checkpointing, self.compiled, self._measuring = False, False, True
            try:
                self._graph_bytes[key] = graph_bytes_per_item(run)
            finally:
                self.gradient_checkpointing, self.compiled, self._measuring = checkpointing, compiled, False
        return self._graph_bytes[key]

    def _guard_memory(self, batch: int, device: torch.device, what: str) -> None:
        """Raise ``InsufficientMemoryError`` before a graph of ``batch`` configurations that cannot fit."""
        if self._measuring or batch < _GUARD_MIN_BATCH or not torch.is_grad_enabled():
            return
        per_config = self.graph_bytes_per_configuration()
        if self.gradient_checkpointing:  # block inputs are kept; one block's graph lives while it is recomputed
            per_config = per_config / len(self.couplings_a)
        check_fits(
            batch * per_config,
            device,
            f"{what} of {batch} configurations with gradients",
            "use a smaller batch, gradient_checkpointing=True, or torch.no_grad() when no gradient is needed",
        )

    def _run_block(
        self, block: Callable[[int, Tensor, Tensor], tuple[Tensor, ...]], i: int, x: Tensor, a: Tensor
    ) -> tuple[Tensor, ...]:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, i, x, a, use_reentrant=False)
        return block(i, x, a)

    def forward_with_log_det(self, zx: Tensor, za: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Latent -> data. zx: (batch, n_atoms, dim) CoM-free; za: (batch, n_aug, n_atoms, dim).

        Returns (x, a, log|det J|, aux): x CoM-free, log-det on the (n_atoms - 1 + n_aug * n_atoms) * dim
        dimensional state space, aux the mean reference-vector loss over couplings, both (batch,).
        """
        self._guard_memory(zx.shape[0], zx.device, "the flow's forward pass")
        x, a = zx, za
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        aux = torch.zeros_like(logdet)
        for i in range(len(self.couplings_a)):
            x, a, ld, ax = self._run_block(self._forward_block, i, x, a)
            logdet, aux = logdet + ld, aux + ax
        return x, a, logdet, aux / (2 * len(self.couplings_a))

    def inverse_with_log_det(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Data -> latent, the inverse of ``forward_with_log_det``. x must be CoM-free.

        Returns (zx, za, log|det J^-1|, aux), the last two of shape (batch,).
        """
        self._guard_memory(x.shape[0], x.device, "the flow's inverse pass")
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        aux = torch.zeros_like(logdet)
        for i in reversed(range(len(self.couplings_a))):
            x, a, ld, ax = self._run_block(self._inverse_block, i, x, a)
            logdet, aux = logdet + ld, aux + ax
        return x, a, logdet, aux / (2 * len(self.couplings_a))

    # ------------------------------------------------------------------------------------------ the protocol
    def sample(self, n: int, generator: torch.Generator | None = None) -> FlowSample:
        """Draw n samples (reparameterised: differentiable w.r.t. the parameters) with their joint log q(x, a).

        Follows grad mode: with grad on (the default) it builds the graph that reverse-KL training needs, which
        costs memory linear in n (``InsufficientMemoryError`` up front when it cannot fit); call it under
        ``torch.no_grad()`` when only the samples are wanted: it then runs ``sample_chunk_size`` configurations
        at a time (the same draws and results as one pass), so memory stays bounded for any n.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            ref = self._randn((0, self.n_atoms, self.dim), generator)
            return FlowSample(ref, ref.new_zeros(0, self.n_aug, self.n_atoms, self.dim), ref.new_zeros(0))
        zx = remove_com(self._randn((n, self.n_atoms, self.dim), generator)) * self.length_scale
        za = zx.unsqueeze(1) + self.sigma_aug * self._randn((n, self.n_aug, self.n_atoms, self.dim), generator)
        log_base = self.base_log_prob(zx, za)
        if torch.is_grad_enabled() or n <= self.sample_chunk_size:
            x, a, logdet, _ = self.forward_with_log_det(zx, za)
        else:
            parts = [
                self.forward_with_log_det(zc, ac)
                for zc, ac in zip(zx.split(self.sample_chunk_size), za.split(self.sample_chunk_size))
            ]
            x, a, logdet = (torch.cat([p[i] for p in parts]) for i in range(3))
        return FlowSample(x, a, log_base - logdet)

    def log_prob_joint_and_aux(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """Joint log q(x, a) (batch,) in nats and the auxiliary reference-vector loss (batch,) >= 0.

        x: (batch, n_atoms, dim), need not be CoM-free (its CoM is removed from x and from a);
        a: (batch, n_aug, n_atoms, dim).
        """
        self._check(x, a)
        if x.shape[0] == 0:
            return x.new_zeros(0), x.new_zeros(0)
        x, a = centre_on_x(x, a)
        zx, za, logdet, aux = self.inverse_with_log_det(x, a)
        return self.base_log_prob(zx, za) + logdet, aux

    def log_prob_joint(self, x: Tensor, a: Tensor) -> Tensor:
        """Joint log q(x, a), shape (batch,), nats; shapes as in ``log_prob_joint_and_aux``."""
        return self.log_prob_joint_and_aux(x, a)[0]

    def log_prob(
        self,
        x: Tensor,
        n_samples: int = 20,
        generator: torch.Generator | None = None,
        chunk_size: int = 256,
        requires_grad: bool = False,
    ) -> Tensor:
        """Marginal log q(x), shape (batch,), nats, by importance sampling: log mean_k q(x, a_k) / pi(a_k | x).

        x: (batch, n_atoms, dim), length units; its CoM is removed. A consistent estimate (a lower bound in
        expectation), exact as n_samples grows. All batch * n_samples draws a_k ~ pi(a | x) are taken from
        ``generator`` at once (configuration-major: the draws of configuration 0 first), then the flow evaluates
        ``chunk_size`` (configuration, draw) pairs at a time, so peak memory is bounded by chunk_size, not by
        batch * n_samples; the result does not depend on chunk_size beyond round-off.

        An evaluation API: it builds no autograd graph (runs as under ``torch.no_grad()``) unless the caller asks
        for gradients, by ``requires_grad=True`` (gradients w.r.t. the parameters, e.g. marginal maximum
        likelihood) or by passing an x that requires grad (gradients w.r.t. x, e.g. HMC); either needs grad mode
        on. The graph then spans all chunks (memory grows with batch * n_samples again; ``gradient_checkpointing``
        shrinks it).
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._check(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (requires_grad or x.requires_grad)):
            # the graph spans every chunk: guard the whole batch * n_samples up front
            self._guard_memory(x.shape[0] * n_samples, x.device, "the marginal log q")
            x = remove_com(x).repeat_interleave(n_samples, dim=0)
            a = self.sample_aug_target(x, generator)
            log_w = torch.cat(
                [
                    self.log_prob_joint(xc, ac) - self.log_prob_aug_target(ac, xc, _checked=True)
                    for xc, ac in zip(x.split(chunk_size), a.split(chunk_size))
                ]
            )
            return torch.logsumexp(log_w.view(-1, n_samples), dim=1) - math.log(n_samples)

    def sample_aug_target(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """a ~ pi(a | x) = N(x, sigma_aug^2 I) per copy. x: (batch, n_atoms, dim) -> (batch, n_aug, n_atoms, dim)."""
        self._check(x)
        eps = self._randn((x.shape[0], self.n_aug, self.n_atoms, self.dim), generator)
        return x.unsqueeze(1) + self.sigma_aug * eps

    def log_prob_aug_target(self, a: Tensor, x: Tensor, _checked: bool = False) -> Tensor:
        """log pi(a | x), shape (batch,), nats; a: (batch, n_aug, n_atoms, dim), x: (batch, n_atoms, dim)."""
        if not _checked:
            self._check(x, a)
        return self._gauss_log_prob(a - x.unsqueeze(1), self.sigma_aug, self.n_aug * self.n_atoms * self.dim, (1, 2, 3))

    def extra_repr(self) -> str:
        return (
            f"n_atoms={self.n_atoms}, dim={self.dim}, n_aug={self.n_aug}, projection={self.projection!r}, "
            f"n_blocks={len(self.couplings_a)}, sigma_aug={self.sigma_aug}, length_scale={self.length_scale}, "
            f"gradient_checkpointing={self.gradient_checkpointing}"
        )
