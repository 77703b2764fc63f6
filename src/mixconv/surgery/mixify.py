"""``mixify``: MixConv as a drop-in for the depthwise convolutions of any model (the paper's section 2).

Every depthwise ``nn.Conv2d`` (groups == in == out channels, square odd kernel, zero padding) becomes a
:class:`~mixconv.layers.MixConv2d` that computes exactly the same function: group ``i`` gets a kernel of
``max(kernel_sizes[i], k)`` with the original ``k x k`` kernel in its centre and zeros around, and a padding
grown by the same amount, so every output pixel sums the same inputs with the same weights. Fine-tuning then
lets the larger kernels learn.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mixconv.layers import MixConv2d
from mixconv.layers.mixed_conv import check_kernel_sizes, split_channels


def is_depthwise(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with groups == in == out channels, a square odd kernel and zero padding."""
    if type(conv) is not nn.Conv2d:  # subclasses (e.g. dynamic TF-SAME convs) compute something else
        return False
    k = conv.kernel_size
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and k[0] == k[1] and k[0] % 2 == 1
        and conv.stride[0] == conv.stride[1] and conv.dilation[0] == conv.dilation[1]
        and conv.padding_mode == "zeros"
    )


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "same":  # PyTorch allows it at stride 1: symmetric for an odd kernel
        p = conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
        return p, p
    if conv.padding == "valid":
        return 0, 0
    return int(conv.padding[0]), int(conv.padding[1])


def mixconv_from_depthwise(conv: nn.Conv2d, kernel_sizes: Sequence[int] = (3, 5, 7), split: str = "equal") -> MixConv2d:
    """A :class:`MixConv2d` computing exactly what the depthwise ``conv`` computes (see the module doc)."""
    if not is_depthwise(conv):
        raise ValueError(f"expected a depthwise nn.Conv2d with a square odd kernel and zero padding, got {conv!r}")
    ks = check_kernel_sizes(kernel_sizes)
    k, d, c = conv.kernel_size[0], conv.dilation[0], conv.in_channels
    if len(ks) > c:  # fewer channels than groups: keep the smallest kernels, one channel each
        ks = tuple(sorted(ks))[:c]
    ks = tuple(max(g, k) for g in ks)
    mix = MixConv2d(c, ks, stride=conv.stride[0], dilation=d, split=split, bias=conv.bias is not None)
    ph, pw = _padding(conv)
    start = 0
    weight = conv.weight.detach()
    for group, size, gk in zip(mix.convs, split_channels(c, len(ks), split), ks):
        m = (gk - k) // 2  # the original kernel sits m taps in from each side
        new = torch.zeros_like(group.weight)
        new[:, :, m:m + k, m:m + k] = weight[start:start + size]
        group.weight.data.copy_(new)
        if conv.bias is not None:
            group.bias.data.copy_(conv.bias.detach()[start:start + size])
        # Growing the kernel by m taps a side needs m*d more padding for the same output; this also keeps
        # non-"same" paddings (e.g. 0) exact.
        group.padding = (ph + m * d, pw + m * d)
        if group.padding != (d * (gk - 1) // 2,) * 2:
            mix.impl = "split"  # the merged fast path assumes symmetric "same-size" padding in every group
        start += size
    return mix.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)


def mixify(model: nn.Module, kernel_sizes: Sequence[int] = (3, 5, 7), split: str = "equal") -> nn.Module:
    """Replace every depthwise ``nn.Conv2d`` of ``model`` (in place) by an equivalent :class:`MixConv2d`.

    Args:
        model: any module, e.g. torchvision's ``mobilenet_v2`` or a timm model.
        kernel_sizes: the MixConv kernel sizes; each group's kernel is ``max(size, original kernel)`` (a 5x5
            depthwise conv given 3/5/7 becomes 5/5/7).
        split: ``"equal"`` or ``"exponential"`` channel partition.

    Convs already inside a :class:`MixConv2d` are left alone, as are convs whose padding mode is not zeros or
    whose kernel is even or not square (no MixConv computes those exactly). Returns ``model``.
    """
    check_kernel_sizes(kernel_sizes)
    inside = {id(m) for mix in model.modules() if isinstance(mix, MixConv2d) for m in mix.modules()}
    targets = []
    for parent in model.modules():
        if id(parent) in inside:
            continue
        for name, child in parent.named_children():
            if is_depthwise(child):
                targets.append((parent, name, child))
    for parent, name, child in targets:
        setattr(parent, name, mixconv_from_depthwise(child, kernel_sizes, split))
    return model
