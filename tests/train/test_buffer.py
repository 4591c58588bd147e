import itertools
import math

import pytest
import torch
from scipy import stats

from bgflow_se3.train import PrioritisedReplayBuffer

WEIGHTS = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4], dtype=torch.float64)


def filled(log_w, n_aug=1):
    n = len(log_w)
    buffer = PrioritisedReplayBuffer(max_length=n, min_length=1)
    x = torch.arange(n, dtype=torch.float64)[:, None, None].expand(n, 3, 2).clone()
    a = torch.zeros(n, n_aug, 3, 2, dtype=torch.float64)
    buffer.add(x, a, log_w, torch.zeros(n, dtype=torch.float64))
    return buffer


def plackett_luce(w, order):
    p, left = 1.0, 1.0
    for i in order:
        p *= w[i] / left
        left -= w[i]
    return p


def test_sampling_without_replacement_follows_the_weights(generator):
    """Ordered pairs (first, second draw) follow sequential sampling without replacement proportional to w,
    with weights of order exp(-1e4) that underflow to 0 in any dtype."""
    buffer = filled(torch.log(WEIGHTS) - 1e4)
    n_draws = 3000
    counts = {pair: 0 for pair in itertools.permutations(range(5), 2)}
    for _ in range(n_draws):
        batch = buffer.sample(2, generator)
        assert torch.isfinite(batch.log_w).all() and batch.indices[0] != batch.indices[1]
        torch.testing.assert_close(batch.x[:, 0, 0], batch.indices.double())  # rows match indices
        counts[tuple(batch.indices.tolist())] += 1
    w = (WEIGHTS / WEIGHTS.sum()).tolist()
    expected = [n_draws * plackett_luce(w, pair) for pair in counts]
    result = stats.chisquare(list(counts.values()), expected)
    assert result.pvalue > 1e-3, result


def test_tiny_weights_draw_exactly_like_unit_weights():
    log_w = torch.log(WEIGHTS)
    a = filled(log_w).sample(3, torch.Generator().manual_seed(3))
    b = filled(log_w - 1e4).sample(3, torch.Generator().manual_seed(3))
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(b.log_w, log_w[b.indices] - 1e4)


def test_ring_drop_adjust_and_state(generator):
    buffer = PrioritisedReplayBuffer(max_length=4, min_length=3)
    x = torch.arange(6, dtype=torch.float64)[:, None, None].expand(6, 2, 2).clone()
    a = torch.zeros(6, 0, 2, 2, dtype=torch.float64)  # non-augmented flows: n_aug = 0
    log_w = torch.tensor([0.0, 1.0, math.nan, 2.0, -math.inf, 3.0], dtype=torch.float64)
    assert buffer.add(x[:2], a[:2], log_w[:2], torch.zeros(2)) == 0
    assert not buffer.ready
    with pytest.raises(RuntimeError, match="min_length"):
        buffer.sample(1, generator)
    assert buffer.add(x[2:], a[2:], log_w[2:], torch.zeros(4)) == 2  # NaN and -inf weights dropped
    assert len(buffer) == 4 and buffer.ready
    assert buffer.add(x[5:], a[5:], log_w[5:], torch.zeros(1)) == 0  # overwrites the oldest (x = 0)
    assert sorted(buffer.x[:, 0, 0].tolist()) == [1.0, 3.0, 5.0, 5.0]
    batch = buffer.sample(2, generator)
    buffer.adjust(torch.tensor([0.5, math.nan]), torch.tensor([-1.0, -2.0]), batch.indices)
    assert buffer.log_w[batch.indices[0]] == batch.log_w[0] + 0.5 and buffer.log_q_old[batch.indices[0]] == -1.0
    assert buffer.log_w[batch.indices[1]] == -math.inf  # non-finite adjustment: never drawn again
    with pytest.raises(ValueError, match="weight > 0"):
        buffer.sample(4, generator)
    other = PrioritisedReplayBuffer(1)
    other.load_state_dict(buffer.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(other.sample(3, g1).indices, buffer.sample(3, g2).indices)


def test_sample_batches_are_disjoint(generator):
    buffer = filled(torch.randn(64, generator=generator, dtype=torch.float64))
    batches = buffer.sample_batches(8, 4, generator)
    indices = torch.cat([b.indices for b in batches])
    assert len(batches) == 4 and len(set(indices.tolist())) == 32
