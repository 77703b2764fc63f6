"""Grouped pointwise (1x1) convolution: the paper's grouped expansion/projection conv."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("grouped", "dense")

# How a grouped 1x1 conv runs in training mode by default, by (in channels, out channels, groups); fixed in
# code so that a run never depends on a timing. "grouped": one nn.Conv2d(groups=g) (the reference
# computation). "dense": one ungrouped 1x1 conv whose weight is the groups' weights on a block diagonal, zero
# elsewhere, rebuilt from the grouped weight at every call (parameter, state dict and gradient stay grouped).
# Shapes not listed use "grouped".
# Why: measured with benchmarks/layer_impls.py on this project's 2-core Xeon (avx512, no AMX), torch 2.14, fp32,
# NHWC, batch 32 at 224, forward + backward of every MixNet-S/M/L grouped 1x1 shape, 5 interleaved rounds
# (medians in ms, grouped / dense, after each entry). oneDNN's grouped 1x1 kernels are slow with few channels per
# group, so on the large maps the dense conv wins although it computes the zero blocks (twice the MACs; these
# layers are memory-bound). Elsewhere (28x28 and smaller maps, 40+ input channels a group) grouped is as fast
# or faster and stays.
DEFAULT_IMPL: dict[tuple[int, int, int], str] = {
    (16, 96, 2): "dense",  # mixnet_s, 112 px: 98.2 / 78.0
    (24, 72, 2): "dense",  # mixnet_s, 56 px: 9.9 / 8.3
    (24, 144, 2): "dense",  # mixnet_m, 112 px: 178.9 / 133.2
    (144, 32, 2): "dense",  # mixnet_m, 56 px: 42.7 / 32.5
    (32, 96, 2): "dense",  # mixnet_m, 56 px: 25.4 / 20.8
    (96, 32, 2): "dense",  # mixnet_m, 56 px: 25.2 / 18.1
    (32, 192, 2): "dense",  # mixnet_l, 112 px: 215.9 / 155.2
    (40, 120, 2): "dense",  # mixnet_l, 56 px: 27.5 / 25.7
}


def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``(out, in, kh, kw)`` dense weight equal to a grouped conv's ``(out, in / groups, kh, kw)`` weight:
    group ``i``'s block on the diagonal, zeros elsewhere (differentiable in ``weight``)."""
    if groups == 1:
        return weight
    ci = weight.shape[1]
    rows: list[torch.Tensor] = []
    for i, block in enumerate(weight.chunk(groups, 0)):
        rows.append(F.pad(block, [0, 0, 0, 0, i * ci, (groups - 1 - i) * ci]))
    return torch.cat(rows, 0)


class GroupedConv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` in ``groups`` groups (same parameters and state dict) that can train as one dense conv.

    ``impl="dense"`` computes the same function in training mode with the block-diagonal ungrouped weight (see
    ``DEFAULT_IMPL``); eval mode always runs the grouped conv, the reference computation.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, bias: bool = False,
                 impl: str | None = None) -> None:
        super().__init__(in_channels, out_channels, 1, groups=groups, bias=bias)
        if impl is None:
            impl = DEFAULT_IMPL.get((in_channels, out_channels, groups), "grouped")
        if impl not in IMPLS:
            raise ValueError(f"unknown grouped conv impl {impl!r}; expected one of {', '.join(IMPLS)}")
        self.impl = impl

    def dense_weight(self) -> torch.Tensor:
        """The ``(out, in, 1, 1)`` weight of the equal ungrouped conv (differentiable in the grouped weight)."""
        return block_diagonal(self.weight, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript (eval/export only) keeps the reference path
            # A torch.fx trace records the reference grouped conv (the same function).
            if self.impl == "dense" and self.training and self.groups > 1 and not isinstance(x, torch.fx.Proxy):
                return F.conv2d(x, self.dense_weight(), self.bias)
        return F.conv2d(x, self.weight, self.bias, groups=self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl!r}"


def grouped_conv1x1(in_channels: int, out_channels: int, groups: int = 1, bias: bool = False,
                    impl: str | None = None) -> nn.Conv2d:
    """A 1x1 conv in ``groups`` groups, each mapping ``in/groups`` channels to ``out/groups``.

    Equivalent to splitting the channels into equal groups, one 1x1 conv per group, and concatenating; a
    single grouped ``Conv2d`` does it in one kernel without the split/concat copies. ``impl`` as
    :class:`GroupedConv1x1` (``None``: the static table ``DEFAULT_IMPL``).
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"a grouped 1x1 conv needs in and out channels divisible by groups: got {in_channels} -> "
            f"{out_channels} channels in {groups} groups"
        )
    return GroupedConv1x1(in_channels, out_channels, groups, bias, impl)
