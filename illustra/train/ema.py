"""Exponential moving average of the weights (airbench / timm's ModelEmaV2 idea)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Trick: the EMA of the weights (and a copy of the buffers) is what is evaluated and shipped.

    The decay warms up as min(decay, (1 + step) / (10 + step)), so a short run's average is not
    dominated by the random initial weights (at 0.998 the average spans ~500 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.state.items()})

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the averaged weights, in eval mode (the model itself is untouched)."""
        twin = copy.deepcopy(model)
        self.copy_to(twin)
        return twin.eval()
