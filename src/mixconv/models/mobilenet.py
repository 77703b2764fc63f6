"""MixConv-MobileNets: MobileNetV1 and V2 with every depthwise conv replaced by a MixConv.

This is the setting of the MixConv paper's section 2 (Tan & Le 2019, Figure 4): MobileNetV1/V2 whose
3x3 depthwise convolutions become MixConvs with kernel sizes 3x3, 5x5, 7x7 and 9x9 on equal channel groups.
The layouts are torchvision's (``mobilenet_v2``) and the MobileNetV1 paper's, so
``mixify(torchvision.models.mobilenet_v2(), (3, 5, 7, 9))`` has exactly the parameters of
``mobilenet_v2_mixconv``.

A :class:`MobileNetSpec` names one :class:`Depthwise` choice per depthwise layer (13 in V1, 17 in V2), so the
paper's studies (one kernel everywhere, one layer changed, exponential partition, dilation) are typed data;
:func:`mobilenet_from_spec` builds them.
"""
# No ``from __future__ import annotations`` here: torch.fx copies forward's annotations into the code of a
# traced graph, and TorchScript cannot resolve them as strings (timm's FX-then-TorchScript test does that).

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from mixconv.layers import ConvNormAct, MixConv2d
from mixconv.layers.mixed_conv import SPLIT_MODES, check_kernel_sizes
from mixconv.models.builder import make_divisible
from mixconv.models.checkpointing import checkpoint_blocks
from mixconv.models.contract import ContractClassifier, ContractFeatures
from mixconv.models.feature_info import FeatureInfo, select_out_indices
from mixconv.models.registry import register
from mixconv.models.specs import ModelDef, ModelMeta

PAPER_KERNELS = (3, 5, 7, 9)

# MobileNetV1: (output channels, stride) of the 13 depthwise-separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))
# MobileNetV2 (torchvision): expansion t, channels c, repeats n, stride s.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


VERSIONS = (1, 2)


def depthwise_count(version: int) -> int:
    """Depthwise layers of MobileNetV1 (13) or V2 (17)."""
    return len(V1_BLOCKS) if version == 1 else sum(n for _, _, n, _ in V2_SETTING)


@dataclass(frozen=True)
class Depthwise:
    """One depthwise layer: its MixConv kernel sizes (one group each), channel partition and dilation.

    ``Depthwise((9,))`` is a plain 9x9 depthwise conv; ``Depthwise((3,), dilation=4)`` a 3x3 dilated to 9x9's
    receptive field; ``Depthwise((3, 5, 7, 9), "exponential")`` MixConv3579 with channels halving per group.
    """

    kernel_sizes: tuple[int, ...] = (3,)
    split: str = "equal"
    dilation: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_sizes", check_kernel_sizes(self.kernel_sizes))
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_MODES)}, got {self.split!r}")
        if isinstance(self.dilation, bool) or not isinstance(self.dilation, int) or self.dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {self.dilation!r}")

    @property
    def label(self) -> str:
        """``3x3``, ``mix3579``, ``mix3579-exp``, ``3x3-d4``."""
        ks = self.kernel_sizes
        text = f"{ks[0]}x{ks[0]}" if len(ks) == 1 else "mix" + "".join(map(str, ks))
        if self.split != "equal" and len(ks) > 1:
            text += "-exp"
        return text + (f"-d{self.dilation}" if self.dilation > 1 else "")


@dataclass(frozen=True)
class MobileNetSpec:
    """A MixConv-MobileNet: the version, a width multiplier and one :class:`Depthwise` per depthwise layer."""

    version: int
    layers: tuple[Depthwise, ...]
    width_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version must be 1 or 2 (MobileNetV1 or V2), got {self.version!r}")
        layers = tuple(self.layers)
        if any(not isinstance(dw, Depthwise) for dw in layers):
            raise ValueError("layers must hold Depthwise entries")
        n = depthwise_count(self.version)
        if len(layers) != n:
            raise ValueError(f"MobileNetV{self.version} has {n} depthwise layers; got {len(layers)} layer choices")
        object.__setattr__(self, "layers", layers)
        w = self.width_mult
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ValueError(f"width_mult must be a positive number, got {w!r}")

    @classmethod
    def uniform(cls, version: int, dw: Depthwise = Depthwise(), width_mult: float = 1.0) -> "MobileNetSpec":
        """Every depthwise layer the same."""
        if version not in VERSIONS:
            raise ValueError(f"version must be 1 or 2 (MobileNetV1 or V2), got {version!r}")
        return cls(version, (dw,) * depthwise_count(version), width_mult)

    def with_layer(self, index: int, dw: Depthwise) -> "MobileNetSpec":
        """This network with depthwise layer ``index`` (1-based, as the paper counts) replaced by ``dw``."""
        n = len(self.layers)
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= n:
            raise ValueError(f"layer index {index!r} is out of range: MobileNetV{self.version} has {n} depthwise "
                             f"layers (1..{n})")
        layers = list(self.layers)
        layers[index - 1] = dw
        return MobileNetSpec(self.version, tuple(layers), self.width_mult)

    def strides(self) -> tuple[int, ...]:
        """The stride of each depthwise layer (the paper expects the stride-2 layers to gain from large kernels)."""
        if self.version == 1:
            return tuple(s for _, s in V1_BLOCKS)
        return tuple(s if i == 0 else 1 for _, _, n, s in V2_SETTING for i in range(n))


