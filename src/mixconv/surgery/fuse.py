"""Inference fusion for the Triton kernels: a MixConv, its BatchNorm (folded to a per-channel scale and bias)
and its activation in one launch (the kernel's epilogue)."""
from __future__ import annotations

import torch
from torch import nn

from mixconv.kernels.routing import wants_triton
from mixconv.layers.conv_norm_act import ConvNormAct
from mixconv.layers.mixed_conv import MixConv2d

_ACTS: dict[type, str] = {nn.Identity: "identity", nn.ReLU: "relu", nn.SiLU: "silu"}


def _act_name(act: nn.Module) -> str | None:
    for cls, name in _ACTS.items():
        if isinstance(act, cls):
            return name
    return None


class FusedMixConvBNAct(nn.Module):
    """``act(bn(mixconv(x)))`` with the same submodules (and state dict keys) as the :class:`ConvNormAct` it
    replaces. In eval mode on CUDA tensors (or CPU under :func:`~mixconv.kernels.force_interpreter`) it is one
    Triton launch with the BatchNorm's running statistics folded into the kernel's epilogue; otherwise (training:
    batch statistics) it runs the three modules."""

    def __init__(self, block: ConvNormAct) -> None:
        super().__init__()
        act = _act_name(block.act)
        if not isinstance(block.conv, MixConv2d) or type(block.bn) is not nn.BatchNorm2d or act is None:
            raise ValueError("FusedMixConvBNAct needs a ConvNormAct of MixConv2d, BatchNorm2d and identity/ReLU/SiLU")
        self.conv, self.bn, self.act = block.conv, block.bn, block.act
        self.act_name = act
        self.train(block.training)

    @property
    def out_channels(self) -> int:
        return self.bn.num_features

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The BatchNorm (after the conv's bias, if any) as ``y * scale + bias`` per channel, float32."""
        bn = self.bn
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.running_var.float().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        mean = bn.running_mean.float()
        conv_bias = self.conv.merged_bias()
        if conv_bias is not None:
            mean = mean - conv_bias.float()
        bias = -mean * scale
        if bn.bias is not None:
            bias = bias + bn.bias.float()
        return scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.bn.training or not wants_triton(x):
            return self.act(self.bn(self.conv(x)))
        from mixconv.kernels.ops import mixconv2d

        conv = self.conv
        x, w = conv.triton_operands(x)
        scale, bias = self.folded()
        return mixconv2d(x, w, scale, bias, list(conv.kernel_sizes), list(conv.split_sizes), conv.stride,
                         conv.dilation, conv.padding, self.act_name, False)[0]


def fuse_mixconv_bn_act(model: nn.Module) -> nn.Module:
    """Replace (in place) every ``ConvNormAct`` of a ``MixConv2d``, a ``BatchNorm2d`` and an identity/ReLU/SiLU
    with :class:`FusedMixConvBNAct`; returns ``model``. Parameters, buffers and state dict keys are unchanged."""
    for name, child in list(model.named_children()):
        if isinstance(child, ConvNormAct) and isinstance(child.conv, MixConv2d) and \
                type(child.bn) is nn.BatchNorm2d and _act_name(child.act) is not None:
            setattr(model, name, FusedMixConvBNAct(child))
        else:
            fuse_mixconv_bn_act(child)
    return model
