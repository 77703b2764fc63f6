"""``optimize_for_inference``: an eval-only MixNet with BatchNorm folded, MixConvs merged and NHWC activations.

The optimized model keeps every parameter and buffer of the original under the same names (its state dict and
parameter count are unchanged); the folded/merged weights it computes with are non-persistent buffers derived
from them once, at optimization time. Change the original weights afterwards and you must optimize again.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.kernels.capability import warn_emulated_precision
from mixconv.layers.conv2d_same import Conv2dSame
from mixconv.layers.conv_norm_act import ConvNormAct
from mixconv.layers.mixed_conv import MixConv2d
from mixconv.layers.padding import pad_same
from mixconv.layers.squeeze_excite import SqueezeExcite
from mixconv.models.mixnet import MixNet, MixNetFeatures

__all__ = [
    "optimize_for_inference", "FusedConvNormAct", "FusedSqueezeExcite", "CastLinear", "InferenceMixNet",
    "InferenceMixNetFeatures", "MICRO_BATCH_BYTES", "MICRO_BATCH_MAX_STRIDE",
]

# Micro-batching: the stem and the stages up to output stride MICRO_BATCH_MAX_STRIDE run on slices of the batch
# small enough that their largest activation stays under MICRO_BATCH_BYTES; the later stages run on the whole
# batch. The slice size follows from the input's shape and dtype alone (never from a timing), and every layer
# is per-image in eval mode, so the outputs are those of the whole batch.
# Why: at batch 32 and 224 px the early activations are 25-154 MB each (MixNet-S, fp32). glibc serves blocks
# over 32 MB with a fresh mmap, so every such tensor is page-faulted in on every call, and the stride-2/4 layers
# stream from DRAM. Measured on this project's 2-core Xeon, torch 2.14, MixNet-S fp32 batch 32, 5 interleaved
# rounds (median img/s): whole batch 92; stages <= stride 8 in slices of 2 / 4 / 8 images: 174 / 175 / 130
# (4 images = 19 MB, 8 = 38 MB: over the mmap limit); slicing stride 16 too: 158 / 172 / 140. In bfloat16 the
# best slice was 8 images (19 MB again). A 24 MB budget picks 4 images (fp32) / 8 (bf16) at 224 px, and does
# not slice small inputs at all (64 px: a 49-image slice).
MICRO_BATCH_BYTES = 24 * 2**20
MICRO_BATCH_MAX_STRIDE = 8

_EVAL_ONLY = "this model was optimized for inference (mixconv.optimize_for_inference) and cannot train; train the original model"


class _EvalOnlyMixin:
    """Refuses ``train()``: the folded weights no longer follow the parameters."""

    def train(self, mode: bool = True):  # type: ignore[override]
        if mode:
            raise RuntimeError(_EVAL_ONLY)
        return super().train(False)  # type: ignore[misc]


class _EvalOnly(_EvalOnlyMixin, nn.Module):
    """A module that refuses ``train()``."""


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv's weight and bias (computed in float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    var = bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w, shift


class FusedConvNormAct(_EvalOnly):
    """``act(conv(x) * bn_scale + bn_shift)`` as one conv with folded weights, then the activation.

    Holds the original ``conv``, ``bn`` and ``act`` as children (so the state dict keys are those of
    :class:`ConvNormAct`); computes with the non-persistent ``weight``/``bias`` buffers. A MixConv becomes one
    depthwise conv with its kernels zero-padded to the largest size: no split, no concat.
    """

    def __init__(self, cna: ConvNormAct, dtype: torch.dtype, cast_input: bool = False) -> None:
        super().__init__()
        self.conv, self.bn, self.act = cna.conv, cna.bn, cna.act
        conv = cna.conv
        self.dynamic_pad_kernel = 0  # > 0: TF SAME padding computed from the input size, for this kernel
        with torch.no_grad():
            if isinstance(conv, MixConv2d):
                weight, bias = conv.merged_weight(), conv.merged_bias()
                self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.in_channels
                self.padding = conv.merged_padding
                if conv.merged_dynamic_pad:
                    self.dynamic_pad_kernel = conv.max_kernel
            elif isinstance(conv, nn.Conv2d):
                if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                    raise ValueError(f"cannot fuse a conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
                if len(set(conv.stride)) != 1 or len(set(conv.padding)) != 1 or len(set(conv.dilation)) != 1:
                    raise ValueError("only square strides, paddings and dilations are supported")
                weight, bias = conv.weight, conv.bias
                self.stride, self.padding, self.dilation = conv.stride[0], conv.padding[0], conv.dilation[0]
                self.groups = conv.groups
                if isinstance(conv, Conv2dSame):
                    self.dynamic_pad_kernel = conv.kernel_size[0]
            else:
                raise TypeError(f"cannot fuse a {type(conv).__name__} conv")
            w, b = _fold_bn(weight, bias, cna.bn)
        self.register_buffer("weight", w.to(dtype).contiguous(memory_format=torch.channels_last), persistent=False)
        self.register_buffer("bias", b.to(dtype), persistent=False)
        self.cast_input = cast_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast_input:  # the first layer: the caller's tensor (any float dtype, NCHW) to NHWC in our dtype
            x = x.to(dtype=self.weight.dtype, memory_format=torch.channels_last)
        if self.dynamic_pad_kernel > 0:
            x = pad_same(x, self.dynamic_pad_kernel, self.stride, self.dilation)
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.act(x)


class FusedSqueezeExcite(_EvalOnly):
    """Squeeze-excite on the pooled vector with two ``linear`` ops (the 1x1 convs act on a 1x1 map)."""

    def __init__(self, se: SqueezeExcite, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv_reduce, self.act, self.conv_expand, self.gate = se.conv_reduce, se.act, se.conv_expand, se.gate
        for name, conv in (("reduce", se.conv_reduce), ("expand", se.conv_expand)):
            w = conv.weight.detach().flatten(1).to(dtype).contiguous()
            b = conv.bias.detach().to(dtype) if conv.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
            self.register_buffer(f"{name}_weight", w, persistent=False)
            self.register_buffer(f"{name}_bias", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        s = self.act(F.linear(s, self.reduce_weight, self.reduce_bias))
        s = self.gate(F.linear(s, self.expand_weight, self.expand_bias))
        return x * s[:, :, None, None]


class CastLinear(_EvalOnly):
    """The classifier: shares the original ``weight``/``bias`` parameters (same keys), computes with copies in the
    inference dtype and returns the original parameters' dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        self.register_buffer("cast_weight", linear.weight.detach().to(dtype), persistent=False)
        b = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("cast_bias", b.to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.cast_weight.dtype), self.cast_weight, self.cast_bias).to(self.out_dtype)


