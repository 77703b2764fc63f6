"""Resolve a :class:`MixNetSpec` into concrete blocks: width/depth scaling, drop-path ramp, feature stages."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from mixconv.models.specs import BlockRow, MixNetSpec


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below ``round_limit`` of it.

    This is the MnasNet/EfficientNet "10% rule" every MixNet reference uses for channel counts.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def round_channels(channels: int, multiplier: float = 1.0) -> int:
    """Scale a channel count by the width multiplier and round it with :func:`make_divisible`."""
    return make_divisible(channels * multiplier)


def scale_repeats_timm(repeats: Sequence[int], depth_mult: float) -> list[int]:
    """Scale the repeats of one stage as the TF/timm MixNet references do.

    The stage total is scaled and rounded to the nearest int (timm's ``depth_trunc="round"`` for MixNet); the
    rows then share it in proportion, filled from the last row backwards, each row keeping at least one block.
    """
    total = sum(repeats)
    total_scaled = max(1, round(total * depth_mult))
    scaled: list[int] = []
    for r in reversed(repeats):
        rs = max(1, round(r / total * total_scaled))
        scaled.append(rs)
        total -= r
        total_scaled -= rs
    return scaled[::-1]


def scale_repeats_ceil(repeats: Sequence[int], depth_mult: float) -> list[int]:
    """Scale each row's repeats independently with ``ceil`` (the YAML schema's ``dep_mul``)."""
    return [int(math.ceil(r * depth_mult)) for r in repeats]


@dataclass(frozen=True)
class ResolvedBlock:
    """One concrete block: every channel count decided, ready to build."""

    in_channels: int
    mid_channels: int
    out_channels: int
    kernel_sizes: tuple[int, ...]
    stride: int
    exp_groups: int
    poi_groups: int
    se_channels: int | None
    act: str
    split: str
    dilation: int
    drop_path: float

    @property
    def has_expand(self) -> bool:
        return self.mid_channels != self.in_channels or self.exp_groups != 1

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class ResolvedNet:
    """A resolved network: stem width, blocks grouped by output stride, and head settings."""

    stem_channels: int
    stages: tuple[tuple[ResolvedBlock, ...], ...]
    reductions: tuple[int, ...]
    num_features: int
    padding: str
    bn_eps: float
    stem_act: str

    @property
    def blocks(self) -> tuple[ResolvedBlock, ...]:
        return tuple(b for stage in self.stages for b in stage)

    def feature_info(self) -> list[dict]:
        """One entry per stage: channels, reduction (output stride) and module name."""
        return [
            {"num_chs": stage[-1].out_channels, "reduction": red, "module": f"stages.{i}"}
            for i, (stage, red) in enumerate(zip(self.stages, self.reductions))
        ]


def scaled_repeats(spec: MixNetSpec) -> tuple[tuple[int, ...], ...]:
    """Each row's repeats after depth scaling with the spec's rule, grouped as ``spec.stages``."""
    scale = scale_repeats_timm if spec.depth_rule == "timm" else scale_repeats_ceil
    return tuple(tuple(scale([row.num_blocks for row in stage], spec.depth_mult)) for stage in spec.stages)


def _scaled_rows(spec: MixNetSpec) -> list[tuple[BlockRow, int]]:
    return [pair for stage, repeats in zip(spec.stages, scaled_repeats(spec)) for pair in zip(stage, repeats)]


def resolve(spec: MixNetSpec, drop_path_rate: float = 0.0) -> ResolvedNet:
    """Apply width and depth scaling and the drop-path ramp, and group blocks by output stride.

    Stages of the result are the runs of blocks with the same output stride (2, 4, 8, 16, 32 for MixNet), so
    the module layout and feature maps do not depend on how a config happened to group its rows.
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    rows = _scaled_rows(spec)
    total = sum(n for _, n in rows)
    stem = round_channels(spec.stem_channels, spec.width_mult)
    in_ch, reduction, idx = stem, 2, 0
    stages: list[list[ResolvedBlock]] = []
    reductions: list[int] = []
    for row, repeats in rows:
        out_ch = round_channels(row.out_channels, spec.width_mult)
        for i in range(repeats):
            stride = row.stride if i == 0 else 1
            mid = in_ch if row.expansion == 1 else make_divisible(in_ch * row.expansion)
            se = None if row.se_reduction is None else max(1, int(round(in_ch / row.se_reduction)))
            block = ResolvedBlock(
                in_channels=in_ch, mid_channels=mid, out_channels=out_ch, kernel_sizes=row.kernel_sizes,
                stride=stride, exp_groups=row.exp_groups, poi_groups=row.poi_groups, se_channels=se,
                act=row.act, split=row.split, dilation=row.dilation, drop_path=drop_path_rate * idx / total,
            )
            reduction *= stride
            if not stages or reduction != reductions[-1]:
                stages.append([])
                reductions.append(reduction)
            stages[-1].append(block)
            in_ch, idx = out_ch, idx + 1
    return ResolvedNet(
        stem_channels=stem, stages=tuple(tuple(s) for s in stages), reductions=tuple(reductions),
        num_features=spec.num_features, padding=spec.padding, bn_eps=spec.bn_eps, stem_act=spec.stem_act,
    )
