"""E(n)-equivariant graph network (Satorras et al. 2021, eqs. 3-6) on nodes carrying several 3D points.

Each node i has invariant features h_i and ``n_mult`` points x_i^m (the observed position and augmented copies are
separate multiplicities). Messages see the squared distances |x_i^m - x_j^m|^2 of every multiplicity; points move
by the stabilised update (x_i^m - x_j^m) / (|x_i^m - x_j^m| + 1) averaged over the N - 1 neighbours. The network
is equivariant to rotations, reflections, translations and permutations of the nodes (for equal node types).

Cost. Edge tensors, (pairs, batch, hidden), are where the time goes (on a CPU, every elementwise pass and every
SiLU over them counts), so the network is built around them:

- messages are symmetric, m_ij = m_ji = phi_e(h_i + h_j, |x_i - x_j|^2), and computed once per unordered pair;
- the edge networks are two-layer SiLU MLPs without LayerNorm or residual branch (LayerNorm stays on the nodes);
  phi_x reads the message through one linear layer;
- edge tensors are laid out pair-major, (P, B, ...), so that gathering node values onto pairs and summing pair
  values onto nodes are each one matrix product with a 0/+-1 incidence matrix (and so are their backwards). On 2
  CPU cores these GEMMs use both cores, where ``index_select`` / ``index_add`` ran on one. Under ``torch.compile``
  with gradients the GEMMs stay (the backward of a gather is a scatter, which inductor runs with atomic adds); without
  gradients (sampling) they become index arithmetic that inductor fuses into single loops: 1.14x the compiled
  sampling speed at the alanine dipeptide reference size.

Only the output head is ordered: atom i's weight for neighbour j differs from j's weight for i.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .frames import safe_norm

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
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.nn.functional.silu(h))


class EdgeMLP(nn.Module):
    """Two-layer SiLU MLP on edges whose first layer is split over its inputs: out(silu(nodes + edge @ W_edge^T)).

    nodes: (*, hidden), the two atoms' features already through their own part of the first layer (with its
    bias) and summed; edge: (*, n_edge) raw edge features. Returns (*, n_out).
    """

    def __init__(self, n_edge: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.edge_in = nn.Linear(n_edge, hidden, bias=False)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, nodes: Tensor, edge: Tensor) -> Tensor:
        # one GEMM accumulating onto the node part: no separate pass to add the two
        pre = torch.addmm(nodes.reshape(-1, nodes.shape[-1]), edge.reshape(-1, edge.shape[-1]), self.edge_in.weight.T)
        hidden = torch.nn.functional.silu(pre.view(nodes.shape))
        if torch.compiler.is_compiling():  # the bias joins the caller's fused pass; addmm first copies it out
            return hidden @ self.out.weight.T + self.out.bias
        return self.out(hidden)


def _rbf(dist2: Tensor, n_rbf: int) -> Tensor:
    """Gaussian radial basis of distances, centres 0..5 (input length units). dist2: (...,) -> (..., n_rbf)."""
    centres = torch.linspace(0.0, 5.0, n_rbf, dtype=dist2.dtype, device=dist2.device)
    d = torch.sqrt(dist2 + 1e-12)
    return torch.exp(-(((d.unsqueeze(-1) - centres) * (n_rbf / 5.0)) ** 2))


def _edge_features(diff: Tensor) -> Tensor:
    """diff (P, B, M, d) pair vectors -> (P, B, M * (1 + N_RBF)): squared distances (clamped) and their basis."""
    dist2 = (diff * diff).sum(-1).clamp(max=MAX_FEATURE_DIST2)
    return torch.cat([dist2, _rbf(dist2, N_RBF).flatten(-2)], dim=-1)


class Pairs:
    """The P = N (N - 1) / 2 unordered atom pairs (i < j) of N atoms, pair-major.

    Node tensors are (N, B, ...) and pair tensors (P, B, ...). By default, moving values between atoms and pairs is
    one matrix product with a 0/+-1 incidence matrix over the flattened trailing axes (a single GEMM, and so is its
    backward). With ``indexed=True`` (for compiled code without gradients) it is index arithmetic instead: gathers,
    and per-atom sums over a fixed (N, N - 1) table of each atom's pairs, which inductor fuses into single loops
    without the GEMMs' N-fold redundant multiply-adds. Their backwards would be scatters, hence only without
    gradients; eager index ops were slower than the GEMMs.
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device, indexed: bool = False) -> None:
        self.n, self.indexed = n, indexed
        self.i, self.j = torch.triu_indices(n, n, offset=1, device=device)
        n_pairs = self.i.numel()
        if indexed:
            # atom k's pairs: column c is its neighbour j = c + (c >= k); the entry indexes the pair (min, max) in
            # [at_i; at_j], i.e. p where k is the pair's first atom and P + p where it is the second
            k = torch.arange(n, device=device).unsqueeze(1)
            c = torch.arange(n - 1, device=device).unsqueeze(0)
            other = c + (c >= k).long()
            low, high = torch.minimum(k, other), torch.maximum(k, other)
            pair = low * (2 * n - low - 1) // 2 + (high - low - 1)
            self.table = torch.where(k < other, pair, pair + n_pairs)  # (N, N - 1) into [at_i; at_j]
            self.symmetric_table = pair  # (N, N - 1) into the P pairs
            return
        p = torch.arange(n_pairs, device=device)
        first = torch.zeros(n_pairs, n, dtype=dtype, device=device)
        second = torch.zeros_like(first)
        first[p, self.i], second[p, self.j] = 1.0, 1.0
        self.first, self.second = first, second  # (P, N)
        self.both, self.signed = first + second, first - second

    def gather(self, nodes: Tensor, end: str) -> Tensor:
        """nodes (N, *F) -> (P, *F): the values at each pair's first ("i") or second ("j") atom (a row copy)."""
        return nodes.index_select(0, self.i if end == "i" else self.j)

    @staticmethod
    def apply(matrix: Tensor, t: Tensor) -> Tensor:
        """matrix (R, C) applied along dim 0 of t (C, *F) -> (R, *F), as one matrix product."""
        return (matrix @ t.reshape(t.shape[0], -1)).reshape(matrix.shape[0], *t.shape[1:])

    def sum(self, nodes: Tensor) -> Tensor:
        """nodes (N, *F) -> (P, *F): nodes[i] + nodes[j]."""
        if self.indexed:
            return nodes[self.i] + nodes[self.j]
        return self.apply(self.both, nodes)

    def diff(self, nodes: Tensor) -> Tensor:
        """nodes (N, *F) -> (P, *F): nodes[i] - nodes[j]."""
        if self.indexed:
            return nodes[self.i] - nodes[self.j]
        return self.apply(self.signed, nodes)

    def ends(self, at_first: Tensor, at_second: Tensor) -> Tensor:
        """at_first, at_second (N, *F) -> (P, *F): at_first[i] + at_second[j]."""
        if self.indexed:
            return at_first[self.i] + at_second[self.j]
        return self.apply(self.first, at_first) + self.apply(self.second, at_second)

    def to_nodes(self, at_i: Tensor, at_j: Tensor | None = None) -> Tensor:
        """Per-atom sums: atom k gets at_i[p] over pairs with i = k plus at_j[p] over pairs with j = k.

        at_i, at_j: (P, *F); at_j defaults to at_i (a symmetric pair quantity). Returns (N, *F).
        """
        if self.indexed:
            values, table = (at_i, self.symmetric_table) if at_j is None else (torch.cat([at_i, at_j]), self.table)
            out = values[table[:, 0]]
            for c in range(1, self.n - 1):  # unrolled, so that inductor emits one loop; a sum over a gather did not
                out = out + values[table[:, c]]
            return out
        if at_j is None:
            return self.apply(self.both.T, at_i)
        return self.apply(self.first.T, at_i) + self.apply(self.second.T, at_j)

    def to_nodes_antisymmetric(self, at_i: Tensor) -> Tensor:
        """to_nodes(at_i, -at_i): atom k gets at_i[p] over pairs with i = k minus at_i[p] over those with j = k."""
        if self.indexed:
            return self.to_nodes(at_i, -at_i)
        return self.apply(self.signed.T, at_i)


