"""What inference needs from a model source: the model, its classes and its preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mixconv.models.pretrained_cfg import Preprocess


@dataclass(frozen=True)
class Loaded:
    """A model ready for inference with what its checkpoint says about it."""

    model: nn.Module
    classes: Optional[list[str]]
    preprocess: Preprocess
    data: Optional[str]
    val_fraction: float
    # what was loaded, for the first line of validate/predict: weights (EMA or raw, epoch), QAT, dtype
    description: str = ""
