"""MixConv: a depthwise convolution whose channel groups use different kernel sizes (Tan & Le, 2019)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .conv2d_same import create_conv2d
from .padding import check_padding_mode

SPLIT_MODES = ("equal", "exponential")


def split_channels(channels: int, num_groups: int, split: str = "equal") -> tuple[int, ...]:
    """Partition ``channels`` into ``num_groups`` positive group sizes.

    ``equal``: equal groups, the remainder added to the first (10 channels, 3 groups -> 4, 3, 3).
    ``exponential``: each group half the previous, the last two equal (32, 4 -> 16, 8, 4, 4); sizes are
    rounded down, the last group takes what is left, and no group gets fewer than one channel.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"the number of groups must be a positive int, got {num_groups!r}")
    if num_groups > channels:
        raise ValueError(f"cannot split {channels} channels into {num_groups} groups; expected at most one group per channel")
    if split == "equal":
        sizes = [channels // num_groups] * num_groups
        sizes[0] += channels - sum(sizes)
        return tuple(sizes)
    if split == "exponential":
        sizes = []
        left = channels
        for i in range(num_groups - 1):
            # Leave at least one channel for each group still to come.
            size = min(max(channels >> (i + 1), 1), left - (num_groups - 1 - i))
            sizes.append(size)
            left -= size
        sizes.append(left)
        return tuple(sizes)
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_MODES)}")


def check_kernel_sizes(kernel_sizes: Sequence[int]) -> tuple[int, ...]:
    """Validate kernel sizes: a non-empty sequence of odd positive ints."""
    if isinstance(kernel_sizes, int):
        kernel_sizes = (kernel_sizes,)
    ks = tuple(kernel_sizes)
    if not ks:
        raise ValueError("kernel_sizes must name at least one kernel size")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"kernel sizes must be odd positive ints (3, 5, 7, ...), got {k!r} in {ks}")
    return ks


class MixConv2d(nn.Module):
    """Mixed depthwise convolution.

    The input channels are split into ``len(kernel_sizes)`` groups (see :func:`split_channels`); group ``i``
    is convolved depthwise with a ``kernel_sizes[i]`` square kernel, and the results are concatenated.
    With a single kernel size this is a plain depthwise conv.

    Args:
        channels: input and output channels.
        kernel_sizes: one odd kernel size per group.
        stride: stride of every group.
        dilation: dilation of every group.
        split: ``"equal"`` or ``"exponential"`` channel partition.
        padding: ``"symmetric"`` (PyTorch) or ``"same"`` (TensorFlow SAME, asymmetric at stride 2).
        bias: add a learnable bias per channel.
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        split: str = "equal",
        padding: str = "symmetric",
        bias: bool = False,
    ) -> None:
        super().__init__()
        ks = check_kernel_sizes(kernel_sizes)
        check_padding_mode(padding)
        for name, value in (("stride", stride), ("dilation", dilation)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.kernel_sizes: tuple[int, ...] = ks
        self.split_sizes: tuple[int, ...] = split_channels(channels, len(ks), split)
        self.in_channels = channels
        self.out_channels = channels
        self.stride = stride
        self.dilation = dilation
        self.split = split
        self.padding = padding
        self.convs = nn.ModuleList(
            create_conv2d(c, c, k, stride=stride, dilation=dilation, groups=c, bias=bias, padding=padding)
            for c, k in zip(self.split_sizes, ks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.split_sizes) == 1:
            return self.convs[0](x)
        xs = torch.split(x, self.split_sizes, dim=1)
        out = [conv(xs[i]) for i, conv in enumerate(self.convs)]
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, kernel_sizes={self.kernel_sizes}, split_sizes={self.split_sizes}, "
            f"stride={self.stride}, dilation={self.dilation}, padding={self.padding!r}"
        )
