"""Convolution followed by BatchNorm and an activation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.layers.activations import create_act
from mixconv.layers.grouped_conv import GroupedConv1x1, block_diagonal


def _bn_from_input_applies(conv: nn.Module, bn: nn.Module) -> bool:
    """The static rule for :meth:`ConvNormAct.forward_bn_from_input`: a plain expanding 1x1 conv (more output
    than input channels, stride 1, no padding, no bias: a BN would cancel it, leaving it no gradient) followed by
    a plain ``BatchNorm2d`` with running statistics."""
    return (
        type(conv) in (nn.Conv2d, GroupedConv1x1)
        and conv.bias is None
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.out_channels > conv.in_channels
        and type(bn) is nn.BatchNorm2d
        and bn.affine
        and bn.track_running_stats
    )


class ConvNormAct(nn.Module):
    """``conv -> BatchNorm2d -> act`` around any conv module that exposes ``out_channels``.

    In training, an expanding 1x1 conv and its BatchNorm run as one conv (see :meth:`forward_bn_from_input`);
    ``bn_from_input=False`` keeps the reference computation (conv, then batch statistics of its output).
    """

    def __init__(self, conv: nn.Module, act: str | None = "relu", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(int(conv.out_channels), eps=bn_eps, momentum=bn_momentum)
        self.act = create_act(act)
        self.bn_from_input = _bn_from_input_applies(conv, self.bn)

    @property
    def out_channels(self) -> int:
        return self.bn.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript (eval/export only) keeps the reference path
            # Re-checked per call: convert_sync_batchnorm or a user may have replaced the conv or the BN. A
            # torch.fx trace records the reference conv -> BN -> act (the same function; graph tools such as FX
            # quantization know that pattern, and the fused path's autocast guard reads the device of x).
            if (self.bn_from_input and self.bn.training and not isinstance(x, torch.fx.Proxy)
                    and _bn_from_input_applies(self.conv, self.bn)):
                return self.act(self.forward_bn_from_input(x))
        return self.act(self.bn(self.conv(x)))

    @torch.jit.unused
    def forward_bn_from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Training-mode ``bn(conv(x))`` for a 1x1 conv as one conv, with the batch statistics of the output
        computed from the input's: for ``y = W x`` per pixel, ``mean(y) = W mean(x)`` and
        ``var(y) = diag(W cov(x) W^T)``, so BN folds into the conv's weight and bias. Same function and running
        statistics as the reference; differentiable in everything (autograd).

        Why: the BatchNorm of an expand conv reads and writes the block's widest tensor (6x the input) in both
        passes; the moments of the input cost one small GEMM over the narrow input instead. Measured on this
        project's 2-core Xeon: MixNet-S training step (fp32, batch 32, 224) 17.1 -> 19.2 img/s.
        """
        conv, bn = self.conv, self.bn
        assert isinstance(conv, nn.Conv2d) and bn.running_mean is not None and bn.running_var is not None
        n, c, h, w = x.shape
        count = n * h * w
        acc = torch.promote_types(x.dtype, torch.float32)  # batch statistics in float32 at least, as BatchNorm's
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.permute(0, 2, 3, 1).reshape(count, c).to(acc)  # a view for NHWC float32 input (the model's)
            # sum * (1 / count): the backward is a broadcast view added into x's gradient, not a full tensor.
            mean_x = x2.sum(0) * (1.0 / count)
            # x^T x with one side detached and the gradient doubled: the gradient reaching the Gram matrix is
            # symmetric (var_y is a quadratic form in it), so 2 x G equals autograd's x G + x G^T for one GEMM
            # over the input instead of two (value unchanged: gram + (gram - gram.detach())).
            gram = torch.mm(x2.t().detach(), x2)
            gram = gram + (gram - gram.detach())
            cov_x = gram * (1.0 / count) - torch.outer(mean_x, mean_x)
            dense = block_diagonal(conv.weight, conv.groups).flatten(1).to(acc)
            mean_y = dense @ mean_x
            var_y = ((dense @ cov_x) * dense).sum(1).clamp_min(0.0)
        scale = bn.weight * torch.rsqrt(var_y + bn.eps)
        shift = bn.bias - mean_y * scale
        grouped = conv.groups > 1 and not (isinstance(conv, GroupedConv1x1) and conv.impl == "dense")
        weight = (conv.weight if grouped else dense[:, :, None, None]).to(acc) * scale[:, None, None, None]
        y = F.conv2d(x, weight.to(x.dtype), shift.to(x.dtype), groups=conv.groups if grouped else 1)
        with torch.no_grad():  # running statistics exactly as nn.BatchNorm2d updates them
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean_y.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_((var_y * (count / max(count - 1, 1))).to(bn.running_var.dtype), factor)
        return y
