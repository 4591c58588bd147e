"""E(n)-equivariant graph network (Satorras et al. 2021, eqs. 3-6) on nodes carrying several 3D points.

Each node i has invariant features h_i and ``n_mult`` points x_i^m (the observed position and augmented copies are
separate multiplicities). Messages see the squared distances |x_i^m - x_j^m|^2 of every multiplicity; points move
by the stabilised update (x_i^m - x_j^m) / (|x_i^m - x_j^m| + 1) averaged over the N - 1 neighbours. The network
is equivariant to rotations, reflections, translations and permutations of the nodes (for equal node types).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .geometry import safe_norm

__all__ = ["EGNN", "ResidualMLP"]

N_RBF = 8  # radial basis functions per distance in edge inputs
#: squared distances enter the networks clamped here (input length units): far above any configuration a flow is
#: trained on, it keeps features finite for absurd inputs (|x| ~ 1e25 overflowed LayerNorm's variance into NaN)
MAX_FEATURE_DIST2 = 1e8


class ResidualMLP(nn.Module):
    """Linear, then residual [LayerNorm -> SiLU -> Linear] blocks, then SiLU -> Linear: (*, n_in) -> (*, n_out)."""

    def __init__(self, n_in: int, n_out: int, hidden: int, n_blocks: int = 1, zero_init: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(n_blocks)
        )
        self.out = nn.Linear(hidden, n_out)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(self.inp(x))

    def forward_hidden(self, h: Tensor) -> Tensor:
        """The network after its input layer: h = inp(x) of shape (*, hidden) -> (*, n_out)."""
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.nn.functional.silu(h))


def _rbf(dist2: Tensor, n_rbf: int) -> Tensor:
    """Gaussian radial basis of distances, centres 0..5 (input length units). dist2: (...,) -> (..., n_rbf)."""
    centres = torch.linspace(0.0, 5.0, n_rbf, dtype=dist2.dtype, device=dist2.device)
    d = torch.sqrt(dist2 + 1e-12)
    return torch.exp(-(((d.unsqueeze(-1) - centres) * (n_rbf / 5.0)) ** 2))


def _orthogonalise_frame_weights(w: Tensor, group: int) -> Tensor:
    """w: (B, N, N, V, M) neighbour weights. In each group of ``group`` vectors, remove from vector 2's weights
    their projection on vector 1's (inner product over neighbours j and multiplicities m); invariant scalars, so
    equivariance is kept."""
    b, n, _, v, m = w.shape
    g = w.reshape(b, n, n, v // group, group, m)
    w1, w2 = g[..., 1, :], g[..., 2, :]
    coef = (w1 * w2).sum(dim=(2, -1), keepdim=True) / ((w1 * w1).sum(dim=(2, -1), keepdim=True) + 1e-12)
    g = torch.cat([g[..., :2, :], (w2 - coef * w1).unsqueeze(-2), g[..., 3:, :]], dim=-2)
    return g.reshape(b, n, n, v, m)


class _EGNNLayer(nn.Module):
    def __init__(self, hidden: int, n_mult: int, mlp_blocks: int, coord_scale: float) -> None:
        super().__init__()
        self.n_mult = n_mult
        self.phi_e = ResidualMLP(2 * hidden + n_mult * (1 + N_RBF), hidden, hidden, mlp_blocks)
        self.phi_x = ResidualMLP(hidden, n_mult, hidden, mlp_blocks)
        with torch.no_grad():  # small coordinate steps at initialisation (reference implementation: 1e-3)
            self.phi_x.out.weight.mul_(coord_scale)
            self.phi_x.out.bias.mul_(coord_scale)
        self.phi_h = ResidualMLP(2 * hidden, hidden, hidden, mlp_blocks)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, N, H); pos: (B, N, M, d); mask: (N, N) with zero diagonal. Returns (h, pos, messages)."""
        n = h.shape[1]
        diff = pos[:, :, None] - pos[:, None, :]  # (B, N, N, M, d): x_i - x_j
        dist2 = (diff * diff).sum(-1).clamp(max=MAX_FEATURE_DIST2)
        rbf = _rbf(dist2, N_RBF).flatten(-2)
        # phi_e(cat[h_i, h_j, edge]) with its input layer split, so no (B, N, N, 2H) tensor is built
        w = self.phi_e.inp.weight
        hdim = h.shape[-1]
        node_i = h @ w[:, :hdim].T + self.phi_e.inp.bias
        node_j = h @ w[:, hdim : 2 * hdim].T
        edge = torch.cat([dist2, rbf], dim=-1) @ w[:, 2 * hdim :].T
        pre = node_i[:, :, None] + node_j[:, None, :] + edge
        m = self.phi_e.forward_hidden(pre) * mask[..., None]  # (B, N, N, H)
        unit = diff / (safe_norm(diff, keepdim=True) + 1.0)
        shift = (unit * self.phi_x(m)[..., None] * mask[..., None, None]).sum(2) / (n - 1)
        h = h + self.phi_h(torch.cat([self.norm(h), m.sum(2) / (n - 1)], dim=-1))
        return h, pos + shift, m


