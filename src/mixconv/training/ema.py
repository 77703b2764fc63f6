"""Exponential moving average of model weights (BatchNorm buffers included)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """A frozen copy of the model whose weights follow ``ema = d * ema + (1 - d) * w`` after each step.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ``num_updates``), so short runs
    are not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach().to(ema_v.dtype), 1 - d)
            else:
                ema_v.copy_(v)
        self.num_updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
