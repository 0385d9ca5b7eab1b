"""MixStyle: mix the feature statistics of pairs of images in a batch, so the network stops keying on style.

Zhou, Yang, Qiao & Xiang, "Domain Generalization with MixStyle" (ICLR 2021): in the early blocks a
CNN's per-channel mean and standard deviation of a feature map carry the image's style (palette,
line weight, shading), the normalised map its content. During training, with probability `p` per
block and batch, each image's statistics are replaced by a mix with those of a random partner
(weight ~ Beta(alpha, alpha)); the content is kept. No parameters, no cost at prediction time:
the hooks do nothing in eval mode, and the weights file is the plain classifier's.

The draws (which blocks mix, partners, weights) are made per batch from the run's generator in
`draw`, so a run is reproducible and resumes exactly; `apply` then mixes inside the forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from scipy.special import betaincinv
from torch import nn

from illustra.train.random import rand

EPS = 1e-6


def mix_statistics(features: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each (B, C, H, W) map normalised by its own per-channel statistics, rescaled by the mix
    `weight * own + (1 - weight) * partner's` (statistics detached, as in the paper)."""
    mean = features.mean(dim=(2, 3), keepdim=True).detach()
    std = (features.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    weight = weight.to(features.dtype).view(-1, 1, 1, 1)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (features - mean) / std * mixed_std + mixed_mean


class MixStyle:
    """Forward hooks on the first `blocks` blocks of an encoder's body (see module docstring)."""

    def __init__(self, encoder: nn.Module, p: float, alpha: float = 0.1, blocks: int = 2) -> None:
        self.p, self.alpha = float(p), float(alpha)
        self.blocks = list(encoder.body)[:max(0, int(blocks))]
        self._plan: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self._handles = [module.register_forward_hook(self._hook(i)) for i, module in enumerate(self.blocks)]

    def draw(self, batch: int, gen: torch.Generator, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per block: None (no mixing this batch) or (partner index, weight per image), from `gen`."""
        plan: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for _ in self.blocks:
            if rand(1, gen, like).item() >= self.p or batch < 2:
                plan.append(None)
                continue
            partner = rand(batch, gen, like).argsort()
            uniform = rand(batch, gen, like).double().cpu().numpy().clip(1e-6, 1 - 1e-6)
            weight = torch.from_numpy(betaincinv(self.alpha, self.alpha, uniform)).float().to(like.device)
            plan.append((partner, weight))
        return plan

    @contextmanager
    def apply(self, plan: list[tuple[torch.Tensor, torch.Tensor] | None] | None):
        """Within this block, the hooked blocks mix by `plan` (training mode only)."""
        self._plan = plan
        try:
            yield
        finally:
            self._plan = None

    def _hook(self, position: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor):
            if not module.training or self._plan is None or self._plan[position] is None:
                return None
            partner, weight = self._plan[position]
            if len(partner) != len(output):  # a batch that is not the drawn one (never in training)
                return None
            return mix_statistics(output, partner, weight)
        return hook

    def remove(self) -> None:
        """Take the hooks off (the encoder is then as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
