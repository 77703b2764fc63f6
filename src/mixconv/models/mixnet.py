"""The MixNet network, its inverted-residual block, and the features-only variant."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mixconv.layers import (
    ConvNormAct,
    DropPath,
    MixConv2d,
    SqueezeExcite,
    create_conv2d,
    grouped_conv1x1,
)
from mixconv.models.builder import ResolvedBlock, ResolvedNet, resolve
from mixconv.models.specs import MixNetSpec, ModelMeta


class MixNetBlock(nn.Module):
    """Inverted residual: grouped 1x1 expand, MixConv, squeeze-excite, grouped 1x1 project, residual.

    With no expansion (MixNet's first block) the expand conv is absent and the block is a depthwise-separable
    conv. The project conv has no activation; the residual is added when stride is 1 and channels match.
    """

    def __init__(self, cfg: ResolvedBlock, padding: str = "symmetric", bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.has_skip = cfg.has_skip
        self.expand = (
            ConvNormAct(grouped_conv1x1(cfg.in_channels, cfg.mid_channels, cfg.exp_groups), cfg.act, bn_eps)
            if cfg.has_expand
            else nn.Identity()
        )
        dw = MixConv2d(cfg.mid_channels, cfg.kernel_sizes, cfg.stride, cfg.dilation, cfg.split, padding)
        self.dw = ConvNormAct(dw, cfg.act, bn_eps)
        self.se = SqueezeExcite(cfg.mid_channels, cfg.se_channels, cfg.act) if cfg.se_channels else nn.Identity()
        self.project = ConvNormAct(grouped_conv1x1(cfg.mid_channels, cfg.out_channels, cfg.poi_groups), None, bn_eps)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 and self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.project(self.se(self.dw(self.expand(x))))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """The trunk runs in NHWC whatever the caller passes: oneDNN's depthwise and 1x1 convs (forward and both
    gradients) and BatchNorm run natively in NHWC, where an NCHW tensor would be reordered in and out of every
    conv; converting the input once is a single copy of the image batch, and the values are unchanged."""
    return x.contiguous(memory_format=torch.channels_last)


def _build_trunk(net: ResolvedNet, in_chans: int, num_stages: int) -> tuple[ConvNormAct, nn.Sequential]:
    stem_conv = create_conv2d(in_chans, net.stem_channels, 3, stride=2, padding=net.padding)
    stem = ConvNormAct(stem_conv, net.stem_act, net.bn_eps)
    stages = nn.Sequential(
        *(nn.Sequential(*(MixNetBlock(b, net.padding, net.bn_eps) for b in stage)) for stage in net.stages[:num_stages])
    )
    return stem, stages


def init_weights(module: nn.Module) -> None:
    """The TF MnasNet/EfficientNet initialisation the MixNet references use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class MixNet(nn.Module):
    """A MixNet image classifier built from a :class:`MixNetSpec`.

    ``forward_features`` returns the head-conv feature map (``num_features`` channels, stride 32),
    ``forward_head`` pools, applies dropout and the classifier; ``forward`` is both.
    """

    def __init__(
        self,
        spec: MixNetSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        meta: ModelMeta | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        self.spec = spec
        self.meta = meta or ModelMeta()
        self.in_chans = in_chans
        self.channels_last = True  # run the trunk in NHWC (see _channels_last); False gives the plain NCHW model
        self.drop_rate = float(spec.drop_rate if drop_rate is None else drop_rate)
        net = resolve(spec, drop_path_rate)
        self.stem, self.stages = _build_trunk(net, in_chans, len(net.stages))
        head_in = net.stages[-1][-1].out_channels
        self.head = ConvNormAct(nn.Conv2d(head_in, net.num_features, 1, bias=False), net.stem_act, net.bn_eps)
        self.num_features = net.num_features
        self.feature_info = net.feature_info()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(self.drop_rate)
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        init_weights(self)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            init_weights(self.classifier)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = _channels_last(x)
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MixNetFeatures(nn.Module):
    """The MixNet trunk returning the feature maps of the stages in ``out_indices``.

    Stage ``i`` ends at output stride ``2 ** (i + 1)`` (2, 4, 8, 16, 32). Module names equal the classifier's,
    so a classifier's weights load into it (the head keys are simply not used).
    """

    def __init__(
        self,
        spec: MixNetSpec,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        meta: ModelMeta | None = None,
    ) -> None:
        super().__init__()
        net = resolve(spec, drop_path_rate)
        n = len(net.stages)
        indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n - 1}] (or negative), got {out_indices!r}")
        self.out_indices = tuple(sorted({i % n for i in indices}))
        self.spec = spec
        self.meta = meta or ModelMeta()
        self.in_chans = in_chans
        self.channels_last = True  # as MixNet.channels_last
        self.stem, self.stages = _build_trunk(net, in_chans, max(self.out_indices) + 1)
        all_info = net.feature_info()
        self.feature_info = [all_info[i] for i in self.out_indices]
        init_weights(self)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last:
            x = _channels_last(x)
        x = self.stem(x)
        out: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out.append(x)
        return out
