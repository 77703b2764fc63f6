"""Padding rules: PyTorch's symmetric padding and TensorFlow's SAME rule."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDING_MODES = ("symmetric", "same")


def symmetric_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 for an odd kernel."""
    return dilation * (kernel_size - 1) // 2


def is_static_same(kernel_size: int, stride: int, dilation: int) -> bool:
    """TF SAME equals a fixed symmetric padding at stride 1 with an odd effective kernel."""
    return stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0


def same_pad_amount(size: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Total padding TF SAME adds along one axis of length ``size``."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) as TF SAME does: the extra pixel goes to the bottom/right."""
    ih, iw = x.shape[-2], x.shape[-1]
    pad_h = same_pad_amount(ih, kernel_size, stride, dilation)
    pad_w = same_pad_amount(iw, kernel_size, stride, dilation)
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    return x


def check_padding_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"unknown padding {padding!r}; expected one of {', '.join(PADDING_MODES)}")
    return padding
