"""Activation layers by name.

Names follow the papers and the YAML schema: ``relu``, ``swish`` (= ``silu``), ``hswish`` (= ``hard_swish``),
``sigmoid``, ``gelu``; ``identity``/``none`` give no activation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class SiLU(nn.SiLU):
    """SiLU (swish) that works in place only where no gradient is recorded.

    An in-place SiLU under autograd makes autograd save a copy of its input for the backward (one more pass
    over the tensor and one more allocation than the out-of-place op), so training runs it out of place;
    inference overwrites its input and allocates nothing.
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "swish": SiLU,
    "silu": SiLU,
    "hswish": lambda: nn.Hardswish(inplace=True),
    "hard_swish": lambda: nn.Hardswish(inplace=True),
    "sigmoid": nn.Sigmoid,
    "hsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "gelu": nn.GELU,
    "identity": nn.Identity,
    "none": nn.Identity,
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(_ACTIVATIONS)


def canonical_act_name(name: str) -> str:
    """Return the lower-case registered name, or raise ``ValueError`` listing the accepted names."""
    key = str(name).strip().lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
    return key


def create_act(name: str | None) -> nn.Module:
    """Create an activation module from its name (``None`` means identity)."""
    if name is None:
        return nn.Identity()
    return _ACTIVATIONS[canonical_act_name(name)]()
