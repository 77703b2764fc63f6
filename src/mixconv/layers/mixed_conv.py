"""MixConv: a depthwise convolution whose channel groups use different kernel sizes (Tan & Le, 2019)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.kernels.capability import runs_emulated
from mixconv.kernels.routing import wants_triton
from mixconv.layers.conv2d_same import create_conv2d
from mixconv.layers.padding import (
    check_padding_mode,
    is_static_same,
    pad_same,
    symmetric_padding,
)

SPLIT_MODES = ("equal", "exponential")
IMPLS = ("split", "merged", "triton")

# How a multi-kernel MixConv runs in training mode by default, by (kernel sizes, stride, channels); fixed in
# code so that a run never depends on a timing. "split": one depthwise conv per channel group, then a concat (the
# reference computation). "merged": one depthwise conv whose kernel is the groups' kernels zero-padded to the
# largest size, rebuilt from the per-group parameters at every call, for the forward and the input gradient;
# the weight gradient per group at the group's own kernel size (parameters, state dict and gradients stay per
# group). Shapes not listed use "merged".
# Why: measured with benchmarks/layer_impls.py on this project's 2-core Xeon (avx512, no AMX, shared), torch 2.14,
# fp32, NHWC, batch 32 at 224, forward + backward of every MixNet-S/M/L MixConv shape, 5 interleaved rounds
# (medians in ms, split / merged, after each entry). oneDNN runs depthwise forward and input-gradient convs at
# any kernel size with fast jit kernels, but a channel slice of an NHWC tensor is strided, so every split group
# pays a copy in and out of its conv and the concat; merging removes those. The weight gradient of a kernel
# larger than 3x3 has no fast depthwise kernel and costs in proportion to the kernel area, so it stays per
# group: a fully merged backward (zero taps included) lost 2x on the 14x14/7x7 layers with 9x9/11x11 kernels.
# Merged wins on every shape, by 15-30% on the large maps and 1-10% on the small ones.
DEFAULT_IMPL: dict[tuple[tuple[int, ...], int, int], str] = {
    ((3, 5, 7), 2, 144): "merged",  # mixnet_s, 56 px: 91.5 / 74.7
    ((3, 5), 1, 240): "merged",  # mixnet_s, 28 px: 41.3 / 34.9
    ((3, 5, 7), 2, 240): "merged",  # mixnet_s, 28 px: 22.1 / 17.2
    ((3, 5), 1, 480): "merged",  # mixnet_s, 14 px: 20.9 / 19.7
    ((3, 5, 7), 1, 480): "merged",  # mixnet_s, 14 px: 28.0 / 27.7
    ((3, 5, 7, 9), 1, 360): "merged",  # mixnet_s, 14 px: 27.1 / 26.8
    ((3, 5, 7, 9, 11), 2, 720): "merged",  # mixnet_s, 14 px: 34.3 / 34.0
    ((3, 5, 7, 9), 1, 1200): "merged",  # mixnet_s/m, 7 px: 26.6 / 25.7
    ((3, 5, 7, 9), 2, 192): "merged",  # mixnet_m, 56 px: 128.9 / 105.2
    ((3, 5, 7, 9), 1, 480): "merged",  # mixnet_m, 14 px: 35.2 / 33.4
    ((3, 5, 7, 9), 2, 720): "merged",  # mixnet_m, 14 px: 28.4 / 24.5
    ((3, 5, 7), 2, 192): "merged",  # mixnet_l, 112 px: 644.9 / 479.6
    ((3, 5, 7, 9), 2, 240): "merged",  # mixnet_l, 56 px: 178.5 / 127.7
    ((3, 5), 1, 336): "merged",  # mixnet_l, 28 px: 78.9 / 54.7
    ((3, 5, 7), 2, 336): "merged",  # mixnet_l, 28 px: 37.8 / 32.2
    ((3, 5, 7, 9), 1, 624): "merged",  # mixnet_l, 14 px: 41.0 / 39.5
    ((3, 5, 7, 9), 2, 960): "merged",  # mixnet_l, 14 px: 27.4 / 25.8
    ((3, 5, 7, 9), 1, 1584): "merged",  # mixnet_l, 7 px: 32.5 / 31.1
}


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a conv on ``x`` in (``None`` where autocast is off for ``x``'s device)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


# The CUDA counterpart of DEFAULT_IMPL: layer shapes whose MixConv runs the Triton kernels (mixconv.kernels) on
# CUDA tensors when ``impl`` is not given. Empty until measured on a GPU (benchmarks/gpu_targets.py --layers):
# until then the kernels are opt-in (``impl="triton"`` or ``mixconv.kernels.use_triton(model)``). Never used on
# CPU tensors.
CUDA_DEFAULT_IMPL: dict[tuple[tuple[int, ...], int, int], str] = {}


def default_impl(kernel_sizes: tuple[int, ...], stride: int, channels: int) -> str:
    """The CPU table's impl for a layer shape (``merged`` when not listed)."""
    return DEFAULT_IMPL.get((kernel_sizes, stride, channels), "merged")


