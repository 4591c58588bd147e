import pytest
import torch

from bgflow_se3.flow import InternalCoordinateFlow
from bgflow_se3.simulate.pretrained import (
    PretrainedModelMismatch,
    load_pretrained_aldp_flow,
    pretrained_path,
    save_pretrained_aldp_flow,
)
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import is_l_form


def test_the_shipped_flow_loads_matches_the_code_and_records_its_provenance():
    flow, provenance = load_pretrained_aldp_flow("implicit")
    assert isinstance(flow, InternalCoordinateFlow) and flow.n_atoms == 22
    for key in ("command", "commit", "machine", "wall_s", "metrics", "data"):
        assert key in provenance, key
    assert pretrained_path("implicit").stat().st_size < 8e6  # a few MB in the package
    with torch.no_grad():
        x, log_q = flow.double().sample(256, torch.Generator().manual_seed(0))
    assert is_l_form(x).double().mean() > 0.9  # trained on L data: it proposes the L molecule
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-8, rtol=0)


def test_a_changed_model_fails_loudly(tmp_path):
    aldp = load_aldp("vacuum")
    data = torch.tensor(aldp.positions_nm)[None] + 0.002 * torch.randn(8, 22, 3, dtype=torch.float64)
    config = dict(n_layers=2, hidden=8, n_bins=4)
    flow = InternalCoordinateFlow.for_topology(aldp.topology, data=data, **config)
    path = save_pretrained_aldp_flow(flow, config, {"commit": "test"}, tmp_path / "flow.pt")
    load_pretrained_aldp_flow(path=path)  # round trip
    payload = torch.load(path, weights_only=False)
    payload["fingerprint_log_q"] = payload["fingerprint_log_q"] + 1e-3  # as if the code computed another density
    torch.save(payload, path)
    with pytest.raises(PretrainedModelMismatch, match="fingerprint"):
        load_pretrained_aldp_flow(path=path)
    payload["config"] = dict(config, hidden=16)  # as if the architecture changed
    torch.save(payload, path)
    with pytest.raises(PretrainedModelMismatch, match="no longer fits"):
        load_pretrained_aldp_flow(path=path)
    with pytest.raises(FileNotFoundError, match="pretrain_flow.py"):
        load_pretrained_aldp_flow(path=tmp_path / "missing.pt")
