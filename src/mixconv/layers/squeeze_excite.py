"""Squeeze-and-excitation (Hu et al., 2018) as used by MnasNet/MixNet."""
from __future__ import annotations

import torch
from torch import nn

from mixconv.layers.activations import create_act


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 reduce (with bias), activation, 1x1 expand (with bias), sigmoid gate.

    Args:
        channels: channels of the tensor being gated.
        rd_channels: width of the bottleneck (MixNet: the block's *input* channels / reduction ratio).
        act: activation between the two 1x1 convs, by name.
    """

    def __init__(self, channels: int, rd_channels: int, act: str = "relu") -> None:
        super().__init__()
        if rd_channels < 1:
            raise ValueError(f"squeeze-excite width must be >= 1, got {rd_channels}")
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = create_act(act)
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum * (1 / HW) rather than mean: sum's backward is a broadcast view that autograd adds straight into the
        # gate's input gradient, where mean's backward writes a full-size tensor first (one pass saved).
        s = x.sum((2, 3), keepdim=True) * (1.0 / (x.shape[2] * x.shape[3]))
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)