@functools.lru_cache(maxsize=64)
def _pairs(n: int, dtype: torch.dtype, device: torch.device) -> Pairs:
    """The pairs of n atoms, built once per size, dtype and device (16 EGNNs per flow pass share them)."""
    return Pairs(n, dtype, device)


def _orthogonalise_frame_weights(w_ij: Tensor, w_ji: Tensor, pairs: Pairs, group: int) -> tuple[Tensor, Tensor]:
    """Neighbour weights (P, B, V, M) of the ordered pairs i->j and j->i. In each group of ``group`` vectors, remove
    from vector 2's weights their projection on vector 1's (inner product over neighbours and multiplicities, per
    atom); invariant scalars, so equivariance is kept."""
    p, b, v, m = w_ij.shape
    g_ij, g_ji = w_ij.reshape(p, b, v // group, group, m), w_ji.reshape(p, b, v // group, group, m)
    dot = pairs.to_nodes((g_ij[..., 1, :] * g_ij[..., 2, :]).sum(-1), (g_ji[..., 1, :] * g_ji[..., 2, :]).sum(-1))
    norm2 = pairs.to_nodes(g_ij[..., 1, :].pow(2).sum(-1), g_ji[..., 1, :].pow(2).sum(-1))
    coef = (dot / (norm2 + 1e-12)).unsqueeze(-1)  # (N, B, groups, 1)
    out = []
    for g, end in ((g_ij, "i"), (g_ji, "j")):
        second = g[..., 2, :] - pairs.gather(coef, end) * g[..., 1, :]
        out.append(torch.cat([g[..., :2, :], second.unsqueeze(-2), g[..., 3:, :]], dim=-2).reshape(p, b, v, m))
    return out[0], out[1]


class _EGNNLayer(nn.Module):
    """One message-passing layer on unordered pairs (see the module docstring)."""

    def __init__(self, hidden: int, n_mult: int, mlp_blocks: int, coord_scale: float) -> None:
        super().__init__()
        self.node = nn.Linear(hidden, hidden)  # with the first edge layer's bias (twice: once per atom)
        self.phi_e = EdgeMLP(n_mult * (1 + N_RBF), hidden, hidden)
        self.phi_x = nn.Linear(hidden, n_mult)
        with torch.no_grad():  # small coordinate steps at initialisation (reference implementation: 1e-3)
            self.phi_x.weight.mul_(coord_scale)
            self.phi_x.bias.mul_(coord_scale)
        self.phi_h = ResidualMLP(2 * hidden, hidden, hidden, mlp_blocks)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, pos: Tensor, pairs: Pairs) -> tuple[Tensor, Tensor, Tensor]:
        """h: (N, B, H); pos: (N, B, M, d). Returns (h, pos, messages (P, B, H))."""
        diff = pairs.diff(pos)  # (P, B, M, d): x_i - x_j
        m = torch.nn.functional.silu(self.phi_e(pairs.sum(self.node(h)), _edge_features(diff)))
        step = diff / (safe_norm(diff, keepdim=True) + 1.0) * self.phi_x(m).unsqueeze(-1)  # (P, B, M, d)
        shift = pairs.to_nodes_antisymmetric(step) / (pairs.n - 1)
        received = pairs.to_nodes(m) / (pairs.n - 1)
        h = h + self.phi_h(torch.cat([self.norm(h), received], dim=-1))
        return h, pos + shift, m


