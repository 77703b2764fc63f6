"""Triton kernels of a MixConv (a depthwise conv whose channel groups have different kernel sizes).

Layout: activations are read and written through their strides (channels_last is the fast layout: a block of
channels is contiguous); the weight is the groups' kernels zero-padded to the largest size ``K`` and laid out
``(K * K, C)`` in float32, but a channel block reads only its own group's ``k x k`` taps (the zero taps are
never touched). Channel blocks never straddle groups: a small table gives each block its first and last
channel and its kernel size, so one launch computes every group.

Kernels:
- ``_fwd_kernel``: the forward, with an optional per-channel scale and bias (folded BatchNorm or the conv bias),
  an activation (identity, ReLU, SiLU) and optional per-(image, channel) sums of the output (squeeze-excite's
  pooling) accumulated atomically.
- ``_bwd_input_kernel``: the input gradient (a gather over the taps that reach each input pixel), one launch.
- ``_bwd_weight_kernel``: the weight gradient, one launch over (channel block, tap row, pixel split) computing
  only each group's own ``k x k`` taps; the splits' partial sums are added by the caller (deterministic).

CPU tensors run under Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton's first import:
that is how CI checks the kernels without a GPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

ACTS = {"identity": 0, "relu": 1, "silu": 2}


@triton.jit
def _channel_block(blk_c0_ptr, blk_c1_ptr, blk_k_ptr, pid_c, KMAX, BLOCK_C: tl.constexpr):
    """A channel block's channels (and their mask), its group's kernel size ``k`` and ``shift``: how many taps
    the group's kernel sits inside the merged ``KMAX x KMAX`` one."""
    c0 = tl.load(blk_c0_ptr + pid_c)
    c1 = tl.load(blk_c1_ptr + pid_c)
    k = tl.load(blk_k_ptr + pid_c)
    offs_c = c0 + tl.arange(0, BLOCK_C)
    return offs_c, offs_c < c1, k, (KMAX - k) // 2


