"""A Boltzmann-generator flow for one molecule: spline couplings on internal coordinates (Z-matrix) with exact density.

Molecules with a fixed bond graph (alanine dipeptide) are best learned in internal coordinates, the way the
Boltzmann-generator literature does it (Noé et al. 2019; FAB, Midgley et al. 2022): bond lengths and angles are
nearly Gaussian and stiff, torsions are circular and multimodal. ``InternalCoordinateFlow`` is

1. a Z-matrix from the topology's bonds (``zmatrix_from_bonds``): atoms in breadth-first order, each placed by a
   bond to an earlier atom, an angle and a torsion; the first three atoms fix the orientation. Acyclic molecules
   only: a ring's closing bond is no Z-matrix bond, so a ring (proline, phenyl) is refused with an
   ``UnsupportedMoleculeError`` that names its atoms (use ``AugmentedCouplingFlow`` for those);
2. x (CoM-free, nm) <-> (bonds (N - 1), angles (N - 2), torsions (N - 3)) and the orientation, a rotation that is
   uniform (Haar) by construction. The density on the CoM-free subspace (the convention of every flow here) is

       log q(x) = log q_ic(ic) - log(8 pi^2) - sum_{i>=1} 2 log r_i - sum_{i>=2} log sin theta_i + (3/2) log N,

   the Jacobian of placing atom i at distance r_i, angle theta_i and torsion phi_i (r^2 sin theta), the rotation
   group's volume 8 pi^2 and the constant of the map from coordinates relative to atom 0 to orthonormal CoM-free
   coordinates (each spatial axis: the minor of a Helmert matrix, 1 / sqrt(N));
3. q_ic: rational-quadratic spline couplings (Durkan et al. 2019) on the standardised bonds and angles (linear
   tails, standard normal base) and on the torsions (circular splines, Rezende et al. 2020, uniform base on the
   circle, each torsion first turned by its circular mean so that its mode sits away from the cut).

The density is SE(3) invariant (translation and rotation; mirror images differ, as they must for a chiral
molecule) and exact: no augmented variables, no ODE. It is not invariant under permutations of identical atoms;
for importance sampling and free energies of one labelled molecule that is not needed (the target is labelled).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UnsupportedMoleculeError
from ..geometry import angle, torsion, unit
from .checks import check_positions
from .coupling_stack import alternating_masks, zero_output_mlp
from .splines import n_spline_params, rational_quadratic_spline

__all__ = [
    "InternalCoordinateFlow",
    "atom_labels",
    "find_rings",
    "internal_coordinates",
    "place_atoms",
    "zmatrix_from_bonds",
]


def find_rings(n_atoms: int, bonds: Sequence[tuple[int, int]]) -> list[list[int]]:
    """The rings of a bond graph: a cycle basis of small rings, one ring per ring-closing bond, as lists of atom
    indices in ring order (from its lowest index), smallest rings first; [] for an acyclic graph.

    A spanning forest (breadth-first) leaves bonds - atoms + components bonds out; each closes a ring, so a molecule
    has that many independent rings (naphthalene 2, not 3: the outer 10-ring is the sum of the two 6-rings). The
    basis is chosen greedily from the smallest ring through each bond on a ring (and each closing bond's ring in the
    tree, so it is always complete), keeping a ring only if it is independent (over GF(2)) of the smaller ones.
    Repeated bonds ((a, b) twice, or (b, a)) are one bond.
    """
    edges = sorted({(min(a, b), max(a, b)) for a, b in bonds})
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    seen, tree = [False] * n_atoms, set()
    for start in range(n_atoms):
        if seen[start]:
            continue
        seen[start], queue = True, deque([start])
        while queue:
            u = queue.popleft()
            for v in neighbours[u]:
                if not seen[v]:
                    seen[v] = True
                    tree.add((min(u, v), max(u, v)))
                    queue.append(v)
    closing = [e for e in edges if e not in tree]
    if not closing:
        return []

    def ring_through(edge: tuple[int, int], allowed: set | None) -> list[int]:
        """The shortest path between the ends of ``edge`` that avoids it (and uses only ``allowed`` bonds)."""
        a, b = edge
        prev, queue = {a: -1}, deque([a])
        while queue and b not in prev:
            u = queue.popleft()
            for v in neighbours[u]:
                e = (min(u, v), max(u, v))
                if v not in prev and e != edge and (allowed is None or e in allowed):
                    prev[v] = u
                    queue.append(v)
        path = [b]
        while path[-1] != a:
            path.append(prev[path[-1]])
        return path

    candidates = [ring_through(e, tree | {e}) for e in closing]  # the fundamental rings: a basis by construction
    on_rings = sorted({(min(u, v), max(u, v)) for ring in candidates for u, v in zip(ring, ring[1:] + ring[:1])})
    candidates += [ring_through(e, None) for e in on_rings]
    bit = {e: 1 << n for n, e in enumerate(edges)}
    basis: dict[int, int] = {}  # Gaussian elimination over GF(2): leading bit -> reduced edge set
    rings, done = [], set()
    for ring in sorted(candidates, key=lambda r: (len(r), sorted(r))):
        key = frozenset(ring)
        if key in done:
            continue
        done.add(key)
        v = 0
        for u, w in zip(ring, ring[1:] + ring[:1]):
            v ^= bit[(min(u, w), max(u, w))]
        while v and v.bit_length() in basis:
            v ^= basis[v.bit_length()]
        if not v:
            continue
        basis[v.bit_length()] = v
        first = ring.index(min(ring))
        ring = ring[first:] + ring[:first]
        if ring[-1] < ring[1]:  # walk towards the lower-numbered neighbour
            ring = ring[:1] + ring[:0:-1]
        rings.append(ring)
        if len(rings) == len(closing):
            break
    return rings


def _ring_message(rings: list[list[int]], labels: Sequence[str] | None, show: int = 4) -> str:
    """The error for a bond graph with rings: each ring's atoms (labels "RES1:NAME", the residue written once per
    run) and indices, what the Z-matrix cannot do with them, and what to use instead."""
    parts = []
    for ring in rings[:show]:
        text = f"ring of {len(ring)} atoms"
        if labels is not None:
            names, last = [], None
            for i in ring:
                res, _, name = str(labels[i]).rpartition(":")
                names.append(name if res == last else str(labels[i]))
                last = res
            text += " " + ", ".join(names) + " (indices " + ", ".join(map(str, ring)) + ")"
        else:
            text += " (indices " + ", ".join(map(str, ring)) + ")"
        parts.append(text)
    if len(rings) > show:
        parts.append(f"and {len(rings) - show} more")
    n = len(rings)
    return (
        f"the bond graph has {n} ring{'s' if n != 1 else ''}: {'; '.join(parts)}. InternalCoordinateFlow's Z-matrix "
        "places each atom by one bond to an earlier atom, so each ring-closing bond would be left unconstrained: "
        "the flow's samples would break the ring (that bond at any length, a huge energy, importance weights ~0). "
        "Supported: acyclic molecules, e.g. capped peptides of residues without rings (alanine dipeptide, "
        "Ace-(Ala)n-Nme; not Pro, Phe, Tyr, Trp, His). For a molecule with rings use the Cartesian "
        "AugmentedCouplingFlow (AugmentedCouplingFlow.for_topology), which needs no Z-matrix."
    )


def atom_labels(topology) -> list[str]:
    """ "RESNAME<number>:ATOMNAME" for each atom of an openmm or mdtraj topology (the PDB residue number where the
    topology has one, else the residue index + 1)."""
    atoms = topology.atoms() if callable(topology.atoms) else topology.atoms
    labels = []
    for atom in atoms:
        res = atom.residue
        number = getattr(res, "id", None) or getattr(res, "resSeq", None) or res.index + 1
        labels.append(f"{res.name}{number}:{atom.name}")
    return labels


def zmatrix_from_bonds(
    n_atoms: int,
    bonds: Sequence[tuple[int, int]],
    root: int | None = None,
    *,
    allow_rings: bool = False,
    labels: Sequence[str] | None = None,
) -> Tensor:
    """A Z-matrix (n_atoms, 4) long tensor in placement order: rows [i, j, k, l], atom i placed at a bond to j, an
    angle i-j-k and a torsion i-j-k-l, all of j, k, l placed earlier (-1 where the first rows have none).

    Breadth-first over the bond graph from ``root`` (default: the atom with most bonds); j is the atom's BFS parent,
    k the parent's parent (or another placed neighbour of j), l an already placed other neighbour of j where there
    is one (an improper torsion, rigid: hydrogens and branches sit at fixed offsets from their siblings), else a
    neighbour of k (a proper torsion: only rotatable bonds get one, so the flow learns each rotation once).

    Rings are refused: the Z-matrix holds the n_atoms - 1 bonds of a spanning tree, so a ring's closing bond is
    not one of its coordinates; its length follows from the torsions around the ring, which the flow draws
    independently, so samples break the ring (measured on a benzene-like C6H6: the closing C-C bond came out
    0.46 +- 0.09 nm instead of 0.14 nm). A bond graph with a ring raises ``UnsupportedMoleculeError`` (a
    ``ValueError``) naming each ring's atoms (``labels``, e.g. "PRO2:CA", one per atom, else indices; at most four
    rings shown) and pointing to ``AugmentedCouplingFlow``. ``allow_rings=True`` skips that check and builds the
    Z-matrix anyway (the same one as before the check existed): every ring-closing bond is then unconstrained, so
    use it only where that bond does not matter (e.g. a test, or a target without that bond). Acyclic graphs give
    the same Z-matrix either way.
    Raises ``ValueError`` for a disconnected graph or fewer than 3 atoms.
    """
    if n_atoms < 3:
        raise ValueError(f"a Z-matrix needs at least 3 atoms, got {n_atoms}")
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    distinct: set[tuple[int, int]] = set()
    for a, b in bonds:
        if not (0 <= a < n_atoms and 0 <= b < n_atoms) or a == b:
            raise ValueError(f"bond ({a}, {b}) is not a pair of distinct atoms among {n_atoms}")
        neighbours[a].append(b)
        neighbours[b].append(a)
        distinct.add((min(a, b), max(a, b)))
    if root is None:
        root = max(range(n_atoms), key=lambda i: (len(neighbours[i]), -i))
    parent = {root: -1}
    order, queue = [], deque([root])
    while queue:
        i = queue.popleft()
        order.append(i)
        for j in sorted(neighbours[i]):
            if j not in parent:
                parent[j] = i
                queue.append(j)
    if len(order) != n_atoms:
        missing = sorted(set(range(n_atoms)) - set(order))
        raise ValueError(f"the bond graph is disconnected: atoms {missing[:10]} cannot be reached from atom {root}")
    if len(distinct) > n_atoms - 1 and not allow_rings:  # connected: more bonds than a tree has means a ring
        raise UnsupportedMoleculeError(_ring_message(find_rings(n_atoms, sorted(distinct)), labels))
    placed: set[int] = set()

    def pick(candidates: list[int], exclude: set[int]) -> int:
        for c in candidates:
            if c in placed and c not in exclude:
                return c
        return -1

    rows = []
    for i in order:
        j = parent[i]
        k = l = -1
        if j >= 0:
            k = pick([parent[j], *sorted(neighbours[j])], {i, j})
            if k < 0 and len(placed) >= 2:  # j is the root with one placed neighbour so far: use any placed atom
                k = pick(order, {i, j})
        if k >= 0:  # a placed sibling first: the improper torsion i-j-k-sibling is rigid, a proper one is soft
            l = pick([*sorted(neighbours[j]), parent[k], *sorted(neighbours[k])], {i, j, k})
            if l < 0 and len(placed) >= 3:
                l = pick(order, {i, j, k})
        rows.append([i, j, k, l])
        placed.add(i)
    return torch.tensor(rows, dtype=torch.long)


def internal_coordinates(x: Tensor, zmatrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (batch, n_atoms, 3) -> bonds (batch, n-1), angles (batch, n-2), torsions (batch, n-3) of the Z-matrix rows
    1.., 2.., 3.. (length unit of x; radians)."""
    i, j, k, l = zmatrix.T
    bonds = torch.linalg.vector_norm(x[:, i[1:]] - x[:, j[1:]], dim=-1)
    angles = angle(x[:, i[2:]], x[:, j[2:]], x[:, k[2:]])
    torsions = torsion(x[:, i[3:]], x[:, j[3:]], x[:, k[3:]], x[:, l[3:]])
    return bonds, angles, torsions