class EGNN(nn.Module):
    """Equivariant network mapping node points to equivariant vectors and invariant features.

    Args:
        n_types: number of atom types (embedding size of node features).
        n_mult: points per node (multiplicities) in the input.
        n_vectors: equivariant output vectors per node.
        hidden: width of features and MLPs. n_layers: message-passing layers. mlp_blocks: residual blocks per MLP.
        coord_scale: scale of the last layer of the coordinate MLPs at initialisation.
        frame_group: for frame-building couplings, the number of output vectors per transformed multiplicity
            (origin shift, then two frame vectors). The neighbour weights of each group's third vector are made
            orthogonal to those of its second (over neighbours and multiplicities), so the two frame vectors
            cannot collapse onto the one direction that bias-dominated weights share (the neighbour average).
            Nearly collinear frame vectors make the frame, and with it the coupling, ill-conditioned.

    ``forward(pos, types)``: pos (B, N, n_mult, dim), types (N,) long. Returns (vectors (B, N, n_vectors, dim),
    translation invariant and rotation equivariant; features (B, N, hidden), invariant).
    """

    def __init__(
        self,
        n_types: int,
        n_mult: int,
        n_vectors: int,
        hidden: int = 128,
        n_layers: int = 3,
        mlp_blocks: int = 1,
        coord_scale: float = 1e-3,
        frame_group: int | None = None,
    ) -> None:
        super().__init__()
        if frame_group is not None and (frame_group < 3 or n_vectors % frame_group):
            raise ValueError(f"frame_group must be >= 3 and divide n_vectors={n_vectors}, got {frame_group}")
        self.n_mult, self.n_vectors, self.frame_group = n_mult, n_vectors, frame_group
        self.embed = nn.Embedding(n_types, hidden)
        n_pairs = n_mult * (n_mult - 1) // 2
        self.node_in = nn.Linear(hidden + n_pairs, hidden)
        self.layers = nn.ModuleList(_EGNNLayer(hidden, n_mult, mlp_blocks, coord_scale) for _ in range(n_layers))
        # the vector head sees a radial basis of the distances, so that different output vectors weight the
        # neighbours differently and are not all nearly parallel at initialisation
        self.vec_edge = ResidualMLP(hidden + n_mult * N_RBF, n_vectors * n_mult, hidden, mlp_blocks)
        self.vec_node = ResidualMLP(hidden, n_vectors * n_mult, hidden, mlp_blocks) if n_mult > 1 else None
        self.norm_out = nn.LayerNorm(hidden)

    def forward(self, pos: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        b, n, m, _ = pos.shape
        if m != self.n_mult:
            raise ValueError(f"EGNN built for {self.n_mult} multiplicities, got positions of shape {tuple(pos.shape)}")
        h = self.embed(types).to(pos.dtype).expand(b, -1, -1)
        if m > 1:
            iu, ju = torch.triu_indices(m, m, offset=1, device=pos.device)
            intra = ((pos[:, :, iu] - pos[:, :, ju]) ** 2).sum(-1).clamp(max=MAX_FEATURE_DIST2)  # (B, N, n_pairs)
            h = torch.cat([h, intra], dim=-1)
        h = self.node_in(h)
        mask = 1.0 - torch.eye(n, dtype=pos.dtype, device=pos.device)
        x = pos
        msg = None
        for layer in self.layers:
            h, x, msg = layer(h, x, mask)
        if msg is None:  # no message-passing layer: messages from the embedding alone
            msg = (h[:, :, None] + h[:, None, :]) * mask[..., None]
        diff = x[:, :, None] - x[:, None, :]
        unit = diff / (safe_norm(diff, keepdim=True) + 1.0)  # (B, N, N, M, d)
        rbf = _rbf((diff * diff).sum(-1), N_RBF).flatten(-2)
        w = self.vec_edge(torch.cat([msg, rbf], dim=-1)).reshape(b, n, n, self.n_vectors, m) * mask[..., None, None]
        # Scale the weights to unit root-mean-square over neighbours, so that output vectors have length O(1).
        # The neighbour-average weight is kept: it gives the direction away from (or towards) the neighbours, the
        # only equivariant direction where the neighbours are equidistant, and the one that changes pair distances.
        # (Subtracting it made such vectors vanish and, near equidistance, blew tiny weight differences up 100-fold
        # into erratic directions: maximum likelihood on DW4 then stalled near the Gaussian NLL.)
        w = w * torch.rsqrt(w.pow(2).sum(2, keepdim=True) / (n - 1) + 1e-4)
        if self.frame_group is not None:
            w = _orthogonalise_frame_weights(w, self.frame_group)
        vectors = torch.einsum("bijvm,bijmd->bivd", w, unit) / (n - 1)
        if self.vec_node is not None:
            rel = x - x.mean(dim=2, keepdim=True)  # (B, N, M, d), translation invariant
            wn = self.vec_node(h).reshape(b, n, self.n_vectors, m)
            vectors = vectors + torch.einsum("bivm,bimd->bivd", wn, rel)
        return vectors, self.norm_out(h)
