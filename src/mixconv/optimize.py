"""``optimize_for_inference``: an eval-only MixNet with BatchNorm folded, MixConvs merged and NHWC activations.

The optimized model keeps every parameter and buffer of the original under the same names (its state dict and
parameter count are unchanged); the folded/merged weights it computes with are non-persistent buffers derived
from them once, at optimization time. Change the original weights afterwards and you must optimize again.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .layers.conv2d_same import Conv2dSame
from .layers.conv_norm_act import ConvNormAct
from .layers.mixed_conv import MixConv2d
from .layers.padding import pad_same
from .layers.squeeze_excite import SqueezeExcite

__all__ = ["optimize_for_inference", "FusedConvNormAct", "FusedSqueezeExcite", "CastLinear"]

_EVAL_ONLY = "this model was optimized for inference (mixconv.optimize_for_inference) and cannot train; train the original model"


class _EvalOnly(nn.Module):
    """A module that refuses ``train()``: its folded weights no longer follow the parameters."""

    def train(self, mode: bool = True):  # type: ignore[override]
        if mode:
            raise RuntimeError(_EVAL_ONLY)
        return super().train(False)


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


def _replace_modules(module: nn.Module, dtype: torch.dtype) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvNormAct):
            setattr(module, name, FusedConvNormAct(child, dtype))
        elif isinstance(child, SqueezeExcite):
            setattr(module, name, FusedSqueezeExcite(child, dtype))
        else:
            _replace_modules(child, dtype)


def _check_model(model: nn.Module) -> None:
    from .models.mixnet import MixNet, MixNetFeatures

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
      input and a classifier still returns float32 logits (feature maps come out in ``dtype``).

    The state dict (keys, shapes, values) and the parameter count stay those of ``model``; the folded weights
    are non-persistent buffers. Calling ``.train()`` on the result raises. ``example_input``, when given, is run
    through both models: in float32 a relative difference above 1e-4 raises ``RuntimeError``; it also warms up
    the kernels.
    """
    _check_model(model)
    dtype = dtype or next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
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
    opt.eval()
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