def _dw_conv(c: int, dw: Depthwise, stride: int, act: str) -> ConvNormAct:
    return ConvNormAct(MixConv2d(c, dw.kernel_sizes, stride, dilation=dw.dilation, split=dw.split), act)


def _layers(layers: Optional[Sequence[Depthwise]], version: int, kernel_sizes: Sequence[int],
            split: str) -> tuple[Depthwise, ...]:
    if layers is None:
        return (Depthwise(tuple(kernel_sizes), split),) * depthwise_count(version)
    return MobileNetSpec(version, tuple(layers)).layers  # checks the count


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def _init(module: nn.Module) -> None:
    """torchvision's MobileNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _stage_ends(strides: Sequence[int]) -> list[int]:
    """The index of the last block at each output stride (the stem has stride 2)."""
    reductions, r = [], 2
    for s in strides:
        r *= s
        reductions.append(r)
    return [i for i, red in enumerate(reductions) if i + 1 == len(reductions) or reductions[i + 1] != red]


class _Classifier(ContractClassifier):
    """The MobileNets' side of the timm contract (:class:`~mixconv.models.contract.ContractClassifier`):
    ``features`` holds the blocks (then, in V2, the 1x1 head conv); a feature stage ends at each change of
    output stride."""

    def _make_head(self, num_blocks: int, strides: Sequence[int], channels: Sequence[int], num_classes: int,
                   drop_rate: float, global_pool: str) -> None:
        self.num_blocks = num_blocks
        self.stage_ends = _stage_ends(strides)
        red = [2 * math.prod(strides[: i + 1]) for i in range(len(strides))]
        info = FeatureInfo([{"num_chs": channels[i], "reduction": red[i], "module": f"features.{i}"}
                            for i in self.stage_ends])
        self.init_head(self.num_features, num_classes, global_pool, drop_rate, info)

    def init_classifier(self, classifier: nn.Module) -> None:
        _init(classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.forward_trunk_checkpointed(x)
        return self.features(x)

    def stage_modules(self) -> list[nn.Sequential]:
        starts = [0] + [e + 1 for e in self.stage_ends[:-1]]
        return [self.features[a: e + 1] for a, e in zip(starts, self.stage_ends)]

    def head_module(self) -> nn.Module:
        return self.features[-1] if len(self.features) > self.num_blocks else nn.Identity()

    def truncate_stages(self, num_stages: int) -> None:
        end = self.stage_ends[num_stages - 1] + 1
        self.features = self.features[:end]
        self.num_blocks, self.stage_ends = end, self.stage_ends[:num_stages]

    def remove_head_module(self) -> None:
        self.features = self.features[: self.num_blocks]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The stem, then each block (each stage when ``coarse``), V2's head conv with the last."""
        # V2's head conv first: the first matching pattern decides, and it joins the group before it.
        blocks: list[tuple[str, Any]] = []
        if len(self.features) > self.num_blocks:
            blocks.append((rf"^features\.{self.num_blocks}\.", (99999,)))
        if not coarse:
            blocks.append((r"^features\.(\d+)\.", None))
        else:
            starts = [0] + [e + 1 for e in self.stage_ends[:-1]]
            blocks += [(r"^features\.(?:" + "|".join(str(i) for i in range(a, e + 1)) + r")\.", (k,))
                       for k, (a, e) in enumerate(zip(starts, self.stage_ends))]
        return {"stem": r"^stem\.", "blocks": blocks}


