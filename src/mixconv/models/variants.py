"""The registered MixNet variants: the paper's architecture tables (Tan & Le 2019, Figure 5) as data.

Each table is grouped in the six stages of the TF reference; stage grouping matters only for the reference
depth rule used by MixNet-XL/XXL. Feature stages are derived from strides, not from this grouping.
"""
from __future__ import annotations

from dataclasses import replace

from mixconv.models.registry import register
from mixconv.models.specs import BlockRow, MixNetSpec, ModelDef, ModelMeta


def _relu(k: tuple[int, ...], c: int, n: int = 1, s: int = 1, e: int = 1, eg: int = 1, pg: int = 1) -> BlockRow:
    return BlockRow(kernel_sizes=k, out_channels=c, num_blocks=n, stride=s, expansion=e, exp_groups=eg, poi_groups=pg)


def _swish(k: tuple[int, ...], c: int, n: int, s: int, e: int, eg: int, pg: int, se: int) -> BlockRow:
    return BlockRow(
        kernel_sizes=k, out_channels=c, num_blocks=n, stride=s, expansion=e, exp_groups=eg, poi_groups=pg,
        se_reduction=se, act="swish",
    )


# MixNet-S: paper Figure 5(a).     kernels          out  n  s  e  eg pg se
MIXNET_S_STAGES = (
    (_relu((3,), 16),),
    (_relu((3,), 24, 1, 2, 6, 2, 2), _relu((3,), 24, 1, 1, 3, 2, 2)),
    (_swish((3, 5, 7), 40, 1, 2, 6, 1, 1, 2), _swish((3, 5), 40, 3, 1, 6, 2, 2, 2)),
    (_swish((3, 5, 7), 80, 1, 2, 6, 1, 2, 4), _swish((3, 5), 80, 2, 1, 6, 1, 2, 4)),
    (_swish((3, 5, 7), 120, 1, 1, 6, 2, 2, 2), _swish((3, 5, 7, 9), 120, 2, 1, 3, 2, 2, 2)),
    (_swish((3, 5, 7, 9, 11), 200, 1, 2, 6, 1, 1, 2), _swish((3, 5, 7, 9), 200, 2, 1, 6, 1, 2, 2)),
)

# MixNet-M: paper Figure 5(b).     kernels          out  n  s  e  eg pg se
MIXNET_M_STAGES = (
    (_relu((3,), 24),),
    (_relu((3, 5, 7), 32, 1, 2, 6, 2, 2), _relu((3,), 32, 1, 1, 3, 2, 2)),
    (_swish((3, 5, 7, 9), 40, 1, 2, 6, 1, 1, 2), _swish((3, 5), 40, 3, 1, 6, 2, 2, 2)),
    (_swish((3, 5, 7), 80, 1, 2, 6, 1, 1, 4), _swish((3, 5, 7, 9), 80, 3, 1, 6, 2, 2, 4)),
    (_swish((3,), 120, 1, 1, 6, 1, 1, 2), _swish((3, 5, 7, 9), 120, 3, 1, 3, 2, 2, 2)),
    (_swish((3, 5, 7, 9), 200, 1, 2, 6, 1, 1, 2), _swish((3, 5, 7, 9), 200, 3, 1, 6, 1, 2, 2)),
)

MIXNET_S = MixNetSpec(stem_channels=16, stages=MIXNET_S_STAGES, drop_rate=0.2)
MIXNET_M = MixNetSpec(stem_channels=24, stages=MIXNET_M_STAGES, drop_rate=0.25)
# L, XL and XXL scale MixNet-M; XL/XXL use the reference per-stage depth rule.
MIXNET_L = replace(MIXNET_M, width_mult=1.3)
MIXNET_XL = replace(MIXNET_M, width_mult=1.6, depth_mult=1.2, depth_rule="timm")
MIXNET_XXL = replace(MIXNET_M, width_mult=2.4, depth_mult=1.3, depth_rule="timm")


def _tf(spec: MixNetSpec) -> MixNetSpec:
    """TensorFlow-ported weights need TF SAME padding and TF's BatchNorm epsilon."""
    return replace(spec, padding="same", bn_eps=1e-3)


# Reference ImageNet accuracy: timm's model cards (seed 002 and its TF-port twin); None where none is published.
_PAPER = "Tan & Le 2019, MixConv, Table/Figure 5"
register(ModelDef("mixnet_s", MIXNET_S, ModelMeta(top1=75.99, top5=92.79, paper_macs=256_000_000, source=_PAPER)))
register(ModelDef("mixnet_m", MIXNET_M, ModelMeta(top1=77.27, top5=93.42, paper_macs=360_000_000, source=_PAPER)))
register(ModelDef("mixnet_l", MIXNET_L, ModelMeta(top1=78.98, top5=94.18, paper_macs=565_000_000, source=_PAPER)))
register(ModelDef("mixnet_xl", MIXNET_XL, ModelMeta(top1=80.47, top5=94.93, source="timm (MixNet-M x1.6 w, x1.2 d)")))
register(ModelDef("mixnet_xxl", MIXNET_XXL, ModelMeta(source="timm (MixNet-M x2.4 w, x1.3 d)")))
register(ModelDef("tf_mixnet_s", _tf(MIXNET_S), ModelMeta(top1=75.68, top5=92.64, paper_macs=256_000_000, source=_PAPER)))
register(ModelDef("tf_mixnet_m", _tf(MIXNET_M), ModelMeta(top1=76.96, top5=93.16, paper_macs=360_000_000, source=_PAPER)))
register(ModelDef("tf_mixnet_l", _tf(MIXNET_L), ModelMeta(top1=78.78, top5=94.00, paper_macs=565_000_000, source=_PAPER)))
