import math

import pytest
import torch

from bgflow_se3.flow.egnn import EGNN, Pairs, _orthogonalise_frame_weights
from bgflow_se3.flow.frames import random_rotation


@pytest.mark.parametrize("dim,n_mult,frame_group", [(3, 1, None), (3, 2, None), (2, 1, None), (3, 2, 3)])
def test_egnn_is_e3_equivariant_and_permutation_equivariant(dim, n_mult, frame_group, generator):
    torch.manual_seed(0)
    types = torch.tensor([0, 1, 0, 0, 1])
    net = EGNN(
        n_types=2, n_mult=n_mult, n_vectors=3, hidden=16, n_layers=2, coord_scale=1.0, frame_group=frame_group
    ).double()
    pos = torch.randn(4, 5, n_mult, dim, generator=generator, dtype=torch.float64)
    vec, feat = net(pos, types)
    assert vec.shape == (4, 5, 3, dim) and feat.shape == (4, 5, 16)
    assert vec.abs().mean() > 1e-3  # not trivially zero
    for reflect in (False, True):
        rot = random_rotation(dim, generator, reflect=reflect)
        shift = torch.randn(4, 1, 1, dim, generator=generator, dtype=torch.float64)
        vec_r, feat_r = net(pos @ rot.T + shift, types)
        torch.testing.assert_close(vec_r, vec @ rot.T, atol=1e-10, rtol=0)
        torch.testing.assert_close(feat_r, feat, atol=1e-10, rtol=0)
    perm = torch.tensor([3, 1, 2, 0, 4])  # swaps atoms 0 and 3, both type 0
    vec_p, feat_p = net(pos[:, perm], types[perm])
    torch.testing.assert_close(vec_p, vec[:, perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(feat_p, feat[:, perm], atol=1e-10, rtol=0)


def test_frame_weights_are_decorrelated_and_frames_stay_apart(generator):
    """Bias-dominated neighbour weights (randomised network) made both frame vectors point along the neighbour
    average: nearly collinear, an ill-conditioned frame. With frame_group their weights are orthogonal."""
    pairs = Pairs(5, torch.float64, torch.device("cpu"))
    # (P, B, V, M) weights of each pair for its first and its second atom, all dominated by one bias: collinear
    w_ij = torch.randn(10, 2, 6, 2, generator=generator, dtype=torch.float64) + 3.0
    w_ji = torch.randn(10, 2, 6, 2, generator=generator, dtype=torch.float64) + 3.0
    o_ij, o_ji = (t.reshape(10, 2, 2, 3, 2) for t in _orthogonalise_frame_weights(w_ij, w_ji, pairs, 3))
    for out, w in ((o_ij, w_ij), (o_ji, w_ji)):  # origin and first vector kept
        torch.testing.assert_close(out[..., :2, :], w.reshape(10, 2, 2, 3, 2)[..., :2, :], atol=0, rtol=0)
    # per atom, over its neighbours and the multiplicities: vector 2's weights orthogonal to vector 1's
    inner = pairs.to_nodes((o_ij[..., 1, :] * o_ij[..., 2, :]).sum(-1), (o_ji[..., 1, :] * o_ji[..., 2, :]).sum(-1))
    assert inner.abs().max() < 1e-10
    before = pairs.to_nodes(
        (w_ij.reshape(10, 2, 2, 3, 2)[..., 1, :] * w_ij.reshape(10, 2, 2, 3, 2)[..., 2, :]).sum(-1),
        (w_ji.reshape(10, 2, 2, 3, 2)[..., 1, :] * w_ji.reshape(10, 2, 2, 3, 2)[..., 2, :]).sum(-1),
    )
    assert before.abs().min() > 1.0  # the test input was far from orthogonal
    pos = torch.randn(64, 5, 1, 3, generator=generator, dtype=torch.float64)
    cos = {}
    for group in (None, 3):
        torch.manual_seed(3)
        net = EGNN(n_types=1, n_mult=1, n_vectors=3, hidden=16, n_layers=1, frame_group=group).double()
        with torch.no_grad():
            net.vec_edge.bias.add_(2.0)  # every neighbour weight dominated by the same bias
        vec, _ = net(pos, torch.zeros(5, dtype=torch.long))
        v1, v2 = vec[..., 1, :], vec[..., 2, :]
        cos[group] = ((v1 * v2).sum(-1) / (v1.norm(dim=-1) * v2.norm(dim=-1))).abs()
    assert cos[None].median() > 0.99  # the failure mode
    assert cos[3].median() < 0.9, cos[3].median()


def test_egnn_rejects_wrong_multiplicity():
    net = EGNN(n_types=1, n_mult=2, n_vectors=1, hidden=8, n_layers=1)
    with pytest.raises(ValueError, match="multiplicities"):
        net(torch.randn(1, 3, 1, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dim", [2, 3])
def test_egnn_vectors_do_not_vanish_when_neighbours_are_equidistant(dim):
    # equilateral triangle (2D) / regular tetrahedron (3D), equal types: by symmetry each node's output vectors
    # must be radial; they must still have length O(1), or the couplings cannot move atoms apart (DW4 stalls)
    torch.manual_seed(0)
    if dim == 2:
        angles = torch.arange(3, dtype=torch.float64) * 2 * math.pi / 3
        pos = torch.stack([angles.cos(), angles.sin()], dim=-1)
    else:
        pos = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    n = len(pos)
    net = EGNN(n_types=1, n_mult=1, n_vectors=3, hidden=16, n_layers=1).double()
    vec, _ = net(pos[None, :, None], torch.zeros(n, dtype=torch.long))  # (1, n, 3, dim)
    radial = pos / pos.norm(dim=-1, keepdim=True)
    along = (vec[0] * radial[:, None]).sum(-1)  # (n, 3)
    torch.testing.assert_close(vec[0], along[..., None] * radial[:, None], atol=1e-8, rtol=0)  # radial only
    assert (along.abs() > 0.1).all(), along


def test_indexed_pairs_match_the_incidence_matrices(generator):
    """The index arithmetic of compiled no-grad code moves the same values between atoms and pairs as the GEMMs."""
    n = 6
    gemm, indexed = (Pairs(n, torch.float64, torch.device("cpu"), indexed=flag) for flag in (False, True))
    nodes, other = (torch.randn(n, 3, 2, generator=generator, dtype=torch.float64) for _ in range(2))
    at_i, at_j = (torch.randn(n * (n - 1) // 2, 3, 2, generator=generator, dtype=torch.float64) for _ in range(2))
    for name, args in [
        ("sum", (nodes,)),
        ("diff", (nodes,)),
        ("ends", (nodes, other)),
        ("to_nodes", (at_i,)),
        ("to_nodes", (at_i, at_j)),
        ("to_nodes_antisymmetric", (at_i,)),
    ]:
        torch.testing.assert_close(getattr(indexed, name)(*args), getattr(gemm, name)(*args), atol=1e-12, rtol=0)
    # by definition: atom 2 of 6 is the second atom of pairs (0, 2), (1, 2) and the first of (2, 3), (2, 4), (2, 5)
    pair = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(gemm.i, gemm.j))}
    expected = at_j[pair[0, 2]] + at_j[pair[1, 2]] + sum(at_i[pair[2, k]] for k in (3, 4, 5))
    torch.testing.assert_close(indexed.to_nodes(at_i, at_j)[2], expected, atol=1e-12, rtol=0)


def test_egnn_with_indexed_pairs_gives_the_same_outputs(monkeypatch, generator):
    """The EGNN as traced by torch.compile without gradients (indexed pairs) equals the eager GEMM path."""
    torch.manual_seed(0)
    net = EGNN(n_types=2, n_mult=2, n_vectors=3, hidden=16, n_layers=2, coord_scale=1.0, frame_group=3).double()
    pos = torch.randn(4, 5, 2, 3, generator=generator, dtype=torch.float64)
    types = torch.tensor([0, 1, 0, 0, 1])
    with torch.no_grad():
        expected = net(pos, types)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = net(pos, types)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=0)