def place_atoms(bonds: Tensor, angles: Tensor, torsions: Tensor, zmatrix: Tensor) -> Tensor:
    """Inverse of ``internal_coordinates`` in the canonical frame: the first atom at the origin, the second on +z,
    the third in the xz-plane (x > 0). Returns x of shape (batch, n_atoms, 3)."""
    batch, n = bonds.shape[0], zmatrix.shape[0]
    zero = torch.zeros(batch, dtype=bonds.dtype, device=bonds.device)
    pos: list[Tensor | None] = [None] * n
    rows = zmatrix.tolist()
    pos[rows[0][0]] = torch.zeros(batch, 3, dtype=bonds.dtype, device=bonds.device)
    pos[rows[1][0]] = torch.stack([zero, zero, bonds[:, 0]], -1)
    i, j, k, _ = rows[2]
    axis = unit(pos[k] - pos[j])  # the third atom: angle from the j->k axis, in the xz-plane
    perp = torch.stack([axis[:, 2], zero, -axis[:, 0]], -1)  # axis (along +-z) turned by 90 degrees about y
    r, t = bonds[:, 1:2], angles[:, 0:1]
    pos[i] = pos[j] + r * (torch.cos(t) * axis + torch.sin(t) * perp)
    for m, (i, j, k, l) in enumerate(rows[3:]):
        r, t, p = bonds[:, m + 2 : m + 3], angles[:, m + 1 : m + 2], torsions[:, m : m + 1]
        bc = unit(pos[j] - pos[k])
        normal = unit(torch.linalg.cross(pos[k] - pos[l], bc, dim=-1))
        in_plane = torch.linalg.cross(normal, bc, dim=-1)
        local = -torch.cos(t) * bc + torch.sin(t) * (torch.cos(p) * in_plane + torch.sin(p) * normal)
        pos[i] = pos[j] + r * local
    return torch.stack(pos, dim=1)


