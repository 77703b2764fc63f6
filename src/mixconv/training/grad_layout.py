"""Gradients in their parameters' exact strides, for DistributedDataParallel.

oneDNN's convolution backward returns some weight gradients with other strides on their size-1 dimensions than
the parameter has: a depthwise weight ``(C, 1, k, k)`` with strides ``(k*k, 1, k, 1)`` instead of
``(k*k, k*k, k, 1)``, a 1x1 weight ``(O, I, 1, 1)`` as ``(I, 1, I, I)`` (MixConv's weight gradients come from
``aten.convolution_backward`` on channels-last inputs; so do the grouped 1x1 convs'). The memory order is the
same, but DDP compares strides with its bucket views and warns "Grad strides do not match bucket view strides"
on every rank. :func:`match_grad_strides` gives each such gradient its parameter's strides as a view: nothing
is copied, and a gradient whose memory order truly differs is left alone.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn


def _restride(stride: tuple[int, ...], grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == stride or grad.layout != torch.strided or not grad.is_contiguous():
        return grad
    return grad.as_strided(grad.shape, stride, grad.storage_offset())


def match_grad_strides(model: nn.Module) -> int:
    """Hook every contiguous trainable parameter of ``model`` so that its gradient arrives in the parameter's
    strides (see the module doc). Returns how many parameters were hooked."""
    hooked = 0
    for p in model.parameters():
        if p.requires_grad and p.is_contiguous():
            p.register_hook(partial(_restride, p.stride()))
            hooked += 1
    return hooked
