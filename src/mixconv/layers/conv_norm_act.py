"""Convolution followed by BatchNorm and an activation."""
from __future__ import annotations

import torch
from torch import nn

from .activations import create_act


class ConvNormAct(nn.Module):
    """``conv -> BatchNorm2d -> act`` around any conv module that exposes ``out_channels``."""

    def __init__(self, conv: nn.Module, act: str | None = "relu", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(int(conv.out_channels), eps=bn_eps, momentum=bn_momentum)
        self.act = create_act(act)

    @property
    def out_channels(self) -> int:
        return self.bn.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
