"""Grouped pointwise (1x1) convolution: the paper's grouped expansion/projection conv."""
from __future__ import annotations

from torch import nn


def grouped_conv1x1(in_channels: int, out_channels: int, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 1x1 conv in ``groups`` groups, each mapping ``in/groups`` channels to ``out/groups``.

    Equivalent to splitting the channels into equal groups, one 1x1 conv per group, and concatenating; a
    single grouped ``Conv2d`` does it in one kernel without the split/concat copies.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"a grouped 1x1 conv needs in and out channels divisible by groups: got {in_channels} -> "
            f"{out_channels} channels in {groups} groups"
        )
    return nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)