class EGNN(nn.Module):
    """Equivariant network mapping node points to equivariant vectors and invariant features.

    Args:
        n_types: number of atom types (embedding size of node features).
        n_mult: points per node (multiplicities) in the input.
        n_vectors: equivariant output vectors per node.
        hidden: width of features and MLPs. n_layers: message-passing layers. mlp_blocks: residual blocks of the
            node MLPs.
        coord_scale: scale of the coordinate update's layer at initialisation.
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
        # The vector head reads the last messages and a radial basis of the distances, so that different output
        # vectors weight the neighbours differently and are not all nearly parallel at initialisation. It is
        # ordered (atom i's own features enter its weights for its neighbours), else the outputs of all atoms would
        # sum to zero. It is linear: the messages are already an MLP's output, and an edge MLP here cost as much
        # as a message-passing layer.
        n_out = n_vectors * n_mult
        self.vec_edge = nn.Linear(hidden + n_mult * N_RBF, n_out)
        self.vec_self = nn.Linear(hidden, n_out, bias=False)
        self.vec_other = nn.Linear(hidden, n_out, bias=False)
        self.vec_node = ResidualMLP(hidden, n_vectors * n_mult, hidden, mlp_blocks) if n_mult > 1 else None
        self.norm_out = nn.LayerNorm(hidden)

    def forward(self, pos: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        b, n, m, _ = pos.shape
        if m != self.n_mult:
            raise ValueError(f"EGNN built for {self.n_mult} multiplicities, got positions of shape {tuple(pos.shape)}")
        x = pos.transpose(0, 1)  # (N, B, M, d): node-major
        h = self.embed(types).to(pos.dtype).unsqueeze(1).expand(-1, b, -1)
        if m > 1:
            iu, ju = torch.triu_indices(m, m, offset=1, device=pos.device)
            intra = ((x[:, :, iu] - x[:, :, ju]) ** 2).sum(-1).clamp(max=MAX_FEATURE_DIST2)  # (N, B, n_pairs)
            h = torch.cat([h, intra], dim=-1)
        h = self.node_in(h)
        # under torch.compile the pairs are built in the graph (Dynamo would trace through the cache anyway), and
        # without gradients they use index arithmetic (see Pairs)
        if torch.compiler.is_compiling():
            pairs = Pairs(n, pos.dtype, pos.device, indexed=not torch.is_grad_enabled())
        else:
            pairs = _pairs(n, pos.dtype, pos.device)
        msg = None
        for layer in self.layers:
            h, x, msg = layer(h, x, pairs)
        if msg is None:  # no message-passing layer: messages from the node features alone
            msg = pairs.sum(h)
        diff = pairs.diff(x)  # (P, B, M, d)
        unit = diff / (safe_norm(diff, keepdim=True) + 1.0)
        dist2 = (diff * diff).sum(-1).clamp(max=MAX_FEATURE_DIST2)
        edge = self.vec_edge(torch.cat([msg, _rbf(dist2, N_RBF).flatten(-2)], dim=-1))  # (P, B, V * M)
        own, other = self.vec_self(h), self.vec_other(h)  # (N, B, V * M)
        shape = (-1, b, self.n_vectors, m)
        w_ij = (edge + pairs.ends(own, other)).reshape(shape)
        w_ji = (edge + pairs.ends(other, own)).reshape(shape)
        # Scale the weights to unit root-mean-square over neighbours, so that output vectors have length O(1).
        # The neighbour-average weight is kept: it gives the direction away from (or towards) the neighbours, the
        # only equivariant direction where the neighbours are equidistant, and the one that changes pair distances.
        # (Subtracting it made such vectors vanish and, near equidistance, blew tiny weight differences up 100-fold
        # into erratic directions: maximum likelihood on DW4 then stalled near the Gaussian NLL.)
        scale = torch.rsqrt(pairs.to_nodes(w_ij.pow(2), w_ji.pow(2)) / (n - 1) + 1e-4)  # (N, B, V, M)
        w_ij, w_ji = w_ij * pairs.gather(scale, "i"), w_ji * pairs.gather(scale, "j")
        if self.frame_group is not None:
            w_ij, w_ji = _orthogonalise_frame_weights(w_ij, w_ji, pairs, self.frame_group)
        # atom i moves along x_i - x_j with weight w_ij; atom j along x_j - x_i = -(x_i - x_j) with weight w_ji
        vectors = pairs.to_nodes(
            torch.einsum("pbvm,pbmd->pbvd", w_ij, unit), -torch.einsum("pbvm,pbmd->pbvd", w_ji, unit)
        ) / (n - 1)  # (N, B, V, d)
        if self.vec_node is not None:
            rel = x - x.mean(dim=2, keepdim=True)  # (N, B, M, d), translation invariant
            wn = self.vec_node(h).reshape(n, b, self.n_vectors, m)
            vectors = vectors + torch.einsum("nbvm,nbmd->nbvd", wn, rel)
        return vectors.transpose(0, 1), self.norm_out(h).transpose(0, 1)
