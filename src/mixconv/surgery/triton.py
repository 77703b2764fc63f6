"""Switching a model's MixConvs to the Triton kernels (the kernels themselves are :mod:`mixconv.kernels`)."""
from __future__ import annotations

from torch import nn

from mixconv.layers.mixed_conv import MixConv2d, default_impl


def use_triton(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Set every ``MixConv2d`` of ``model`` to ``impl="triton"`` (``enabled=False``: back to its table's impl).
    Returns ``model``; parameters and state dict are unchanged."""
    for m in model.modules():
        if isinstance(m, MixConv2d):
            m.impl = "triton" if enabled else default_impl(m.kernel_sizes, m.stride, m.in_channels)
    return model
