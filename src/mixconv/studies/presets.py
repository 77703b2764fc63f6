"""Study presets: how big the networks are, how long each arm trains, on what data.

``tiny`` is for tests (seconds an arm); ``cpu`` finishes a study on 2 CPU cores in minutes to half an hour
(MobileNetV1 at width 0.5, 32 px digit pairs, 3 epochs, kernels up to 9x9, two seeds); ``paper`` is the
paper's setting (MobileNetV1 and V2 at width 1.0, 224 px ImageNet, kernels up to 13x13, three seeds) for a GPU
cluster under torchrun.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mixconv.studies.arms import StudyError


@dataclass(frozen=True)
class StudyPreset:
    """Defaults of a study run; every field can be overridden on the command line."""

    families: tuple[str, ...]
    widths: dict = field(default_factory=dict)  # family -> width multiplier
    kernels: tuple[int, ...] = (3, 5, 7, 9, 11, 13)
    layers: Optional[tuple[int, ...]] = None  # None: every depthwise layer
    seeds: tuple[int, ...] = (0,)
    data: Optional[str] = "digit-pairs"  # None: must be given (an ImageFolder root)
    recipe: str = "digit-pairs"
    epochs: int = 2
    img_size: Optional[int] = None  # None: the recipe's
    train: dict = field(default_factory=dict)  # more TrainConfig fields for every arm


PRESETS: dict[str, StudyPreset] = {
    "tiny": StudyPreset(families=("v1",), widths={"v1": 0.25, "v2": 0.35}, kernels=(3, 5), layers=(1, 2),
                        data="digits", recipe="digits", epochs=1, img_size=32,
                        train={"batch_size": 128, "workers": 0, "log_interval": 1000}),
    # MobileNetV1 x0.5 at 32 px (10,000 digit pairs): 23 s an epoch with 3x3 kernels on 2 cores, ~2.5x that
    # with 9x9; all 3x3 reaches ~80% top-1 in 4 epochs (x0.25: 52% in 3, and 5 points apart between seeds)
    "cpu": StudyPreset(families=("v1",), widths={"v1": 0.5, "v2": 0.5}, kernels=(3, 5, 7, 9), seeds=(0, 1),
                       epochs=3, train={"batch_size": 128, "warmup_epochs": 0.3, "workers": 0, "log_interval": 1000}),
    # the paper: ImageNet, 224 px; run under torchrun on a GPU cluster (--data /imagenet)
    "paper": StudyPreset(families=("v1", "v2"), widths={"v1": 1.0, "v2": 1.0}, seeds=(0, 1, 2), data=None,
                         recipe="tf-mixnet", epochs=350, img_size=224,
                         train={"batch_size": 128, "workers": 8, "amp": "bf16", "channels_last": True}),
}


def get_preset(name: str) -> StudyPreset:
    if name not in PRESETS:
        raise StudyError(f"unknown study preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