@triton.jit
def _pixel_block(HEIGHT, WIDTH, BLOCK_P: tl.constexpr):
    """This program's block of pixels of an image (axis 0 of the grid): their mask, rows and columns."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return offs_p < HEIGHT * WIDTH, offs_p // WIDTH, offs_p % WIDTH


@triton.jit
def _fwd_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, sums_ptr, blk_c0_ptr, blk_c1_ptr, blk_k_ptr,
    C, H, W, OH, OW, sxn, sxc, sxh, sxw, son, soc, soh, sow, stride, dil, pad_t, pad_l, KMAX,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SE_SUMS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(2).to(tl.int64)
    offs_c, cmask, k, shift = _channel_block(blk_c0_ptr, blk_c1_ptr, blk_k_ptr, tl.program_id(1), KMAX, BLOCK_C)
    pmask, oh, ow = _pixel_block(OH, OW, BLOCK_P)
    ih0 = oh * stride - pad_t + shift * dil
    iw0 = ow * stride - pad_l + shift * dil
    # Offsets that do not change along a row of taps are computed once per row (the interpreter runs every
    # op in Python, and the compiler hoists them anyway).
    x_base = x_ptr + n * sxn + offs_c[None, :] * sxc + (iw0 * sxw)[:, None]
    w_base = w_ptr + offs_c
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(0, k):
        ih = ih0 + i * dil
        row_ptrs = x_base + (ih * sxh)[:, None]
        row_mask = (pmask & (ih >= 0) & (ih < H))[:, None] & cmask[None, :]
        w_row = w_base + ((i + shift) * KMAX + shift) * C
        for j in range(0, k):
            iw = iw0 + j * dil
            xv = tl.load(row_ptrs + j * dil * sxw, mask=row_mask & ((iw >= 0) & (iw < W))[:, None], other=0.0)
            wv = tl.load(w_row + j * C, mask=cmask, other=0.0)
            acc += xv.to(tl.float32) * wv[None, :]
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + offs_c, mask=cmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_c, mask=cmask, other=0.0)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        acc = acc * tl.sigmoid(acc)
    omask = pmask[:, None] & cmask[None, :]
    out_ptrs = out_ptr + n * son + oh[:, None] * soh + ow[:, None] * sow + offs_c[None, :] * soc
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
    if SE_SUMS:
        part = tl.sum(tl.where(omask, acc, 0.0), axis=0)
        tl.atomic_add(sums_ptr + n * C + offs_c, part, mask=cmask)


@triton.jit
def _bwd_input_kernel(
    g_ptr, w_ptr, dx_ptr, blk_c0_ptr, blk_c1_ptr, blk_k_ptr,
    C, H, W, OH, OW, sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw, stride, dil, pad_t, pad_l, KMAX,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(2).to(tl.int64)
    offs_c, cmask, k, shift = _channel_block(blk_c0_ptr, blk_c1_ptr, blk_k_ptr, tl.program_id(1), KMAX, BLOCK_C)
    pmask, ih, iw = _pixel_block(H, W, BLOCK_P)
    g_base = g_ptr + n * sgn + offs_c[None, :] * sgc
    w_base = w_ptr + offs_c
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(0, k):
        th = ih + pad_t - (i + shift) * dil  # oh * stride for the outputs this tap connects to ih
        oh = th // stride
        row_ptrs = g_base + (oh * sgh)[:, None]
        row_mask = (pmask & (th >= 0) & (th % stride == 0) & (oh < OH))[:, None] & cmask[None, :]
        w_row = w_base + ((i + shift) * KMAX + shift) * C
        for j in range(0, k):
            tw = iw + pad_l - (j + shift) * dil
            ow = tw // stride
            m = row_mask & ((tw >= 0) & (tw % stride == 0) & (ow < OW))[:, None]
            gv = tl.load(row_ptrs + (ow * sgw)[:, None], mask=m, other=0.0)
            wv = tl.load(w_row + j * C, mask=cmask, other=0.0)
            acc += gv.to(tl.float32) * wv[None, :]
    dx_ptrs = dx_ptr + n * sdn + ih[:, None] * sdh + iw[:, None] * sdw + offs_c[None, :] * sdc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _bwd_weight_kernel(
    g_ptr, x_ptr, dw_ptr, blk_c0_ptr, blk_c1_ptr, blk_k_ptr,
    C, H, W, OH, OW, NP, P_PER_SPLIT, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, stride, dil, pad_t, pad_l, KMAX,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ti = tl.program_id(1)  # a row of taps of the merged kernel
    split = tl.program_id(2)
    offs_c, cmask, k, shift = _channel_block(blk_c0_ptr, blk_c1_ptr, blk_k_ptr, tl.program_id(0), KMAX, BLOCK_C)
    inside = (ti >= shift) & (ti < shift + k)
    n_cols = tl.where(inside, k, 0)  # a row outside the group's kernel: no work, its gradient stays zero
    lo = split * P_PER_SPLIT
    hi = tl.minimum(lo + P_PER_SPLIT, NP)
    ohw = OH * OW
    dw_row = dw_ptr + (split * KMAX * KMAX + ti * KMAX + shift) * C + offs_c
    # Pixel chunks outside, the row's taps inside: the output gradient is loaded once for all k taps; each tap's
    # sum over the chunk is added to this program's own slice of the partial sums (no other program writes it).
    for start in range(lo, hi, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        pmask = offs_p < hi
        n = (offs_p // ohw).to(tl.int64)
        r = offs_p % ohw
        oh = r // OW
        ow = r % OW
        gv = tl.load(g_ptr + n[:, None] * sgn + oh[:, None] * sgh + ow[:, None] * sgw + offs_c[None, :] * sgc,
                     mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        ih = oh * stride - pad_t + ti * dil
        iw0 = ow * stride - pad_l + shift * dil
        row_ptrs = x_ptr + n[:, None] * sxn + (ih * sxh + iw0 * sxw)[:, None] + offs_c[None, :] * sxc
        row_mask = (pmask & (ih >= 0) & (ih < H))[:, None] & cmask[None, :]
        for j in range(0, n_cols):
            iw = iw0 + j * dil
            xv = tl.load(row_ptrs + j * dil * sxw, mask=row_mask & ((iw >= 0) & (iw < W))[:, None], other=0.0)
            part = tl.sum(gv * xv.to(tl.float32), axis=0)
            tl.store(dw_row + j * C, tl.load(dw_row + j * C, mask=cmask, other=0.0) + part, mask=cmask)


@dataclass(frozen=True)
class Geometry:
    """Output size and top/left padding of a MixConv on an ``H x W`` input (the largest kernel decides)."""

    out_h: int
    out_w: int
    pad_t: int
    pad_l: int


def geometry(h: int, w: int, kmax: int, stride: int, dilation: int, padding: str) -> Geometry:
    """``symmetric``: PyTorch's padding of the largest kernel; ``same``: TensorFlow SAME (the extra pixel at the
    bottom/right). Both give each smaller group the padding it would get on its own (kernels differ by an even
    number of taps, so the merged padding is the group's plus the taps it sits inside)."""
    span = dilation * (kmax - 1)
    if padding == "symmetric":
        p = span // 2
        return Geometry((h + 2 * p - span - 1) // stride + 1, (w + 2 * p - span - 1) // stride + 1, p, p)
    oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
    pad_h = max((oh - 1) * stride + span + 1 - h, 0)
    pad_w = max((ow - 1) * stride + span + 1 - w, 0)
    return Geometry(oh, ow, pad_h // 2, pad_w // 2)


@functools.lru_cache(maxsize=256)
def _block_table_cpu(kernel_sizes: tuple[int, ...], split_sizes: tuple[int, ...], block_c: int) -> torch.Tensor:
    rows: list[tuple[int, int, int]] = []
    start = 0
    for k, size in zip(kernel_sizes, split_sizes):
        for c in range(start, start + size, block_c):
            rows.append((c, min(c + block_c, start + size), k))
        start += size
    return torch.tensor(rows, dtype=torch.int32).t().contiguous()


_TABLES: dict[tuple, torch.Tensor] = {}


def block_table(kernel_sizes: Sequence[int], split_sizes: Sequence[int], block_c: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First channel, end channel and kernel size of every channel block (blocks never straddle groups)."""
    key = (tuple(kernel_sizes), tuple(split_sizes), block_c, str(device))
    table = _TABLES.get(key)
    if table is None:
        table = _block_table_cpu(tuple(kernel_sizes), tuple(split_sizes), block_c).to(device)
        _TABLES[key] = table
    return table[0], table[1], table[2]


def interpreter_active() -> bool:
    """Whether Triton was imported with ``TRITON_INTERPRET=1`` (its language then runs on CPU tensors). Triton
    fixes this when it is first imported: setting the variable later has no effect."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fwd_kernel, InterpretedFunction)


def _launcher(kernel: object, device: torch.device) -> object:
    """The kernel; on CPU tensors only under Triton's interpreter (a clear error otherwise)."""
    if device.type == "cpu" and not interpreter_active():
        raise RuntimeError(
            "mixconv's Triton kernels ran on CPU tensors without Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is first imported (CPU models use the 'merged'/'split' MixConv impls instead)"
        )
    return kernel


def _blocks(device: torch.device, channels_per_group: int) -> tuple[int, int]:
    """(pixels, channels) per program. The interpreter runs each program in Python: few, large programs."""
    if device.type == "cpu":
        return 256, 16
    return 64, 32 if channels_per_group >= 32 else 16


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def merged_weight_t(weight: torch.Tensor) -> torch.Tensor:
    """``(C, 1, K, K)`` -> ``(K * K, C)`` float32, the layout the kernels read (a channel block is contiguous)."""
    c, _, kh, kw = weight.shape
    return weight.reshape(c, kh * kw).t().float().contiguous()


def forward(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
            kernel_sizes: Sequence[int], split_sizes: Sequence[int], stride: int, dilation: int, padding: str,
            act: str, se_sums: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch: ``act(conv(x) * scale + bias)`` (channels_last, ``x``'s dtype) and, if asked, its float32
    per-(image, channel) sums (else an empty tensor)."""
    n, c, h, w = x.shape
    kmax = weight.shape[-1]
    geo = geometry(h, w, kmax, stride, dilation, padding)
    out = torch.empty((n, c, geo.out_h, geo.out_w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    sums = torch.zeros((n, c) if se_sums else (0,), dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out, sums
    block_p, block_c = _blocks(x.device, min(split_sizes))
    c0, c1, ks = block_table(kernel_sizes, split_sizes, block_c, x.device)
    wt = merged_weight_t(weight)
    f32 = lambda t: wt if t is None else t.float().contiguous()  # noqa: E731 - placeholder pointer when absent
    grid = (triton.cdiv(geo.out_h * geo.out_w, block_p), c0.numel(), n)
    _launcher(_fwd_kernel, x.device)[grid](
        x, wt, f32(scale), f32(bias), out, sums if se_sums else wt, c0, c1, ks,
        c, h, w, geo.out_h, geo.out_w, *_nhwc_strides(x), *_nhwc_strides(out), stride, dilation, geo.pad_t,
        geo.pad_l, kmax, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, ACT=ACTS[act], SE_SUMS=se_sums,
        BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return out, sums


def backward_input(grad: torch.Tensor, weight: torch.Tensor, x_shape: Sequence[int], kernel_sizes: Sequence[int],
                   split_sizes: Sequence[int], stride: int, dilation: int, padding: str,
                   dtype: torch.dtype) -> torch.Tensor:
    """The gradient of the conv's input (channels_last, ``dtype``) from the gradient of its output, one launch."""
    n, c, h, w = x_shape
    kmax = weight.shape[-1]
    geo = geometry(h, w, kmax, stride, dilation, padding)
    dx = torch.empty((n, c, h, w), dtype=dtype, device=grad.device, memory_format=torch.channels_last)
    if dx.numel() == 0:
        return dx
    block_p, block_c = _blocks(grad.device, min(split_sizes))
    c0, c1, ks = block_table(kernel_sizes, split_sizes, block_c, grad.device)
    grid = (triton.cdiv(h * w, block_p), c0.numel(), n)
    _launcher(_bwd_input_kernel, grad.device)[grid](
        grad, merged_weight_t(weight), dx, c0, c1, ks, c, h, w, geo.out_h, geo.out_w, *_nhwc_strides(grad),
        *_nhwc_strides(dx), stride, dilation, geo.pad_t, geo.pad_l, kmax, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return dx


def backward_weight(grad: torch.Tensor, x: torch.Tensor, kmax: int, kernel_sizes: Sequence[int],
                    split_sizes: Sequence[int], stride: int, dilation: int, padding: str) -> torch.Tensor:
    """The ``(C, 1, K, K)`` float32 gradient of the merged weight: each group's own ``k x k`` taps computed, the
    zero taps around them left zero. One launch over (channel block, row of taps, pixel split)."""
    n, c, h, w = x.shape
    geo = geometry(h, w, kmax, stride, dilation, padding)
    n_pix = n * geo.out_h * geo.out_w
    block_p, block_c = _blocks(x.device, min(split_sizes))
    # Enough programs to fill a GPU; one pixel range per program in the interpreter.
    splits = 1 if x.device.type == "cpu" else max(1, min(64, n_pix // 16384))
    per_split = triton.cdiv(max(n_pix, 1), splits * block_p) * block_p
    partial = torch.zeros((splits, kmax * kmax, c), dtype=torch.float32, device=x.device)
    if n_pix > 0:
        c0, c1, ks = block_table(kernel_sizes, split_sizes, block_c, x.device)
        grid = (c0.numel(), kmax, splits)
        _launcher(_bwd_weight_kernel, x.device)[grid](
            grad, x, partial, c0, c1, ks, c, h, w, geo.out_h, geo.out_w, n_pix, per_split,
            *_nhwc_strides(grad), *_nhwc_strides(x), stride, dilation, geo.pad_t, geo.pad_l, kmax,
            BLOCK_P=block_p, BLOCK_C=block_c,
        )
    return partial.sum(0).t().reshape(c, 1, kmax, kmax)
