"""E(n)-equivariant graph network (Satorras et al. 2021, eqs. 3-6) on nodes carrying several 3D points.

Each node i has invariant features h_i and ``n_mult`` points x_i^m (the observed position and augmented copies are
separate multiplicities). Messages see the squared distances |x_i^m - x_j^m|^2 of every multiplicity; points move
by the stabilised update (x_i^m - x_j^m) / (|x_i^m - x_j^m| + 1) averaged over the N - 1 neighbours. The network
is equivariant to rotations, reflections, translations and permutations of the nodes (for equal node types).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .geometry import safe_norm

__all__ = ["EGNN", "ResidualMLP"]

N_RBF = 8  # radial basis functions per distance in edge inputs


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


class Pairs(NamedTuple):
    """The N (N - 1) / 2 unordered atom pairs i < j, and the matrices that sum pair quantities onto atoms."""

    i: Tensor  # (P,) long
    j: Tensor  # (P,) long
    incidence: Tensor  # (N, P): 1 where the atom is either end of the pair
    signed: Tensor  # (N, P): +1 at i, -1 at j (pair vectors x_i - x_j point away from j)
    first: Tensor  # (N, P): 1 at i
    second: Tensor  # (N, P): 1 at j

    @classmethod
    def of(cls, n: int, dtype: torch.dtype, device: torch.device) -> Pairs:
        i, j = torch.triu_indices(n, n, offset=1, device=device)
        p = torch.arange(i.numel(), device=device)
        first = torch.zeros(n, i.numel(), dtype=dtype, device=device)
        second = torch.zeros_like(first)
        first[i, p], second[j, p] = 1.0, 1.0
        return cls(i, j, first + second, first - second, first, second)

    def gather(self, nodes: Tensor, matrix: Tensor) -> Tensor:
        """Pair values sum_n matrix[n, p] nodes[:, n]: nodes (B, N, *F) -> (B, P, *F), as one matrix product
        (cheaper than indexing, whose backward scatters)."""
        b, n = nodes.shape[:2]
        return (matrix.T @ nodes.reshape(b, n, -1)).reshape(b, -1, *nodes.shape[2:])

    def scatter(self, pairs: Tensor, matrix: Tensor) -> Tensor:
        """Atom values sum_p matrix[n, p] pairs[:, p]: pairs (B, P, *F) -> (B, N, *F)."""
        b, p = pairs.shape[:2]
        return (matrix @ pairs.reshape(b, p, -1)).reshape(b, -1, *pairs.shape[2:])

    def to_dense(self, forward: Tensor, backward: Tensor) -> Tensor:
        """(B, N, N, C) with [i, j] = forward and [j, i] = backward (both (B, P, C)) and zeros on the diagonal."""
        b, p, c = forward.shape
        n = self.incidence.shape[0]
        index = torch.cat([self.i * n + self.j, self.j * n + self.i])
        dense = forward.new_zeros(b, n * n, c).index_copy(1, index, torch.cat([forward, backward], dim=1))
        return dense.view(b, n, n, c)


class EdgeMLP(nn.Module):
    """The edge network: a two-layer SiLU MLP whose first layer is split over its inputs (Satorras et al., eq. 3).

    Edge tensors, (B, P, hidden) over the P atom pairs, dominate time and memory, so this network materialises as
    few of them as it can: no LayerNorm (whose backward re-reads every element) and no residual branch.
    ``forward(nodes, edge)``: nodes (B, P, H), the two atoms' features already through their part of the first
    layer and summed, edge (B, P, n_edge) the raw edge features. Returns (B, P, n_out).
    """

    def __init__(self, n_edge: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.edge_in = nn.Linear(n_edge, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, nodes: Tensor, edge: Tensor) -> Tensor:
        return self.out(torch.nn.functional.silu(self.edge_in(edge) + nodes))


class _EGNNLayer(nn.Module):
    """One message-passing layer on unordered pairs: m_ij = m_ji = phi_e(h_i + h_j, |x_i - x_j|^2) (symmetric in
    the two atoms, so each pair is computed once: half the edge work of ordered pairs, and no self-pairs)."""

    def __init__(self, hidden: int, n_mult: int, mlp_blocks: int, coord_scale: float) -> None:
        super().__init__()
        self.n_mult = n_mult
        self.node = nn.Linear(hidden, hidden, bias=False)
        self.phi_e = EdgeMLP(n_mult * (1 + N_RBF), hidden, hidden)
        # phi_x reads the message through one linear layer: the message is already an MLP's output, and a second
        # edge-sized layer here cost as much as phi_e itself
        self.phi_x = nn.Linear(hidden, n_mult)
        with torch.no_grad():  # small coordinate steps at initialisation (reference implementation: 1e-3)
            self.phi_x.weight.mul_(coord_scale)
            self.phi_x.bias.mul_(coord_scale)
        self.phi_h = ResidualMLP(2 * hidden, hidden, hidden, mlp_blocks)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, pos: Tensor, pairs: Pairs) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, N, H); pos: (B, N, M, d). Returns (h, pos, messages (B, P, H))."""
        n = h.shape[1]
        diff = pairs.gather(pos, pairs.signed)  # (B, P, M, d): x_i - x_j
        dist2 = (diff * diff).sum(-1)
        edge = torch.cat([dist2, _rbf(dist2, N_RBF).flatten(-2)], dim=-1)
        m = torch.nn.functional.silu(self.phi_e(pairs.gather(self.node(h), pairs.incidence), edge))  # (B, P, H)
        step = diff / (safe_norm(diff, keepdim=True) + 1.0) * self.phi_x(m)[..., None]  # (B, P, M, d)
        shift = pairs.scatter(step, pairs.signed) / (n - 1)
        received = pairs.scatter(m, pairs.incidence) / (n - 1)
        h = h + self.phi_h(torch.cat([self.norm(h), received], dim=-1))
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
        # (ordered: atom i's weight for neighbour j differs from j's for i, else every output sums to zero)
        self.vec_node_self = nn.Linear(hidden, hidden, bias=False)
        self.vec_node_other = nn.Linear(hidden, hidden, bias=False)
        self.vec_edge = EdgeMLP(hidden + n_mult * N_RBF, hidden, n_vectors * n_mult)
        self.vec_node = ResidualMLP(hidden, n_vectors * n_mult, hidden, mlp_blocks) if n_mult > 1 else None
        self.norm_out = nn.LayerNorm(hidden)

    def forward(self, pos: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        b, n, m, _ = pos.shape
        if m != self.n_mult:
            raise ValueError(f"EGNN built for {self.n_mult} multiplicities, got positions of shape {tuple(pos.shape)}")
        h = self.embed(types).to(pos.dtype).expand(b, -1, -1)
        if m > 1:
            iu, ju = torch.triu_indices(m, m, offset=1, device=pos.device)
            intra = ((pos[:, :, iu] - pos[:, :, ju]) ** 2).sum(-1)  # (B, N, n_pairs)
            h = torch.cat([h, intra], dim=-1)
        h = self.node_in(h)
        pairs = Pairs.of(n, pos.dtype, pos.device)
        x = pos
        msg = None
        for layer in self.layers:
            h, x, msg = layer(h, x, pairs)
        if msg is None:  # no message-passing layer: messages from the embedding alone
            msg = pairs.gather(h, pairs.incidence)
        diff = pairs.gather(x, pairs.signed)
        edge = self.vec_edge.edge_in(torch.cat([msg, _rbf((diff * diff).sum(-1), N_RBF).flatten(-2)], dim=-1))
        own, other = self.vec_node_self(h), self.vec_node_other(h)
        w_ij, w_ji = (  # weight of neighbour j for atom i, and of i for j
            self.vec_edge.out(torch.nn.functional.silu(edge + pairs.gather(own, first) + pairs.gather(other, second)))
            for first, second in ((pairs.first, pairs.second), (pairs.second, pairs.first))
        )
        w = pairs.to_dense(w_ij, w_ji).reshape(b, n, n, self.n_vectors, m)  # zero for j = i
        full = x[:, :, None] - x[:, None, :]
        unit = full / (safe_norm(full, keepdim=True) + 1.0)  # (B, N, N, M, d)
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
