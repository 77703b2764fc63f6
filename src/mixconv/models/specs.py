"""MixNet architectures as typed, immutable data.

A :class:`BlockRow` is one row of the paper's architecture table: a block repeated ``num_blocks`` times.
A :class:`MixNetSpec` is a whole network: stem, stages of rows, width/depth multipliers and head.
:func:`mixconv.models.builder.resolve` turns a spec into concrete per-block channel counts; modules are
built only from that resolved form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from mixconv.layers.activations import canonical_act_name
from mixconv.layers.mixed_conv import SPLIT_MODES, check_kernel_sizes
from mixconv.layers.padding import PADDING_MODES

DepthRule = Literal["ceil", "timm"]
DEPTH_RULES = ("ceil", "timm")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class BlockRow:
    """One row of a MixNet table: an inverted-residual block repeated ``num_blocks`` times.

    Attributes:
        kernel_sizes: depthwise kernel size of each MixConv channel group.
        out_channels: output channels (before width scaling).
        num_blocks: repeats (before depth scaling); only the first repeat uses ``stride``.
        stride: stride of the first repeat.
        expansion: expansion ratio of the 1x1 expand conv; 1 means no expand conv (a depthwise-separable
            block, as MixNet's first block).
        exp_groups: groups of the 1x1 expand conv.
        poi_groups: groups of the 1x1 project (point-wise) conv.
        se_reduction: squeeze-excite width is ``block input channels / se_reduction``; ``None`` means no SE.
        act: activation name.
        split: channel partition of the MixConv (``equal`` or ``exponential``).
        dilation: dilation of every MixConv group.
    """

    kernel_sizes: tuple[int, ...]
    out_channels: int
    num_blocks: int = 1
    stride: int = 1
    expansion: int = 1
    exp_groups: int = 1
    poi_groups: int = 1
    se_reduction: Optional[float] = None
    act: str = "relu"
    split: str = "equal"
    dilation: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_sizes", check_kernel_sizes(self.kernel_sizes))
        for name in ("out_channels", "num_blocks", "stride", "expansion", "exp_groups", "poi_groups", "dilation"):
            _positive_int(name, getattr(self, name))
        if self.se_reduction is not None:
            _positive_number("se_reduction", self.se_reduction)
        object.__setattr__(self, "act", canonical_act_name(self.act))
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_MODES)}, got {self.split!r}")


@dataclass(frozen=True)
class MixNetSpec:
    """A whole MixNet: stem conv, stages of :class:`BlockRow`, 1x1 head conv, pooling and classifier.

    Attributes:
        stem_channels: output channels of the 3x3 stride-2 stem conv (before width scaling).
        stages: the rows, grouped in stages; depth scaling with ``depth_rule="timm"`` works per stage.
        width_mult: channel multiplier; channels are rounded to multiples of 8, never below 90% of the target.
        depth_mult: repeat multiplier.
        depth_rule: ``"ceil"`` scales each row's repeats with ``ceil`` (the YAML schema); ``"timm"`` scales a
            stage's total (rounded) and distributes it over its rows as the TF/timm references do.
        num_features: width of the head conv (not width-scaled).
        drop_rate: dropout before the classifier.
        padding: ``symmetric`` or ``same`` (TensorFlow SAME, for TF-ported weights).
        bn_eps: BatchNorm epsilon (1e-5 PyTorch, 1e-3 TF ports).
        stem_act: activation of the stem and head.
    """

    stem_channels: int
    stages: tuple[tuple[BlockRow, ...], ...]
    width_mult: float = 1.0
    depth_mult: float = 1.0
    depth_rule: DepthRule = "ceil"
    num_features: int = 1536
    drop_rate: float = 0.0
    padding: str = "symmetric"
    bn_eps: float = 1e-5
    stem_act: str = "relu"

    def __post_init__(self) -> None:
        _positive_int("stem_channels", self.stem_channels)
        _positive_int("num_features", self.num_features)
        _positive_number("width_mult", self.width_mult)
        _positive_number("depth_mult", self.depth_mult)
        _positive_number("bn_eps", self.bn_eps)
        stages = tuple(tuple(stage) for stage in self.stages)
        if not stages or any(not stage for stage in stages):
            raise ValueError("a MixNet needs at least one stage, and every stage at least one block row")
        for stage in stages:
            for row in stage:
                if not isinstance(row, BlockRow):
                    raise ValueError(f"stages must hold BlockRow entries, got {type(row).__name__}")
        object.__setattr__(self, "stages", stages)
        if self.depth_rule not in DEPTH_RULES:
            raise ValueError(f"depth_rule must be one of {', '.join(DEPTH_RULES)}, got {self.depth_rule!r}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}, got {self.padding!r}")
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, (int, float)) or not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be a number in [0, 1), got {self.drop_rate!r}")
        object.__setattr__(self, "stem_act", canonical_act_name(self.stem_act))


@dataclass(frozen=True)
class ModelMeta:
    """What a user needs besides the architecture: preprocessing and the reference ImageNet accuracy."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    top1: Optional[float] = None
    top5: Optional[float] = None
    paper_macs: Optional[int] = None
    source: str = ""


@dataclass(frozen=True)
class ModelDef:
    """A registered model: its name, architecture and metadata.

    A MixNet is described by ``spec``; any other network (e.g. the MixConv-MobileNets) by ``builder``, a
    function ``builder(num_classes=..., in_chans=..., drop_rate=...)`` returning the module, with
    ``spec=None``. Exactly one of the two is given.
    """

    name: str
    spec: Optional[MixNetSpec]
    meta: ModelMeta = field(default_factory=ModelMeta)
    builder: Optional[Callable[..., Any]] = None

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.builder is None):
            raise ValueError(f"model {self.name!r}: give exactly one of spec (a MixNetSpec) or builder (a function)")
