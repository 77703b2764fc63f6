"""A ``Conv2d`` that pads with TensorFlow's SAME rule where that rule is input-size dependent."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.layers.padding import (
    check_padding_mode,
    is_static_same,
    pad_same,
    symmetric_padding,
)

# SAME padding depends on the input size: a leaf for torch.fx tracing instead of control flow on proxies.
torch.fx.wrap("pad_same")


class Conv2dSame(nn.Conv2d):
    """Conv2d with dynamic TF SAME padding (used only for even-offset cases such as stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    """A square conv with ``symmetric`` (PyTorch) or ``same`` (TensorFlow) padding.

    SAME padding becomes a static symmetric pad whenever it does not depend on the input size, so TF-ported
    models only pay for dynamic padding in their stride-2 layers.
    """
    check_padding_mode(padding)
    if padding == "same" and not is_static_same(kernel_size, stride, dilation):
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)
    pad = symmetric_padding(kernel_size, dilation)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, dilation, groups, bias)
