"""Memory of the augmented flow: no graph on evaluation paths, chunked marginal log q, gradient checkpointing."""

import math
from collections.abc import Callable

import pytest
import torch

from bgflow_se3 import AugmentedCouplingFlow
from bgflow_se3.energy import DoubleWellEnergy
from bgflow_se3.flow.frames import remove_com
from bgflow_se3.train import marginal_nll, sample_with_energies
from tests.flow.test_couplings import randomise


def make_flow(n_atoms=5, dim=3, n_blocks=2, hidden=8, egnn_layers=1, projection="spherical", **kwargs):
    torch.manual_seed(3)
    types = [i % 2 for i in range(n_atoms)]
    flow = AugmentedCouplingFlow(
        n_atoms, dim, types, projection=projection, n_blocks=n_blocks, hidden=hidden, egnn_layers=egnn_layers, **kwargs
    ).double()
    randomise(flow, 0.05)
    return flow


def configurations(flow, batch, generator):
    return remove_com(torch.randn(batch, flow.n_atoms, flow.dim, generator=generator, dtype=torch.float64))


def saved_tensor_bytes(module: torch.nn.Module, fn: Callable[[], torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs (parameters excluded).

    The sum over unique storages of the tensors packed by ``saved_tensors_hooks``: the memory a graph holds on to
    between the forward pass and backward. Returns (bytes, fn's output).
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


# ---------------------------------------------------------------------------------------------- no silent graphs
def test_marginal_log_prob_builds_no_graph_unless_asked(generator):
    flow = make_flow()
    x = configurations(flow, 3, generator)
    assert torch.is_grad_enabled()
    n_bytes, lp = saved_tensor_bytes(flow, lambda: flow.log_prob(x, n_samples=4, generator=generator))
    assert n_bytes == 0 and lp.grad_fn is None and not lp.requires_grad
    with torch.no_grad():  # no_grad wins over requires_grad=True
        assert flow.log_prob(x, n_samples=4, generator=generator, requires_grad=True).grad_fn is None
    # opt in: parameter gradients
    n_bytes, lp = saved_tensor_bytes(flow, lambda: flow.log_prob(x, 4, generator, requires_grad=True))
    assert n_bytes > 0 and lp.grad_fn is not None
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    # an x that requires grad asks for gradients in x (e.g. HMC on the marginal)
    xg = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(flow.log_prob(xg, 4, generator).sum(), xg)
    assert grad_x.shape == x.shape and grad_x.abs().sum() > 0


def test_evaluation_helpers_build_no_graph(generator):
    flow = make_flow(n_atoms=4, dim=2)
    energy = DoubleWellEnergy().double()
    n_bytes, samples = saved_tensor_bytes(flow, lambda: sample_with_energies(flow, energy, 6, generator, 4))
    assert n_bytes == 0 and samples.x.shape == (6, 4, 2) and math.isfinite(samples.log_q.sum())
    x = torch.as_tensor(samples.x)
    n_bytes, nll = saved_tensor_bytes(flow, lambda: marginal_nll(flow, x, generator, n_samples=3, batch_size=4))
    assert n_bytes == 0 and math.isfinite(nll)


def test_sample_stays_differentiable_in_grad_mode(generator):
    flow = make_flow()
    s = flow.sample(3, generator)
    assert s.log_q.grad_fn is not None
    with torch.no_grad():
        assert flow.sample(3, generator).log_q.grad_fn is None


# ---------------------------------------------------------------------------------------------- bounded chunks
def test_chunked_marginal_log_prob_equals_unchunked(generator):
    flow = make_flow()
    x = configurations(flow, 5, generator)
    n = 7  # 35 (configuration, draw) pairs
    seen: list[int] = []
    hook = flow.couplings_a[0].egnn.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    full = flow.log_prob(x, n, torch.Generator().manual_seed(5), chunk_size=35)
    assert seen == [35]
    for chunk_size in (1, 4, 8, 34):
        seen.clear()
        lp = flow.log_prob(x, n, torch.Generator().manual_seed(5), chunk_size=chunk_size)
        assert max(seen) == chunk_size and sum(seen) == 35  # the flow never sees more than chunk_size rows
        torch.testing.assert_close(lp, full, atol=1e-12, rtol=0)
    hook.remove()
    # the same draws and the same estimate as the plain importance-sampling formula
    x_rep = x.repeat_interleave(n, 0)
    a = flow.sample_aug_target(x_rep, torch.Generator().manual_seed(5))
    with torch.no_grad():
        log_w = (flow.log_prob_joint(x_rep, a) - flow.log_prob_aug_target(a, x_rep)).view(5, n)
    torch.testing.assert_close(full, torch.logsumexp(log_w, 1) - math.log(n), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="chunk_size"):
        flow.log_prob(x, n, chunk_size=0)


def test_chunked_marginal_log_prob_gradients_equal_unchunked(generator):
    flow = make_flow()
    x = configurations(flow, 2, generator)
    grads = []
    for chunk_size in (2, 6):
        flow.zero_grad()
        lp = flow.log_prob(x, 3, torch.Generator().manual_seed(5), chunk_size=chunk_size, requires_grad=True)
        lp.sum().backward()
        grads.append([p.grad.clone() for p in flow.parameters()])
    for g_chunked, g_full in zip(*grads):
        torch.testing.assert_close(g_chunked, g_full, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("projection", ["spherical", "vector"])
def test_gradient_checkpointing_changes_neither_values_nor_gradients(projection, generator):
    plain = make_flow(projection=projection)
    ckpt = make_flow(projection=projection, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = configurations(plain, 4, generator)
    a = plain.sample_aug_target(x, generator)
    results = []
    for flow in (plain, ckpt):  # density direction (ML, FAB) and sampling direction (reverse KL)
        log_q, aux = flow.log_prob_joint_and_aux(x, a)
        s = flow.sample(4, torch.Generator().manual_seed(9))
        (log_q.sum() + aux.sum() + s.log_q.sum() + s.x.pow(2).sum()).backward()
        results.append((log_q.detach(), s.log_q.detach(), [p.grad for p in flow.parameters()]))
    (lq_p, ls_p, g_p), (lq_c, ls_c, g_c) = results
    torch.testing.assert_close(lq_c, lq_p, atol=1e-10, rtol=0)
    torch.testing.assert_close(ls_c, ls_p, atol=1e-10, rtol=0)
    assert all(g is not None for g in g_c)
    for gc, gp in zip(g_c, g_p):
        torch.testing.assert_close(gc, gp, atol=1e-10, rtol=0)


def test_gradient_checkpointing_saves_much_less(generator):
    sizes = dict(n_atoms=10, n_blocks=4, hidden=16, egnn_layers=2, projection="vector")
    plain, ckpt = make_flow(**sizes), make_flow(**sizes, gradient_checkpointing=True)
    x = configurations(plain, 8, generator)
    a = plain.sample_aug_target(x, generator)
    saved = {}
    for name, flow in (("plain", plain), ("ckpt", ckpt)):
        saved[name], log_q = saved_tensor_bytes(flow, lambda flow=flow: flow.log_prob_joint(x, a))
        log_q.sum().backward()
    assert saved["ckpt"] < 0.1 * saved["plain"], saved
    with torch.no_grad():  # no effect without grad
        torch.testing.assert_close(ckpt.log_prob_joint(x, a), plain.log_prob_joint(x, a), atol=1e-10, rtol=0)


def test_graph_estimate_matches_the_saved_tensors(generator):
    # The guard's per-configuration estimate (all saved tensors, batch 3 minus batch 1) against the distinct
    # storages saved for a batch of 64: within a factor of 2 (shared storages are counted once here).
    flow = make_flow()
    per_config = flow.graph_bytes_per_configuration()
    x = configurations(flow, 64, generator)
    a = flow.sample_aug_target(x, generator)
    saved, _ = saved_tensor_bytes(flow, lambda: flow.log_prob_joint(x, a))
    assert 0.5 < 64 * per_config / saved < 2.0


def test_memory_guard_raises_before_allocating_and_names_the_size(generator, monkeypatch):
    import bgflow_se3.memory as memory
    from bgflow_se3.errors import InsufficientMemoryError

    flow = make_flow(n_blocks=4)
    per_config = flow.graph_bytes_per_configuration()
    room = memory.FreeMemory(int(100 * per_config), "a test limit")  # room for ~80
    monkeypatch.setattr(memory, "available_memory", lambda device: room)
    x = configurations(flow, 200, generator)
    with pytest.raises(InsufficientMemoryError, match=r"200 configurations .* would need about .* only"):
        flow.sample(200)
    with pytest.raises(InsufficientMemoryError, match="log q"):
        flow.log_prob(x[:40], n_samples=4, requires_grad=True)  # 160 (configuration, draw) pairs in one graph
    with torch.no_grad():  # no graph, chunked: fits whatever n
        assert flow.sample(200).x.shape == (200, flow.n_atoms, flow.dim)
    assert flow.log_prob(x, n_samples=4).shape == (200,)
    flow.gradient_checkpointing = True  # one block's graph at a time: 200 / 4 blocks fits
    flow.sample(200).log_q.sum().backward()


def test_sampling_without_grad_in_chunks_gives_the_same_draws():
    flow = make_flow()
    with torch.no_grad():
        flow.sample_chunk_size = 7
        chunked = flow.sample(30, generator=torch.Generator().manual_seed(5))
        flow.sample_chunk_size = 1024
        whole = flow.sample(30, generator=torch.Generator().manual_seed(5))
    for c, w in zip(chunked, whole):
        torch.testing.assert_close(c, w, rtol=0, atol=1e-12)


def test_aldp_reference_size_keeps_at_most_20_mb_per_configuration():
    """Issue 16's budget: log q + backward at the aldp reference size (22 atoms, 8 blocks, EGNN 3 x 32, vector,
    float32) saves <= 20 MB per configuration for backward (the dense EGNN with LayerNorm on edges kept 43 MB;
    the pair EGNN keeps about 10)."""
    torch.manual_seed(0)
    types = [0, 1, 0, 0, 2, 3, 1, 0, 1, 0, 0, 0, 2, 3, 1, 0, 1, 0, 0, 0, 0, 0]
    flow = AugmentedCouplingFlow(
        22, 3, types, projection="vector", n_blocks=8, hidden=32, egnn_layers=3, length_scale=0.2
    )
    per_config = flow.graph_bytes_per_configuration()
    assert 1e6 < per_config <= 20e6, per_config
