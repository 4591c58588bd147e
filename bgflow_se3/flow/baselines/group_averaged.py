"""A flow on internal coordinates made exactly E(d) x S_n invariant: canonical rotation frame + group averaging.

For small clusters (DW4: 4 particles in 2D) the whole symmetry group that is not continuous is small enough to sum
over, and the continuous part (rotations) can be divided out exactly. ``GroupAveragedFlow`` does both:

1. CoM-free x (n_atoms, dim) -> isometric subspace coordinates y = B^T x, shape (n_atoms - 1, dim) (Helmert basis,
   as in ``NonEquivariantFlow``; unit Jacobian, so log q is on the same subspace as every other flow here).
2. Canonical frame: the rotation R that takes y_1 to the first axis (in 3D also y_2 into the first two axes).
   Internal coordinates u = (log |y_1|, R^T y_k for k >= 2) with the components fixed by the frame dropped:
   D = 1 + 2 (n_atoms - 2) numbers in 2D, 3 + 3 (n_atoms - 3) in 3D. The rotation is uniform (Haar), so
       2D: q(y) = q_u(u) / (2 pi r^2),                 r = |y_1|
       3D: q(y) = q_u(u) / (8 pi^2 r^3 rho^2),         rho = |y_2 - (y_2 . e_1) e_1|
   (u holds log r and log rho, hence the powers), which is exactly rotation invariant.
3. q_u: a neural spline flow (rational-quadratic couplings, Durkan et al. 2019) on R^D with a standard normal base.
4. Group averaging over the permutations of identical particles and the reflection:
       q(x) = 1 / (|P| |M|) sum_{sigma in P} sum_{m in M} q_rot(m sigma x),
   each term a normalised density (permutations and reflections are isometries), so q is normalised and exactly
   invariant under the group. Sampling draws u, a Haar rotation, a random reflection and a random permutation.

The cost of log q is |P| |M| evaluations of a D-dimensional coupling flow (48 for DW4): cheap next to a CNF solve,
and exact (no ODE solver error, no stochastic trace). It does not scale to large n_atoms (n! permutations): it is
a benchmark-sized model, the way to get DW4's hard symmetries exactly right with a fast, expressive flow.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from ..checks import check_positions
from ..coupling_stack import CouplingStack, alternating_masks, zero_output_mlp
from ..frames import safe_norm
from ..splines import n_spline_params, rational_quadratic_spline
from .noneq import from_helmert, helmert_basis, random_rotations, to_helmert

__all__ = ["GroupAveragedFlow", "all_permutations"]


def all_permutations(n: int, max_count: int = 5040) -> Tensor:
    """Every permutation of n items as a (n!, n) long tensor (identity first); refuses more than ``max_count``."""
    if math.factorial(n) > max_count:
        raise ValueError(
            f"{n}! = {math.factorial(n)} permutations is more than {max_count}: group averaging over all "
            "permutations is for small clusters; pass an explicit subgroup or permutations=None"
        )
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)


class _SplineCoupling(nn.Module):
    """Rational-quadratic splines (linear tails outside [-bound, bound]) on the coordinates where ``mask`` is
    False, conditioned on the others through an MLP whose output layer starts at zero (identity map)."""

    def __init__(self, mask: Tensor, hidden: int, n_hidden: int, n_bins: int, bound: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.bound = float(bound)
        self.n_params = n_spline_params(n_bins, "linear")
        d_in, self.d_out = int(mask.sum()), int((~mask).sum())
        self.net = zero_output_mlp(d_in, self.d_out * self.n_params, hidden, n_hidden)

    def _spline(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        params = self.net(x[:, self.mask]).reshape(x.shape[0], self.d_out, self.n_params)
        out, log_det = rational_quadratic_spline(
            x[:, ~self.mask], params, -self.bound, self.bound, "linear", inverse=inverse
        )
        y = x.clone()
        y[:, ~self.mask] = out
        return y, log_det.sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(y, inverse=True)


class GroupAveragedFlow(CouplingStack):
    """Exactly E(dim) x S_n invariant flow for small clusters: spline flow on canonical-frame internal coordinates,
    averaged over permutations of identical particles and over the reflection (module docstring has the maths).

    n_atoms, dim: the system (dim 2 or 3). permutations: "all" (every permutation, for n_atoms <= 7), None (no
    averaging: still rotation invariant), or an explicit (n_perm, n_atoms) long tensor that must be a group (it is
    not checked; a non-group set breaks invariance, not normalisation). reflections: also average over the mirror
    image (E(dim) rather than SE(dim)); off for chiral systems. n_layers spline couplings with n_bins bins on
    [-bound, bound] (linear tails), conditioners of n_hidden layers of width hidden. length_scale: initial size of
    the configurations (nm or reduced units, like x): the internal coordinates are standardised with it before the
    couplings (log |y_1| by its log, the frame coordinates by it), so an untrained flow samples clusters of about
    that size. Exposes ``sample(n, generator) -> (x, log_q)`` and ``log_prob(x)``, shapes (n, n_atoms, dim) and
    (n,), nats, on the CoM-free subspace (the benchmark convention, comparable with the other flows' NLLs);
    ``forward(u)`` / ``inverse(z)`` are the spline flow on internal coordinates (``CouplingStack``).
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int = 3,
        n_layers: int = 8,
        hidden: int = 64,
        n_hidden: int = 2,
        n_bins: int = 8,
        bound: float = 4.0,
        permutations: str | Tensor | None = "all",
        reflections: bool = True,
        length_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if n_atoms < 3:
            raise ValueError(f"GroupAveragedFlow needs n_atoms >= 3 (a frame plus something to model), got {n_atoms}")
        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        if isinstance(permutations, str) and permutations == "all":
            permutations = all_permutations(n_atoms)
        elif permutations is None:
            permutations = torch.arange(n_atoms)[None]
        elif not (isinstance(permutations, Tensor) and permutations.ndim == 2 and permutations.shape[1] == n_atoms):
            raise ValueError(f'permutations must be "all", None or a (n_perm, {n_atoms}) tensor, got {permutations!r}')
        n_internal = 1 + 2 * (n_atoms - 2) if dim == 2 else 3 + 3 * (n_atoms - 3)
        # standardisation of u: log-radii (u[0]; in 3D also u[2]) shifted by log(length_scale), frame coordinates
        # divided by it
        is_log = torch.zeros(n_internal, dtype=torch.bool)
        is_log[0] = True
        is_log[2] = dim == 3
        layers = [
            _SplineCoupling(mask, hidden, n_hidden, n_bins, bound)
            for mask in alternating_masks(n_internal, n_layers, seed)
        ]
        log_length = math.log(length_scale)
        super().__init__(layers, torch.where(is_log, log_length, 0.0), torch.where(is_log, 0.0, log_length))
        self.n_atoms, self.dim, self.n_internal = int(n_atoms), int(dim), n_internal
        self.register_buffer("permutations", permutations.long())
        self.register_buffer("inverse_permutations", torch.argsort(permutations.long(), dim=1))
        self.reflections = bool(reflections)
        self.register_buffer("basis", helmert_basis(n_atoms))

    @property
    def group_size(self) -> int:
        """Number of terms in the average: permutations x (2 with reflections, else 1)."""
        return self.permutations.shape[0] * (2 if self.reflections else 1)

    # --- internal coordinates -------------------------------------------------------------------------------------

    def internal_coordinates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Canonical-frame internal coordinates u (*, n_internal) of configurations x (*, n_atoms, dim), and
        log |det dy / d(u, rotation)| (*) with the rotation measured by Haar measure of total mass 2 pi (2D) or
        8 pi^2 (3D); i.e. log q_rot(x) = log q_u(u) - log_jacobian - log(Haar mass). CoM is removed first."""
        y = to_helmert(x, self.basis)
        y1 = y[..., 0, :]
        r = safe_norm(y1)
        e1 = y1 / r[..., None]
        if self.dim == 2:
            e2 = torch.stack([-e1[..., 1], e1[..., 0]], dim=-1)
            rest = y[..., 1:, :]
            w = torch.stack([(rest * e1[..., None, :]).sum(-1), (rest * e2[..., None, :]).sum(-1)], dim=-1)
            u = torch.cat([torch.log(r)[..., None], w.flatten(-2)], dim=-1)
            return u, 2.0 * torch.log(r)
        y2 = y[..., 1, :]
        a = (y2 * e1).sum(-1)
        perp = y2 - a[..., None] * e1
        rho = safe_norm(perp)
        e2 = perp / rho[..., None]
        e3 = torch.linalg.cross(e1, e2)
        frame = torch.stack([e1, e2, e3], dim=-1)  # columns: the frame axes
        w = torch.einsum("...kd,...de->...ke", y[..., 2:, :], frame)
        u = torch.cat([torch.stack([torch.log(r), a, torch.log(rho)], dim=-1), w.flatten(-2)], dim=-1)
        return u, 3.0 * torch.log(r) + 2.0 * torch.log(rho)

    def from_internal(self, u: Tensor, rotation: Tensor) -> Tensor:
        """Inverse of ``internal_coordinates``: CoM-free x (batch, n_atoms, dim) from u (batch, n_internal) and
        rotations (batch, dim, dim) (the frame's axes as columns)."""
        batch = u.shape[0]
        r = torch.exp(u[:, 0])
        if self.dim == 2:
            canon = torch.cat([torch.stack([r, torch.zeros_like(r)], -1)[:, None], u[:, 1:].reshape(batch, -1, 2)], 1)
        else:
            y2 = torch.stack([u[:, 1], torch.exp(u[:, 2]), torch.zeros_like(r)], dim=-1)
            y1 = torch.stack([r, torch.zeros_like(r), torch.zeros_like(r)], dim=-1)
            canon = torch.cat([y1[:, None], y2[:, None], u[:, 3:].reshape(batch, -1, 3)], dim=1)
        return from_helmert(torch.einsum("bde,bke->bkd", rotation, canon), self.basis)

    def _reflect(self, u: Tensor) -> Tensor:
        """Internal coordinates of the mirror image: the last frame component of every frame vector flips sign."""
        sign = torch.ones(self.n_internal, dtype=u.dtype, device=u.device)
        if self.dim == 2:
            sign[2::2] = -1.0
        else:
            sign[5::3] = -1.0
        return u * sign

    @property
    def _log_haar_mass(self) -> float:
        return math.log(2 * math.pi) if self.dim == 2 else math.log(8 * math.pi**2)

    def log_prob_internal(self, u: Tensor) -> Tensor:
        """log q_u(u) of the spline flow on internal coordinates, u (batch, n_internal) -> (batch,)."""
        z, log_det = self(u)
        return self.normal_log_prob(z) + log_det

    # --- the public flow protocol ---------------------------------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) in nats on the CoM-free subspace, shape (batch,); x: (batch, n_atoms, dim), CoM removed first.
        Evaluates the spline flow on batch x group_size internal-coordinate vectors."""
        x = check_positions(x, self.n_atoms, self.dim, self.shift)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        batch, n_perm = x.shape[0], self.permutations.shape[0]
        u, log_jac = self.internal_coordinates(x[:, self.permutations])  # (batch, n_perm, D), (batch, n_perm)
        if self.reflections:  # a mirror image has the same radii, hence the same Jacobian
            u = torch.stack([u, self._reflect(u)], dim=2)
        log_q_u = self.log_prob_internal(u.reshape(-1, self.n_internal)).reshape(batch, n_perm, -1)
        terms = (log_q_u - log_jac[..., None]).flatten(1)
        return torch.logsumexp(terms, dim=1) - math.log(self.group_size) - self._log_haar_mass

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n CoM-free configurations (n, n_atoms, dim) and their log q (n,), nats; reparameterised in u."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ref = self.shift
        if n == 0:
            return ref.new_zeros(0, self.n_atoms, self.dim), ref.new_zeros(0)
        gen_device = generator.device if generator is not None else ref.device

        def draw(fn, *args, **kwargs) -> Tensor:
            return fn(*args, generator=generator, device=gen_device, **kwargs).to(ref.device)

        u, _ = self.inverse(self.draw_latent(n, generator))
        if self.reflections:
            mirror = draw(torch.rand, n, dtype=ref.dtype) < 0.5
            u = torch.where(mirror[:, None], self._reflect(u), u)
        if self.dim == 2:
            angle = 2 * math.pi * draw(torch.rand, n, dtype=ref.dtype)
            c, s = torch.cos(angle), torch.sin(angle)
            rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], dim=-2)
        else:
            rotation = random_rotations(n, 3, generator, ref.dtype, gen_device).to(ref.device)
        x = self.from_internal(u, rotation)
        which = draw(torch.randint, self.permutations.shape[0], (n,))
        x = torch.gather(x, 1, self.inverse_permutations[which][:, :, None].expand(-1, -1, self.dim))
        return x, self.log_prob(x)
