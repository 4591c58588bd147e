"""E(n) equivariant normalising flow (Satorras et al., NeurIPS 2021): a CNF whose dynamics is an EGNN.

Our own small EGNN (the augmented flow's EGNN in ``flow/egnn.py`` is shaped for couplings, not for ODE dynamics).
Each layer (E-NF appendix, eqs. 13-16), over ordered pairs i != j:

    m_ij   = phi_e(h_i, h_j, |x_i - x_j|^2)
    x_i   <- x_i + (1 / (n - 1)) sum_j (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij)     (stabilised, C = 1)
    m_i    = sum_j sigmoid(phi_inf(m_ij)) m_ij                                            (edge inference)
    h_i   <- h_i + phi_h(h_i, m_i)

with ``dx/dt = x^L - x`` (eq. 8) minus its mean (phi_x(m_ij) != phi_x(m_ji), so the raw update moves the CoM;
removing it is a projection that leaves the divergence on the subspace unchanged): translation invariant,
rotation/reflection and permutation equivariant, and CoM preserving. Node features start as a learned
embedding of identical particles plus the time t. The 1/(n - 1) average (as in the augmented-flow reference
EGNN) keeps the update scale independent of system size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cnf import ContinuousFlow, TraceMethod, remove_mean

__all__ = ["EGNNDynamics", "ENFlow"]


class _EGCL(nn.Module):
    """One equivariant graph convolutional layer with the stabilised coordinate update and edge gating."""

    def __init__(self, hidden: int, update_h: bool = True) -> None:
        super().__init__()
        act = nn.SiLU()
        self.update_h = update_h
        self.phi_e = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), act, nn.Linear(hidden, hidden), act)
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=1e-3)  # small coordinate updates at the start
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), act, last, nn.Tanh())
        if update_h:  # the last layer's features are never read, so it has no phi_inf / phi_h
            self.phi_inf = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
            self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, x: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[1]
        diff = x[:, src] - x[:, dst]  # (batch, n_edges, dim), x_i - x_j
        sq = diff.pow(2).sum(-1, keepdim=True)
        m = self.phi_e(torch.cat([h[:, src], h[:, dst], sq], dim=-1))  # (batch, n_edges, hidden)
        shift = diff / (sq.sqrt() + 1.0) * self.phi_x(m)
        x = x + torch.zeros_like(x).index_add_(1, src, shift) / (n - 1)
        if self.update_h:
            agg = torch.zeros_like(h).index_add_(1, src, self.phi_inf(m) * m)
            h = h + self.phi_h(torch.cat([h, agg], dim=-1))
        return h, x


class EGNNDynamics(nn.Module):
    """EGNN vector field ``dx/dt = EGNN(x, t) - x`` for n_atoms identical particles.

    hidden: feature width (E-NF: 32 for DW4 and LJ13); n_layers: EGCL layers (E-NF: 3).
    """

    def __init__(self, n_atoms: int, hidden: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        if n_atoms < 2:
            raise ValueError(f"an EGNN needs at least 2 particles, got n_atoms={n_atoms}")
        self.embedding = nn.Parameter(torch.randn(hidden - 1) * 0.1)
        self.layers = nn.ModuleList(_EGCL(hidden, update_h=k < n_layers - 1) for k in range(n_layers))
        i, j = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
        mask = i != j
        self.register_buffer("src", i[mask])
        self.register_buffer("dst", j[mask])

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """dx/dt, shape (batch, n_atoms, dim), for x of shape (batch, n_atoms, dim) and a 0-d time t."""
        batch, n = x.shape[:2]
        h = torch.cat([self.embedding.to(x.dtype).expand(batch, n, -1), t.to(x.dtype).expand(batch, n, 1)], dim=-1)
        y = x
        for layer in self.layers:
            h, y = layer(h, y, self.src, self.dst)
        return remove_mean(y - x)


class ENFlow(ContinuousFlow):
    """E-NF: a CNF with EGNN dynamics on CoM-free coordinates.

    trace: ``"auto"`` uses the exact divergence up to ``exact_max_dof`` coordinates (DW4) and Hutchinson above
    (LJ13 and up); ``log_prob(x, trace="exact")`` gives exact values at evaluation. n_steps: RK4 steps on [0, 1].
    length_scale, kinetic_weight: the base's std and the kinetic-energy regulariser (see ``ContinuousFlow``).
    Exposes ``sample(n, generator) -> (x, log_q)`` and ``log_prob(x)`` like every flow baseline.
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int,
        hidden: int = 32,
        n_layers: int = 3,
        n_steps: int = 20,
        trace: TraceMethod | str = "auto",
        exact_max_dof: int = 16,
        length_scale: float = 1.0,
        kinetic_weight: float = 0.0,
    ) -> None:
        super().__init__(
            EGNNDynamics(n_atoms, hidden, n_layers), n_atoms, dim, n_steps=n_steps, trace=trace,
            exact_max_dof=exact_max_dof, length_scale=length_scale, kinetic_weight=kinetic_weight,
        )  # fmt: skip