def _random_rotations(n: int, generator: torch.Generator | None, dtype: torch.dtype, device) -> Tensor:
    """n Haar-uniform rotation matrices (n, 3, 3), det +1 (from unit quaternions)."""
    gen_device = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=gen_device).to(device)
    w, x, y, z = unit(q).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _wrap(t: Tensor) -> Tensor:
    """Angles wrapped into [-pi, pi)."""
    return torch.remainder(t + math.pi, 2 * math.pi) - math.pi


class _MixedSplineCoupling(nn.Module):
    """Splines on the coordinates where ``mask`` is False, conditioned on the others: linear-tail splines on
    [-bound, bound] for ordinary coordinates, circular splines on [-pi, pi) for torsions (``circular``). The
    conditioner sees torsions as (cos, sin), so it is continuous on the circle; its output layer starts at zero."""

    def __init__(self, mask: Tensor, circular: Tensor, hidden: int, n_hidden: int, n_bins: int, bound: float):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("cond_circ", circular[mask])
        self.register_buffer("out_circ", circular[~mask])
        self.bound, self.n_bins = float(bound), n_bins
        n_in = int(mask.sum() + circular[mask].sum())
        self.n_params = n_spline_params(n_bins, "circular")  # 3K: the linear splines use the first 3K - 1
        self.net = zero_output_mlp(n_in, int((~mask).sum()) * self.n_params, hidden, n_hidden)

    def _features(self, c: Tensor) -> Tensor:
        circ = c[:, self.cond_circ]
        return torch.cat([c[:, ~self.cond_circ], torch.cos(circ), torch.sin(circ)], dim=-1)

    def _transform(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        params = self.net(self._features(x[:, self.mask])).reshape(x.shape[0], -1, self.n_params)
        t = x[:, ~self.mask]
        lin, circ = ~self.out_circ, self.out_circ
        out = torch.empty_like(t)
        out[:, lin], ld_lin = rational_quadratic_spline(
            t[:, lin], params[:, lin, :-1], -self.bound, self.bound, "linear", inverse=inverse
        )
        out[:, circ], ld_circ = rational_quadratic_spline(
            t[:, circ], params[:, circ], -math.pi, math.pi, "circular", inverse=inverse
        )
        y = x.clone()
        y[:, ~self.mask] = out
        return y, ld_lin.sum(-1) + ld_circ.sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(y, inverse=True)


class InternalCoordinateFlow(nn.Module):
    """Normalising flow for one molecule on internal coordinates; exact, SE(3)-invariant log q (module docstring).

    zmatrix: (n_atoms, 4) from ``zmatrix_from_bonds``. data: reference configurations (n, n_atoms, 3) in nm (e.g.
    MD frames): they set the standardisation of bonds and angles and the torsion offsets; without data the flow is
    standardised from ``bond_length``/``angle`` guesses (tests). n_layers couplings of n_bins-bin splines with MLP
    conditioners (n_hidden layers of width hidden). Exposes ``sample(n, generator) -> (x, log_q)`` and
    ``log_prob(x)``: x (n, n_atoms, 3) CoM-free in nm, log q (n,) in nats on the CoM-free subspace. Samples whose
    bonds or angles leave their domain (r <= 0, theta outside (0, pi); vanishingly rare) come back as NaN
    coordinates, which every energy here scores +inf, i.e. importance weight 0; the estimators stay exact.
    """

    def __init__(
        self,
        zmatrix: Tensor,
        data: Tensor | None = None,
        n_layers: int = 8,
        hidden: int = 128,
        n_hidden: int = 2,
        n_bins: int = 12,
        bound: float = 5.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        zmatrix = torch.as_tensor(zmatrix, dtype=torch.long)
        if zmatrix.ndim != 2 or zmatrix.shape[1] != 4 or zmatrix.shape[0] < 4:
            raise ValueError(f"zmatrix must have shape (n_atoms >= 4, 4), got {tuple(zmatrix.shape)}")
        self.register_buffer("zmatrix", zmatrix)
        self.n_atoms, self.dim = int(zmatrix.shape[0]), 3
        n = self.n_atoms
        self.n_lin, self.n_circ = 2 * n - 3, n - 3
        d = self.n_lin + self.n_circ
        dtype = torch.get_default_dtype()
        if data is not None:
            data = torch.as_tensor(data, dtype=torch.float64)
            if data.ndim != 3 or data.shape[1:] != (n, 3):
                raise ValueError(f"data must have shape (n, {n}, 3), got {tuple(data.shape)}")
            bonds, angles, torsions = internal_coordinates(data, zmatrix)
            lin = torch.cat([bonds, angles], dim=-1)
            shift, scale = lin.mean(0), lin.std(0).clamp_min(1e-3)
            offset = torch.atan2(torch.sin(torsions).mean(0), torch.cos(torsions).mean(0))
        else:
            shift = torch.cat([torch.full((n - 1,), 0.12), torch.full((n - 2,), 1.9)]).double()
            scale = torch.cat([torch.full((n - 1,), 0.01), torch.full((n - 2,), 0.05)]).double()
            offset = torch.zeros(n - 3, dtype=torch.float64)
        self.shift = nn.Parameter(shift.to(dtype))
        self.log_scale = nn.Parameter(torch.log(scale).to(dtype))
        self.register_buffer("torsion_offset", offset.to(dtype))
        circular = torch.cat([torch.zeros(self.n_lin, dtype=torch.bool), torch.ones(self.n_circ, dtype=torch.bool)])
        self.layers = nn.ModuleList(
            _MixedSplineCoupling(mask, circular, hidden, n_hidden, n_bins, bound)
            for mask in alternating_masks(d, n_layers, seed)
        )

    @classmethod
    def for_topology(
        cls, topology, data: Tensor | None = None, *, allow_rings: bool = False, **kwargs
    ) -> InternalCoordinateFlow:
        """Build the Z-matrix from an openmm or mdtraj topology's bonds; other arguments as the constructor.

        A molecule with a ring (proline, phenyl, ...) raises ``UnsupportedMoleculeError`` naming each ring's atoms
        by residue and name, e.g. "PRO2:N, CD, CG, CB, CA (indices 6, 7, 10, 13, 16)" for Ace-Pro-Nme;
        ``allow_rings`` as in ``zmatrix_from_bonds`` (True: ring-closing bonds unconstrained, samples break rings).
        """
        bonds = [(a.index, b.index) for a, b in topology.bonds()] if callable(topology.bonds) else None
        if bonds is None:
            bonds = [(a.index, b.index) for a, b in topology.bonds]
        n_atoms = topology.getNumAtoms() if hasattr(topology, "getNumAtoms") else topology.n_atoms
        labels = atom_labels(topology)
        return cls(zmatrix_from_bonds(n_atoms, bonds, allow_rings=allow_rings, labels=labels), data, **kwargs)

    # internal coordinates <-> latent
    def _to_latent(self, ic: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised internal coordinates ic (batch, d) -> latent z and log |dz/dic|."""
        lin = (ic[:, : self.n_lin] - self.shift) * torch.exp(-self.log_scale)
        z = torch.cat([lin, _wrap(ic[:, self.n_lin :] - self.torsion_offset)], dim=-1)
        log_det = -self.log_scale.sum().expand(ic.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def _from_latent(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = self.log_scale.sum().expand(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        lin = z[:, : self.n_lin] * torch.exp(self.log_scale) + self.shift
        return torch.cat([lin, _wrap(z[:, self.n_lin :] + self.torsion_offset)], dim=-1), log_det

    def _base_log_prob(self, z: Tensor) -> Tensor:
        lin = z[:, : self.n_lin]
        return (
            -0.5 * lin.pow(2).sum(-1) - 0.5 * self.n_lin * math.log(2 * math.pi) - self.n_circ * math.log(2 * math.pi)
        )

    def _log_jacobian(self, bonds: Tensor, angles: Tensor) -> Tensor:
        """log of the factor between q_ic and the density on the CoM-free subspace (module docstring)."""
        return (
            2 * torch.log(bonds).sum(-1)
            + torch.log(torch.sin(angles)).sum(-1)
            + math.log(8 * math.pi**2)
            - 1.5 * math.log(self.n_atoms)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) in nats on the CoM-free subspace, x (batch, n_atoms, 3) in nm (translation ignored) -> (batch,)."""
        x = check_positions(x, self.n_atoms, 3, self.shift)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        bonds, angles, torsions = internal_coordinates(x, self.zmatrix)
        z, log_det = self._to_latent(torch.cat([bonds, angles, torsions], dim=-1))
        return self._base_log_prob(z) + log_det - self._log_jacobian(bonds, angles)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n configurations x (n, n_atoms, 3), CoM-free, nm, and log q(x) (n,), nats; uniformly rotated."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ref = self.shift
        if n == 0:
            return ref.new_zeros(0, self.n_atoms, 3), ref.new_zeros(0)
        gen_device = generator.device if generator is not None else ref.device
        lin = torch.randn(n, self.n_lin, generator=generator, dtype=ref.dtype, device=gen_device)
        circ = (torch.rand(n, self.n_circ, generator=generator, dtype=ref.dtype, device=gen_device) * 2 - 1) * math.pi
        z = torch.cat([lin, circ], dim=-1).to(ref.device)
        ic, log_det = self._from_latent(z)
        bonds, angles = ic[:, : self.n_atoms - 1], ic[:, self.n_atoms - 1 : self.n_lin]
        valid = (bonds > 0).all(-1) & (angles > 0).all(-1) & (angles < math.pi).all(-1)
        safe_bonds = torch.where(valid[:, None], bonds, torch.ones_like(bonds))
        safe_angles = torch.where(valid[:, None], angles, torch.full_like(angles, 2.0))
        x = place_atoms(safe_bonds, safe_angles, ic[:, self.n_lin :], self.zmatrix)
        x = x - x.mean(dim=1, keepdim=True)
        x = x @ _random_rotations(n, generator, ref.dtype, ref.device).transpose(-1, -2)
        x = torch.where(valid[:, None, None], x, torch.full_like(x, math.nan))
        log_q = self._base_log_prob(z) - log_det - self._log_jacobian(safe_bonds, safe_angles)
        return x, log_q
