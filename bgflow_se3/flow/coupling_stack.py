"""Coupling flows on flat vectors: a learned standardisation followed by coupling layers, standard normal base.

Shared by the non-equivariant RealNVP baseline (affine couplings on CoM-free subspace coordinates) and
``GroupAveragedFlow`` (spline couplings on canonical-frame internal coordinates). Vectors have shape (batch, d);
``forward`` maps data to latent, ``inverse`` latent to data, each with log |det| of shape (batch,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CouplingStack", "alternating_masks", "zero_output_mlp"]


def zero_output_mlp(d_in: int, d_out: int, hidden: int, n_hidden: int) -> nn.Sequential:
    """SiLU MLP d_in -> d_out with n_hidden layers of width ``hidden`` and a zero-initialised output layer (so a
    coupling built on it starts as the identity)."""
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.SiLU()]
    for _ in range(n_hidden - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    last = nn.Linear(hidden, d_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def alternating_masks(d: int, n_layers: int, seed: int = 0) -> list[Tensor]:
    """Conditioning masks (True = conditioned on, left unchanged) of n_layers couplings on d coordinates: each pair
    of layers splits a fresh random permutation (seeded) into halves and transforms one half, then the other."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for k in range(n_layers):
        if k % 2 == 0:
            order = torch.randperm(d, generator=gen)
        mask = torch.zeros(d, dtype=torch.bool)
        mask[order[: d // 2] if k % 2 == 0 else order[d // 2 :]] = True
        masks.append(mask)
    return masks


class CouplingStack(nn.Module):
    """Data y (batch, d) -> z = couplings((y - shift) exp(-log_scale)), z ~ N(0, I_d).

    layers: coupling modules with ``layer(x) -> (y, log_det)`` and ``layer.inverse(y) -> (x, log_det)``.
    shift, log_scale: initial values (d,) of the learned data-side standardisation.
    """

    def __init__(self, layers: list[nn.Module], shift: Tensor, log_scale: Tensor) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shift = nn.Parameter(shift.to(torch.get_default_dtype()))
        self.log_scale = nn.Parameter(log_scale.to(torch.get_default_dtype()))

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> latent: z and log |det dz/dy|, shapes (batch, d) and (batch,)."""
        z = (y - self.shift) * torch.exp(-self.log_scale)
        log_det = -self.log_scale.sum().expand(y.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent -> data: y and log |det dy/dz|, shapes (batch, d) and (batch,)."""
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z * torch.exp(self.log_scale) + self.shift, log_det + self.log_scale.sum()

    @staticmethod
    def normal_log_prob(z: Tensor) -> Tensor:
        """log N(z; 0, I) in nats, (batch, d) -> (batch,)."""
        return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def draw_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n standard normal latent vectors (n, d) in the parameters' dtype and device (drawn on the generator's)."""
        ref = self.shift
        device = generator.device if generator is not None else ref.device
        return torch.randn(n, ref.shape[0], generator=generator, dtype=ref.dtype, device=device).to(ref.device)