class MobileNetFeatures(ContractFeatures):
    """A MixConv-MobileNet's trunk returning the feature maps of the stages in ``out_indices`` (output strides
    2, 4, 8, 16, 32). Built from the classifier, whose module names it keeps, so its weights load unchanged."""

    def __init__(self, model: _Classifier, out_indices: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        info = model.feature_info
        self.out_indices = select_out_indices(len(info), out_indices)
        self.return_blocks = [model.stage_ends[i] for i in self.out_indices]
        model.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        self.in_chans, self.meta, self.mobilenet_spec = model.in_chans, model.meta, model.mobilenet_spec
        self.stem, self.features = model.stem, model.features
        self.feature_info = FeatureInfo(info.info, self.out_indices)
        self.grad_checkpointing = False

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem\.", "blocks": r"^features\.(\d+)\."}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out: list[torch.Tensor] = []
        for i, block in enumerate(self.features):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = self.forward_block_checkpointed(block, x)
            else:
                x = block(x)
            if i in self.return_blocks:
                out.append(x)
        return out

    @torch.jit.unused
    def forward_block_checkpointed(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_blocks([block], x)


class MixConvMobileNetV1(_Classifier):
    """MobileNetV1 (Howard et al. 2017) whose depthwise convs are MixConvs with ``kernel_sizes``."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 kernel_sizes: Sequence[int] = PAPER_KERNELS, width_mult: float = 1.0, split: str = "equal",
                 layers: Optional[Sequence[Depthwise]] = None, global_pool: str = "avg") -> None:
        super().__init__()
        self.in_chans = in_chans
        self.meta = ModelMeta(source=_SOURCE)
        c = make_divisible(32 * width_mult)
        self.stem = ConvNormAct(_conv(in_chans, c, 3, 2), "relu")
        blocks, channels = [], []
        self.mobilenet_spec = MobileNetSpec(1, _layers(layers, 1, kernel_sizes, split), width_mult)
        for (out, stride), dw in zip(V1_BLOCKS, self.mobilenet_spec.layers):
            out = make_divisible(out * width_mult)
            blocks.append(nn.Sequential(
                _dw_conv(c, dw, stride, "relu"),
                ConvNormAct(_conv(c, out), "relu"),
            ))
            c = out
            channels.append(c)
        self.features = nn.Sequential(*blocks)
        self.num_features = c
        self._make_head(len(blocks), self.mobilenet_spec.strides(), channels, num_classes, drop_rate, global_pool)
        _init(self)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), MixConv (ReLU6), linear 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, dw: Depthwise):
        super().__init__()
        mid = cin * expansion
        self.out_channels = cout
        self.has_skip = stride == 1 and cin == cout
        self.expand = ConvNormAct(_conv(cin, mid), "relu6") if expansion != 1 else nn.Identity()
        self.dw = _dw_conv(mid, dw, stride, "relu6")
        self.project = ConvNormAct(_conv(mid, cout), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.has_skip else y


class MixConvMobileNetV2(_Classifier):
    """MobileNetV2 (Sandler et al. 2018, torchvision's layout) whose depthwise convs are MixConvs."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 kernel_sizes: Sequence[int] = PAPER_KERNELS, width_mult: float = 1.0, split: str = "equal",
                 layers: Optional[Sequence[Depthwise]] = None, global_pool: str = "avg") -> None:
        super().__init__()
        self.in_chans = in_chans
        self.meta = ModelMeta(source=_SOURCE)
        c = make_divisible(32 * width_mult)
        self.stem = ConvNormAct(_conv(in_chans, c, 3, 2), "relu6")
        blocks: list[nn.Module] = []
        self.mobilenet_spec = MobileNetSpec(2, _layers(layers, 2, kernel_sizes, split), width_mult)
        choices = iter(self.mobilenet_spec.layers)
        for t, out, n, s in V2_SETTING:
            out = make_divisible(out * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t, next(choices)))
                c = out
        channels = [b.out_channels for b in blocks]
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        blocks.append(ConvNormAct(_conv(c, self.num_features), "relu6"))
        self.features = nn.Sequential(*blocks)
        self._make_head(len(blocks) - 1, self.mobilenet_spec.strides(), channels, num_classes, drop_rate, global_pool)
        _init(self)


_SOURCE = "Tan & Le 2019, MixConv, section 2 (MixConv-MobileNet, kernels 3/5/7/9)"


def mobilenet_v1_mixconv(num_classes: int = 1000, in_chans: int = 3, drop_rate: float | None = None,
                         global_pool: str = "avg") -> nn.Module:
    """MixConv-MobileNetV1 of the paper's section 2 (kernels 3/5/7/9, equal split)."""
    return MixConvMobileNetV1(num_classes, in_chans, 0.0 if drop_rate is None else drop_rate,
                              global_pool=global_pool)


def mobilenet_v2_mixconv(num_classes: int = 1000, in_chans: int = 3, drop_rate: float | None = None,
                         global_pool: str = "avg") -> nn.Module:
    """MixConv-MobileNetV2 of the paper's section 2 (kernels 3/5/7/9, equal split)."""
    return MixConvMobileNetV2(num_classes, in_chans, 0.2 if drop_rate is None else drop_rate,
                              global_pool=global_pool)


def mobilenet_from_spec(spec: MobileNetSpec, num_classes: int = 1000, in_chans: int = 3,
                        drop_rate: float | None = None, global_pool: str = "avg") -> nn.Module:
    """The network a :class:`MobileNetSpec` describes (dropout: V1 0.0, V2 0.2, as the registered models)."""
    if spec.version == 1:
        return MixConvMobileNetV1(num_classes, in_chans, 0.0 if drop_rate is None else drop_rate,
                                  width_mult=spec.width_mult, layers=spec.layers, global_pool=global_pool)
    return MixConvMobileNetV2(num_classes, in_chans, 0.2 if drop_rate is None else drop_rate,
                              width_mult=spec.width_mult, layers=spec.layers, global_pool=global_pool)


register(ModelDef("mobilenet_v1_mixconv", None, ModelMeta(source=_SOURCE), builder=mobilenet_v1_mixconv))
register(ModelDef("mobilenet_v2_mixconv", None, ModelMeta(source=_SOURCE), builder=mobilenet_v2_mixconv))
