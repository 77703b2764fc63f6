"""The arms of the paper's studies (Tan & Le 2019, sections 2 and 3) as typed data.

Every arm is a :class:`~mixconv.models.mobilenet.MobileNetSpec`: MobileNetV1 or V2 with one
:class:`~mixconv.models.mobilenet.Depthwise` choice per depthwise layer.

- ``kernels`` (Figure 4): depthwise kxk everywhere for k = 3..K against MixConv {3}, {3,5}, ..., {3,...,K};
- ``layers`` (section 3.1): the all-3x3 network with one layer at a time a 9x9 depthwise conv or MixConv3579;
- ``partition`` (section 3.2): MixConv {3,...,k} with equal against exponential channel partition;
- ``dilation`` (section 3.3): a kxk kernel against a 3x3 kernel dilated to the same receptive field
  (dilation (k-1)/2), every layer.

An arm's ``name`` is derived from its network alone (``v1-mix357``, ``v1-L07-9x9``), so studies that share an
output folder share the runs of identical arms (the kernel sweep's 9x9 is the dilation study's 9x9).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from mixconv.models.mobilenet import Depthwise, MobileNetSpec, depthwise_count

STUDIES = ("kernels", "layers", "partition", "dilation")
FAMILIES = ("v1", "v2")
KINDS = ("depthwise", "mixconv", "exponential", "dilated", "baseline")
ABLATION_KERNEL = 9  # the paper's single-layer study: DepthwiseConv9x9 against MixConv3579


class StudyError(ValueError):
    """A study that cannot be run as asked (unknown study, empty arm list, a layer out of range, ...)."""


@dataclass(frozen=True)
class Arm:
    """One network of a study. ``kernel``: the largest kernel size (its receptive field, for dilated arms);
    ``layer``: the changed layer of a single-layer arm (1-based), else ``None``."""

    study: str
    family: str
    kind: str
    kernel: int
    spec: MobileNetSpec
    layer: Optional[int] = None

    @property
    def name(self) -> str:
        if self.layer is not None:
            return f"{self.family}-L{self.layer:02d}-{self.spec.layers[self.layer - 1].label}"
        return f"{self.family}-{self.spec.layers[0].label}"


def mix(k: int) -> tuple[int, ...]:
    """The paper's MixConv kernel sizes up to ``k``: {3, 5, ..., k}."""
    return tuple(range(3, k + 1, 2))


def _check_kernels(kernels: Sequence[int], smallest: int = 3) -> tuple[int, ...]:
    ks = tuple(kernels)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < smallest or k % 2 == 0]
    if bad:
        raise StudyError(f"kernel sizes must be odd ints >= {smallest}; got {bad} in {list(ks)}")
    if not ks:
        raise StudyError("the study has no arms: give at least one kernel size")
    return tuple(sorted(set(ks)))


def _version(family: str) -> int:
    if family not in FAMILIES:
        raise StudyError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return int(family[1])


def kernel_arms(family: str, width: float, kernels: Sequence[int]) -> list[Arm]:
    """Figure 4: kxk depthwise and MixConv {3..k} for each k (k = 3 is one arm: both are 3x3)."""
    v = _version(family)
    arms = []
    for k in _check_kernels(kernels):
        arms.append(Arm("kernels", family, "depthwise", k, MobileNetSpec.uniform(v, Depthwise((k,)), width)))
        if k > 3:
            arms.append(Arm("kernels", family, "mixconv", k, MobileNetSpec.uniform(v, Depthwise(mix(k)), width)))
    return arms


def layer_arms(family: str, width: float, layers: Optional[Sequence[int]] = None) -> list[Arm]:
    """Section 3.1: the all-3x3 baseline, then each of ``layers`` (default all) alone as 9x9 or MixConv3579."""
    v = _version(family)
    base = MobileNetSpec.uniform(v, Depthwise((3,)), width)
    n = depthwise_count(v)
    chosen = tuple(range(1, n + 1)) if layers is None else tuple(layers)
    if not chosen:
        raise StudyError("the layers study has no arms: give at least one layer index")
    arms = [Arm("layers", family, "baseline", 3, base)]
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= n:
            raise StudyError(f"layer index {i!r} is out of range: MobileNet{family.upper()} has {n} depthwise "
                             f"layers (1..{n})")
        for kind, dw in (("depthwise", Depthwise((ABLATION_KERNEL,))), ("mixconv", Depthwise(mix(ABLATION_KERNEL)))):
            arms.append(Arm("layers", family, kind, ABLATION_KERNEL, base.with_layer(i, dw), layer=i))
    return arms


def partition_arms(family: str, width: float, kernels: Sequence[int]) -> list[Arm]:
    """Section 3.2: MixConv {3..k}, equal against exponential partition, for each k >= 5."""
    v = _version(family)
    arms = []
    for k in _check_kernels(kernels, smallest=5):
        for kind, split in (("mixconv", "equal"), ("exponential", "exponential")):
            arms.append(Arm("partition", family, kind, k, MobileNetSpec.uniform(v, Depthwise(mix(k), split), width)))
    return arms


def dilation_arms(family: str, width: float, kernels: Sequence[int]) -> list[Arm]:
    """Section 3.3: kxk against 3x3 with dilation (k-1)/2 (the same receptive field), for each k >= 5."""
    v = _version(family)
    arms = []
    for k in _check_kernels(kernels, smallest=5):
        arms.append(Arm("dilation", family, "depthwise", k, MobileNetSpec.uniform(v, Depthwise((k,)), width)))
        arms.append(Arm("dilation", family, "dilated", k,
                        MobileNetSpec.uniform(v, Depthwise((3,), dilation=(k - 1) // 2), width)))
    return arms


def study_arms(study: str, families: Sequence[str], widths: dict[str, float], kernels: Sequence[int],
               layers: Optional[Sequence[int]] = None) -> list[Arm]:
    """Every arm of ``study`` for each family (``widths``: the width multiplier of each family)."""
    if study not in STUDIES:
        raise StudyError(f"unknown study {study!r}; expected one of {', '.join(STUDIES)}")
    if not families:
        raise StudyError("the study has no arms: give at least one model family (v1, v2)")
    arms: list[Arm] = []
    for family in families:
        width = widths.get(family, 1.0)
        if study == "kernels":
            arms += kernel_arms(family, width, kernels)
        elif study == "layers":
            arms += layer_arms(family, width, layers)
        elif study == "partition":
            arms += partition_arms(family, width, kernels)
        else:
            arms += dilation_arms(family, width, kernels)
    return arms