class _MergedMixConv(torch.autograd.Function):
    """A MixConv as one depthwise conv with zero-padded kernels, forward and input gradient; the weight gradient
    per channel group at the group's own kernel size (the merged kernel's zero taps get no gradient computed).

    ``x`` comes padded by the caller when the padding is dynamic (TF SAME at stride 2), then ``padding`` is 0.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mod: "MixConv2d", *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        weight, bias = mod.merged_weight(), mod.merged_bias()
        # Under autocast, cast as autocast casts F.conv2d's operands, then save exactly the tensors the conv
        # used: the backward's aten.convolution_backward is no autocast op, and mixed dtypes there work only
        # where oneDNN has native bf16 (avx512_bf16/AMX); AVX2-only CPUs raise "expected scalar type BFloat16".
        ctx.mod, ctx.in_dtype = mod, x.dtype
        dtype = autocast_dtype(x)
        if dtype is not None:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        if dtype is None:
            return F.conv2d(x, weight, bias, mod.stride, mod.merged_padding, mod.dilation, mod.in_channels)
        with torch.autocast(x.device.type, enabled=False):  # already cast
            return F.conv2d(x, weight, bias, mod.stride, mod.merged_padding, mod.dilation, mod.in_channels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        mod: MixConv2d = ctx.mod
        s, d, p = mod.stride, mod.dilation, mod.merged_padding
        grad = grad.to(x.dtype)  # the output's dtype; a hook or a user may hand back another
        grad_x, _, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [s, s], [p, p], [d, d], False, [0, 0], mod.in_channels,
            [ctx.needs_input_grad[0], False, mod.has_bias],
        )
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        grads: list[torch.Tensor | None] = []
        start = 0
        for conv, size in zip(mod.convs, mod.split_sizes):
            k = conv.weight.shape[-1]
            shift = d * (mod.max_kernel - k) // 2  # the group's kernel sits this far inside the merged one
            xs, gs = x[:, start:start + size], grad[:, start:start + size]
            pad = p - shift
            if pad < 0:  # pre-padded input: crop to the group's own padding
                xs = xs[:, :, -pad:xs.shape[2] + pad, -pad:xs.shape[3] + pad]
                pad = 0
            # Only the weight's shape and dtype matter here (the conv's dtype; the gradient returns in the
            # parameter's).
            gw = torch.ops.aten.convolution_backward(
                gs.contiguous(memory_format=fmt), xs.contiguous(memory_format=fmt), conv.weight.to(x.dtype), None,
                [s, s], [pad, pad], [d, d], False, [0, 0], size, [False, True, False],
            )[1]
            grads.append(gw.to(conv.weight.dtype))
            if mod.has_bias:
                grads.append(grad_b[start:start + size].to(conv.weight.dtype))
            start += size
        return (grad_x.to(ctx.in_dtype) if grad_x is not None else None, None, *grads)


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
        impl: how training-mode forward runs: ``"split"`` (one conv per group, then concatenate) or ``"merged"``
            (one depthwise conv with the kernels zero-padded to the largest size, built from the per-group
            weights, for the forward and the input gradient; weight gradients per group); both compute the same
            function with the same parameters. ``None`` picks from the static table ``DEFAULT_IMPL``. Eval mode
            always runs ``"split"``, the reference computation. ``"triton"``: the Triton kernels of
            ``mixconv.kernels`` (one launch for all groups, training and eval) on CUDA tensors; on CPU tensors the
            table's impl. With ``None``, CUDA tensors of shapes in ``CUDA_DEFAULT_IMPL`` run Triton too.
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
        impl: str | None = None,
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
        self.impl_from_table = impl is None
        if impl is None:
            impl = default_impl(ks, stride, channels)
        if impl not in IMPLS:
            raise ValueError(f"unknown MixConv impl {impl!r}; expected one of {', '.join(IMPLS)}")
        self.impl = impl
        self.max_kernel = max(ks)
        self.has_bias = bias
        # The merged conv pads like the largest group: TF SAME is dynamic only at stride > 1.
        self.merged_dynamic_pad = padding == "same" and not is_static_same(self.max_kernel, stride, dilation)
        self.merged_padding = 0 if self.merged_dynamic_pad else symmetric_padding(self.max_kernel, dilation)
        self.convs = nn.ModuleList(
            create_conv2d(c, c, k, stride=stride, dilation=dilation, groups=c, bias=bias, padding=padding)
            for c, k in zip(self.split_sizes, ks)
        )

    def merged_weight(self) -> torch.Tensor:
        """The ``(C, 1, k, k)`` kernel of one depthwise conv equal to this MixConv, ``k`` the largest kernel size:
        each group's kernel zero-padded around its centre (differentiable in the per-group weights)."""
        ws: list[torch.Tensor] = []
        for conv in self.convs:
            p = (self.max_kernel - conv.weight.shape[-1]) // 2
            ws.append(F.pad(conv.weight, [p, p, p, p]) if p > 0 else conv.weight)
        return torch.cat(ws, 0)

    def merged_bias(self) -> torch.Tensor | None:
        """The concatenated per-group biases (``None`` without bias)."""
        bs: list[torch.Tensor] = []
        for conv in self.convs:
            b = conv.bias
            if b is not None:
                bs.append(b)
        return torch.cat(bs, 0) if len(bs) > 0 else None

    def forward_merged(self, x: torch.Tensor) -> torch.Tensor:
        """One depthwise conv with the zero-padded kernel (zero taps read padding or neighbours, adding 0); the
        backward computes the input gradient through the merged conv and each group's weight gradient at the
        group's own kernel size (see ``DEFAULT_IMPL``)."""
        if self.merged_dynamic_pad:
            x = pad_same(x, self.max_kernel, self.stride, self.dilation)
        return _MergedMixConv.apply(x, self, *self.parameters())

    def forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """The reference computation: split the channels, one depthwise conv per group, concatenate."""
        xs = torch.split(x, self.split_sizes, dim=1)
        out = [conv(xs[i]) for i, conv in enumerate(self.convs)]
        return torch.cat(out, dim=1)

    @torch.jit.unused
    def forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """All groups in one Triton launch (``torch.ops.mixconv.mixconv2d``); under autocast the input and the
        weight are cast to its dtype first, as autocast casts a conv's."""
        from mixconv.kernels.ops import mixconv2d

        x, w = self.triton_operands(x)
        return mixconv2d(x, w, None, self.merged_bias(), list(self.kernel_sizes), list(self.split_sizes), self.stride,
                         self.dilation, self.padding, "identity", False)[0]

    @torch.jit.unused
    def triton_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and the merged weight as the Triton op takes them: under autocast both cast to its dtype,
        as autocast casts a conv's operands."""
        w = self.merged_weight()
        dtype = autocast_dtype(x)
        if dtype is not None:
            x, w = x.to(dtype), w.to(dtype)
        return x, w

    @torch.jit.unused
    def _runs_triton(self, x: torch.Tensor) -> bool:
        if self.impl == "triton" or (self.impl_from_table and x.is_cuda and CUDA_DEFAULT_IMPL.get(
                (self.kernel_sizes, self.stride, self.in_channels)) == "triton"):
            return wants_triton(x)
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript (eval/export only) runs no autocast and no Triton
            return self.forward_impl(x)
        return self.forward_eager(x)

    @torch.jit.unused
    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The Triton kernels where asked for (CUDA), float32 under autocast to a dtype this CPU only emulates,
        else :meth:`forward_impl`. An FX trace records the plain computation."""
        if not isinstance(x, torch.fx.Proxy):
            if self._runs_triton(x):
                return self.forward_triton(x)
            dtype = autocast_dtype(x)
            if dtype is not None and runs_emulated(dtype, x.device):
                return self.forward_float32(x, dtype)
        return self.forward_impl(x)

    @torch.jit.unused
    def forward_float32(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Autocast to a ``dtype`` this CPU has no native support for: the depthwise convs run in float32, the
        result is cast to ``dtype``. Why: oneDNN then has no low-precision depthwise kernel, and ATen's fallback
        (``_slow_conv2d``) loops over the channels one by one: a MixNet-S bf16 training step at batch 2, 32 px
        took 193 s with ``ONEDNN_MAX_CPU_ISA=AVX2`` on this project's Xeon (97% in ``_slow_conv2d``)."""
        with torch.autocast(x.device.type, enabled=False):
            return self.forward_impl(x.float()).to(dtype)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        """The forward in the input's dtype: the merged conv in training where ``impl`` says so, else split."""
        if len(self.split_sizes) == 1:
            return self.convs[0](x)
        # Eval mode runs the reference computation: FLOP counters then see the logical MACs (not the zero taps),
        # and fast inference is mixconv.optimize_for_inference's job (BN folded, merged, eval only).
        if not torch.jit.is_scripting():  # TorchScript (eval/export only) keeps the reference path
            # triton on CPU: merged. A torch.fx trace records the reference split computation (same function).
            if self.impl in ("merged", "triton") and self.training and not isinstance(x, torch.fx.Proxy):
                return self.forward_merged(x)
        return self.forward_split(x)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, kernel_sizes={self.kernel_sizes}, split_sizes={self.split_sizes}, "
            f"stride={self.stride}, dilation={self.dilation}, padding={self.padding!r}, impl={self.impl!r}"
        )