def _micro_batches(x: torch.Tensor, bytes_per_pixel: float) -> list[torch.Tensor]:
    """``x`` in slices whose largest early activation fits ``MICRO_BATCH_BYTES`` (one slice when it all fits)."""
    per_image = bytes_per_pixel * x.shape[-2] * x.shape[-1]
    n = max(1, int(MICRO_BATCH_BYTES // max(per_image, 1.0)))
    return list(x.split(n)) if x.shape[0] > n else [x]


class _InferenceTrunk(_EvalOnlyMixin):
    """The trunk of an optimized MixNet/MixNetFeatures: the stem and the first ``micro_stages`` stages run
    depth-first on micro-batches (see ``MICRO_BATCH_BYTES``), the rest on the whole batch."""

    stem: nn.Module
    stages: nn.Sequential
    micro_stages: int = 0  # 0: no micro-batching (e.g. for export, where the batch size is symbolic)
    early_bytes_per_pixel: float = 0.0  # largest early activation, bytes per input pixel and image

    def run_trunk(self, x: torch.Tensor, out_indices: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last stage's output and the outputs of the stages in ``out_indices``."""
        k = min(self.micro_stages, len(self.stages))
        chunks = _micro_batches(x, self.early_bytes_per_pixel) if k > 0 else [x]
        ys: list[torch.Tensor] = []
        chunk_feats: list[list[torch.Tensor]] = []
        for chunk in chunks:
            y, f = self.stem(chunk), []
            for i in range(k):
                y = self.stages[i](y)
                if i in out_indices:
                    f.append(y)
            ys.append(y)
            chunk_feats.append(f)
        if len(ys) == 1:
            y, feats = ys[0], chunk_feats[0]
        else:  # cat keeps the slices' NHWC layout
            y, feats = torch.cat(ys), [torch.cat(list(fs)) for fs in zip(*chunk_feats)]
        for i in range(k, len(self.stages)):
            y = self.stages[i](y)
            if i in out_indices:
                feats.append(y)
        return y, feats


class InferenceMixNet(_InferenceTrunk, MixNet):
    """An optimized :class:`MixNet` (made by :func:`optimize_for_inference`, never directly): eval only."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_trunk(x, ())[0])


class InferenceMixNetFeatures(_InferenceTrunk, MixNetFeatures):
    """An optimized :class:`MixNetFeatures` (made by :func:`optimize_for_inference`, never directly): eval only."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.run_trunk(x, self.out_indices)[1]


def _early_bytes_per_pixel(model: _InferenceTrunk, k: int, in_chans: int, dtype: torch.dtype) -> float:
    """Bytes per input pixel of the largest output of the stem and the first ``k`` stages (a 64 px probe)."""
    sizes: list[int] = []
    early = [model.stem, *list(model.stages)[:k]]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for part in early for m in part.modules() if isinstance(m, FusedConvNormAct)]
    try:
        with torch.no_grad():
            y = model.stem(torch.zeros(1, in_chans, 64, 64))
            for stage in early[1:]:
                y = stage(y)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes) * torch.empty(0, dtype=dtype).element_size() / (64 * 64)


def _replace_modules(module: nn.Module, dtype: torch.dtype) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvNormAct):
            setattr(module, name, FusedConvNormAct(child, dtype))
        elif isinstance(child, SqueezeExcite):
            setattr(module, name, FusedSqueezeExcite(child, dtype))
        else:
            _replace_modules(child, dtype)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, (MixNet, MixNetFeatures)):
        raise TypeError(f"optimize_for_inference expects a mixconv MixNet or MixNetFeatures, got {type(model).__name__}")
    if not isinstance(model.stem, ConvNormAct):
        raise ValueError("the model's stem is not a ConvNormAct: was it optimized already?")


