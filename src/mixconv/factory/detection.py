"""MixNet backbones for torchvision's detection and segmentation models.

:func:`detection_backbone` returns a module shaped like torchvision's ``BackboneWithFPN`` (``body``, ``fpn``,
``out_channels``; ``forward`` returns an ``OrderedDict`` of feature maps), so it plugs into ``FasterRCNN``,
``MaskRCNN``, ``RetinaNet`` or ``FCOS`` as their ``backbone``. torchvision is needed (``pip install
mixconv[detection]``); it is imported only here.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mixconv.factory.create import create_model
from mixconv.models.mixnet import MixNetFeatures


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace (in place) every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` with the same statistics:
    what torchvision's detection backbones use, since detection batches are too small for batch statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for buf in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, buf).copy_(getattr(child, buf).detach())
                setattr(parent, name, frozen)
    return module


class MixNetBackbone(nn.Module):
    """A :class:`MixNetFeatures` trunk (``body``) with an optional FPN (``fpn``), as torchvision's
    ``BackboneWithFPN``.

    ``forward`` returns an ``OrderedDict``: with the FPN, its levels (``"0"``, ``"1"``, ... and the extra
    block's, e.g. ``"pool"``), each ``out_channels`` wide; without, the last feature map under ``"0"``.
    """

    def __init__(self, body: MixNetFeatures, fpn: nn.Module | None, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        if self.fpn is None:
            return OrderedDict([("0", feats[-1])])
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def detection_backbone(
    name: str | Path = "mixnet_s",
    *,
    fpn: bool = True,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    pretrained: str | Path | None = None,
    extra_blocks: nn.Module | None = None,
    freeze_bn: bool = False,
) -> MixNetBackbone:
    """A MixNet backbone for torchvision's detection models.

    Args:
        name: registered MixNet name or YAML config.
        fpn: put a ``torchvision.ops.FeaturePyramidNetwork`` on the feature maps; without it the backbone returns
            only the last selected map and ``out_channels`` is its width.
        out_indices: feature stages (0..4 = strides 2..32); default ``(1, 2, 3, 4)`` with the FPN (the four
            levels torchvision's default anchors and RoI pooling expect, plus the max-pool level), ``(4,)``
            without.
        out_channels: width of every FPN level.
        pretrained: a local timm or mixconv checkpoint for the trunk (the classifier head is ignored).
        extra_blocks: the FPN's extra levels (default ``LastLevelMaxPool()``; RetinaNet uses
            ``LastLevelP6P7(out_channels, out_channels)``).
        freeze_bn: replace BatchNorm by ``FrozenBatchNorm2d`` (as torchvision does with pretrained backbones).
    """
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if out_indices is None:
        out_indices = (1, 2, 3, 4) if fpn else (4,)
    body = create_model(name, features_only=True, out_indices=tuple(out_indices), pretrained=pretrained)
    if not isinstance(body, MixNetFeatures):
        raise ValueError(f"{name!r} has no features-only form; detection backbones are MixNets")
    if freeze_bn:
        freeze_batchnorm(body)
    if not fpn:
        return MixNetBackbone(body, None, body.channels()[-1])
    pyramid = FeaturePyramidNetwork(body.channels(), out_channels,
                                    extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
    return MixNetBackbone(body, pyramid, out_channels)
