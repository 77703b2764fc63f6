"""The MixNet network, its inverted-residual block, and the features-only variant."""
# No ``from __future__ import annotations`` here: torch.fx copies forward's annotations into the code of a
# traced graph, and TorchScript cannot resolve them as strings (timm's FX-then-TorchScript test does that).

import math
from typing import Any, Sequence

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
from mixconv.models.checkpointing import checkpoint_blocks
from mixconv.models.contract import (
    ContractClassifier,
    ContractFeatures,
    check_num_classes,
)
from mixconv.models.feature_info import FeatureInfo, select_out_indices
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


class MixNet(ContractClassifier):
    """A MixNet image classifier built from a :class:`MixNetSpec`.

    ``forward_features`` returns the head-conv feature map (``num_features`` channels, stride 32),
    ``forward_head`` pools (``global_pool``), applies dropout and the classifier; ``forward`` is both. The rest
    of timm's model API comes from :class:`~mixconv.models.contract.ContractClassifier`.
    """

    def __init__(
        self,
        spec: MixNetSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        meta: ModelMeta | None = None,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        _check_in_chans(in_chans)
        self.spec = spec
        self.meta = meta or ModelMeta()
        self.in_chans = in_chans
        self.channels_last = True  # run the trunk in NHWC (see _channels_last); False gives the plain NCHW model
        net = resolve(spec, drop_path_rate)
        self.stem, self.stages = _build_trunk(net, in_chans, len(net.stages))
        head_in = net.stages[-1][-1].out_channels
        self.head: nn.Module = ConvNormAct(nn.Conv2d(head_in, net.num_features, 1, bias=False), net.stem_act,
                                           net.bn_eps)
        self.init_head(net.num_features, num_classes, global_pool,
                       spec.drop_rate if drop_rate is None else drop_rate, FeatureInfo(net.feature_info()))
        init_weights(self)

    def init_classifier(self, classifier: nn.Module) -> None:
        init_weights(classifier)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_last(x) if self.channels_last else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = _channels_last(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.forward_trunk_checkpointed(x)
        return self.head(self.stages(x))

    def stage_modules(self) -> list[nn.Sequential]:
        return list(self.stages)

    def head_module(self) -> nn.Module:
        return self.head

    def truncate_stages(self, num_stages: int) -> None:
        self.stages = self.stages[:num_stages]

    def remove_head_module(self) -> None:
        self.head = nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The stem, then each block (each stage when ``coarse``), the head conv with the last (timm's EfficientNet
        groups)."""
        return {"stem": r"^stem\.",
                "blocks": [(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                           (r"^head\.", (99999,))]}


def _check_in_chans(in_chans: object) -> None:
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")


class MixNetFeatures(ContractFeatures):
    """The MixNet trunk returning the feature maps of the stages in ``out_indices``.

    Stage ``i`` ends at output stride ``2 ** (i + 1)`` (2, 4, 8, 16, 32). Module names equal the classifier's,
    so a classifier's weights load into it (the head keys are simply not used). ``feature_info`` describes
    every stage; its ``channels()``/``reduction()`` answer for ``out_indices`` (timm's features model).
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
        _check_in_chans(in_chans)
        net = resolve(spec, drop_path_rate)
        self.out_indices = select_out_indices(len(net.stages), out_indices)
        self.spec = spec
        self.meta = meta or ModelMeta()
        self.in_chans = in_chans
        self.channels_last = True  # as MixNet.channels_last
        self.grad_checkpointing = False
        self.stem, self.stages = _build_trunk(net, in_chans, max(self.out_indices) + 1)
        self.feature_info = FeatureInfo(net.feature_info(), self.out_indices)
        init_weights(self)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem\.", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last:
            x = _channels_last(x)
        x = self.stem(x)
        out: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = self.forward_stage_checkpointed(stage, x)
            else:
                x = stage(x)
            if i in self.out_indices:
                out.append(x)
        return out

    @torch.jit.unused
    def forward_stage_checkpointed(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_blocks(stage, x)