def optimize_for_inference(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Return an eval-only copy of a MixNet optimized for inference; ``model`` itself is not changed.

    - every ``conv -> BatchNorm`` becomes one conv with the BatchNorm folded into its weight and bias;
    - every MixConv becomes one depthwise conv with its kernels zero-padded to the largest size, so no channel
      split or concat is left; grouped 1x1 convs already are one conv;
    - activations run in NHWC (channels_last); squeeze-excite works on the pooled vector;
    - ``dtype`` (e.g. ``torch.bfloat16``) computes in that dtype; the model still takes the caller's float32
      input and a classifier still returns float32 logits (feature maps come out in ``dtype``). On a CPU
      without native support for a bfloat16/float16 ``dtype`` (see :mod:`mixconv.kernels.capability`) this warns with
      :class:`~mixconv.kernels.capability.LowPrecisionWarning`: it runs emulated, slower than float32.

    The state dict (keys, shapes, values) and the parameter count stay those of ``model``; the folded weights
    are non-persistent buffers. Calling ``.train()`` on the result raises. ``example_input``, when given, is run
    through both models: in float32 a relative difference above 1e-4 raises ``RuntimeError``; it also warms up
    the kernels.
    """
    _check_model(model)
    dtype = dtype or next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
    # A capability check, not a timing: the user asked for this dtype, so it is kept, but said to be slow.
    warn_emulated_precision(dtype, next(model.parameters()).device, f"optimize_for_inference(dtype={dtype})", 2)
    was_training = model.training
    model.eval()
    try:
        opt = copy.deepcopy(model)
    finally:
        model.train(was_training)
    _replace_modules(opt, dtype)
    opt.stem.cast_input = True
    if isinstance(getattr(opt, "classifier", None), nn.Linear):
        opt.classifier = CastLinear(opt.classifier, dtype)
    # Same modules, same state dict; only the trunk's forward changes (micro-batches).
    opt.__class__ = InferenceMixNet if isinstance(opt, MixNet) else InferenceMixNetFeatures
    opt.eval()
    k = int(math.log2(MICRO_BATCH_MAX_STRIDE))  # stage i ends at output stride 2 ** (i + 1)
    opt.early_bytes_per_pixel = _early_bytes_per_pixel(opt, k, model.in_chans, dtype)
    opt.micro_stages = k
    if example_input is not None:
        _verify(model, opt, example_input, dtype)
    return opt


def _verify(model: nn.Module, opt: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref, out = model(x), opt(x)
    finally:
        model.train(was_training)
    refs = ref if isinstance(ref, list) else [ref]
    outs = out if isinstance(out, list) else [out]
    if dtype != torch.float32 or next(model.parameters()).dtype != torch.float32:
        return
    for r, o in zip(refs, outs):
        err = ((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-12)).item()
        if err > 1e-4:
            raise RuntimeError(f"optimized model differs from the original by {err:.2e} (relative) on example_input")
