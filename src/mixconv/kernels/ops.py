"""The Triton MixConv as ``torch.ops.mixconv.mixconv2d``: a ``torch.library`` custom op with a fake (meta)
implementation and autograd, so ``torch.compile`` keeps it in the graph as one opaque call.

``mixconv2d(x, weight, scale, bias, kernel_sizes, split_sizes, stride, dilation, padding, act, se_sums)``:
``weight`` is the ``(C, 1, K, K)`` merged kernel (each group's kernel zero-padded to the largest size ``K``,
see ``MixConv2d.merged_weight``); ``scale``/``bias`` optional per-channel float vectors; ``act`` ``identity``,
``relu`` or ``silu``; returns ``(out, sums)``: ``act(conv(x) * scale + bias)`` in channels_last and ``x``'s
dtype, and with ``se_sums`` its float32 ``(N, C)`` spatial sums (an empty tensor otherwise). The weight
gradient has each group's own taps and zeros on the padding taps, which ``merged_weight``'s backward drops.

The op is registered for CUDA and CPU; on CPU it runs Triton's interpreter (tests only: ``MixConv2d`` never
routes CPU tensors to it unless :func:`mixconv.kernels.force_interpreter` says so).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from mixconv.kernels import triton_mixconv as tk

PADDINGS = ("symmetric", "same")


def _check(x: torch.Tensor, weight: torch.Tensor, kernel_sizes: Sequence[int], split_sizes: Sequence[int],
           padding: str, act: str) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f"mixconv2d: expected x (N, C, H, W) and weight (C, 1, K, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if len(kernel_sizes) != len(split_sizes) or sum(split_sizes) != x.shape[1] or max(kernel_sizes) != weight.shape[-1]:
        raise ValueError(f"mixconv2d: kernel_sizes {list(kernel_sizes)} / split_sizes {list(split_sizes)} do not "
                         f"match {x.shape[1]} channels and a {weight.shape[-1]}x{weight.shape[-1]} merged kernel")
    if padding not in PADDINGS:
        raise ValueError(f"mixconv2d: unknown padding {padding!r}; expected one of {', '.join(PADDINGS)}")
    if act not in tk.ACTS:
        raise ValueError(f"mixconv2d: unknown act {act!r}; expected one of {', '.join(tk.ACTS)}")


@torch.library.custom_op("mixconv::mixconv2d", mutates_args=(), device_types=("cuda", "cpu"))
def mixconv2d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              kernel_sizes: Sequence[int], split_sizes: Sequence[int], stride: int, dilation: int, padding: str,
              act: str, se_sums: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, weight, kernel_sizes, split_sizes, padding, act)
    return tk.forward(x, weight, scale, bias, kernel_sizes, split_sizes, stride, dilation, padding, act, se_sums)


@mixconv2d.register_fake
def _(x, weight, scale, bias, kernel_sizes, split_sizes, stride, dilation, padding, act, se_sums):
    _check(x, weight, kernel_sizes, split_sizes, padding, act)
    n, c, h, w = x.shape
    geo = tk.geometry(h, w, weight.shape[-1], stride, dilation, padding)
    out = torch.empty((n, c, geo.out_h, geo.out_w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return out, x.new_empty((n, c) if se_sums else (0,), dtype=torch.float32)


@torch.library.custom_op("mixconv::mixconv2d_backward", mutates_args=(), device_types=("cuda", "cpu"))
def mixconv2d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, kernel_sizes: Sequence[int],
                       split_sizes: Sequence[int], stride: int, dilation: int, padding: str,
                       need_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's input gradient (one launch; empty when not ``need_input``) and merged-weight gradient."""
    dx = (tk.backward_input(grad, weight, x.shape, kernel_sizes, split_sizes, stride, dilation, padding, x.dtype)
          if need_input else x.new_empty((0,)))
    dw = tk.backward_weight(grad, x, weight.shape[-1], kernel_sizes, split_sizes, stride, dilation, padding)
    return dx, dw.to(weight.dtype)


@mixconv2d_backward.register_fake
def _(grad, x, weight, kernel_sizes, split_sizes, stride, dilation, padding, need_input):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last) if need_input \
        else x.new_empty((0,))
    return dx, torch.empty_like(weight, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, scale, bias, kernel_sizes, split_sizes, stride, dilation, padding, act, se_sums = inputs
    ctx.save_for_backward(x, weight, scale, bias)
    ctx.conf = (list(kernel_sizes), list(split_sizes), stride, dilation, padding)
    ctx.act, ctx.se_sums = act, se_sums


def _act_grad(z: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return (z > 0).to(z.dtype)
    if act == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    return torch.ones_like(z)


def _backward(ctx, grad_out: torch.Tensor, grad_sums: Optional[torch.Tensor]):
    x, weight, scale, bias = ctx.saved_tensors
    conf = ctx.conf
    grad_scale = grad_bias = None
    needs = ctx.needs_input_grad
    epilogue = scale is not None or ctx.act != "identity" or (ctx.se_sums and grad_sums is not None)
    if epilogue:
        # Recompute the raw conv (one forward launch) instead of keeping it alive between the passes.
        y = mixconv2d(x, weight, None, None, *conf, "identity", False)[0].float()
        z = y * scale.float()[:, None, None] if scale is not None else y
        z = z + bias.float()[:, None, None] if bias is not None else z
        g = grad_out.float()
        if ctx.se_sums and grad_sums is not None:
            g = g + grad_sums[:, :, None, None]
        grad_z = g * _act_grad(z, ctx.act)
        if scale is not None and needs[2]:
            grad_scale = (grad_z * y).sum((0, 2, 3)).to(scale.dtype)
        grad_y = grad_z * scale.float()[:, None, None] if scale is not None else grad_z
        grad_y = grad_y.to(x.dtype)
    else:
        grad_z = grad_y = grad_out
    if bias is not None and needs[3]:
        grad_bias = grad_z.float().sum((0, 2, 3)).to(bias.dtype)
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    dx, dw = mixconv2d_backward(grad_y, x, weight, *conf, bool(needs[0]))
    return (dx if needs[0] else None, dw if needs[1] else None, grad_scale, grad_bias,
            None, None, None, None, None, None, None)


mixconv2d.register_autograd(_backward, setup_context=_setup_context)


def reference(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              stride: int, dilation: int, padding: str, act: str) -> torch.Tensor:
    """What the op computes, with ATen's depthwise conv on the merged kernel (for tests and debugging)."""
    # The one import of layers/ from kernels/: this test reference pads exactly as the MixConv layer does.
    from mixconv.layers.padding import pad_same

    k = weight.shape[-1]
    if padding == "same":
        x, pad = pad_same(x, k, stride, dilation), 0
    else:
        pad = dilation * (k - 1) // 2
    y = F.conv2d(x, weight.to(x.dtype), None, stride, pad, dilation, x.shape[1]).float()
    if scale is not None:
        y = y * scale.float()[:, None, None]
    if bias is not None:
        y = y + bias.float()[:, None, None]
    y = F.relu(y) if act == "relu" else F.silu(y) if act == "silu" else y
    return y
