import pytest
import torch

from bgflow_se3.flow.egnn import EGNN
from bgflow_se3.flow.geometry import random_rotation


@pytest.mark.parametrize("dim,n_mult", [(3, 1), (3, 2), (2, 1)])
def test_egnn_is_e3_equivariant_and_permutation_equivariant(dim, n_mult, generator):
    torch.manual_seed(0)
    types = torch.tensor([0, 1, 0, 0, 1])
    net = EGNN(n_types=2, n_mult=n_mult, n_vectors=3, hidden=16, n_layers=2, coord_scale=1.0).double()
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


def test_egnn_rejects_wrong_multiplicity():
    net = EGNN(n_types=1, n_mult=2, n_vectors=1, hidden=8, n_layers=1)
    with pytest.raises(ValueError, match="multiplicities"):
        net(torch.randn(1, 3, 1, 3), torch.zeros(3, dtype=torch.long))
