"""Global pooling selected by name, as timm's ``global_pool`` argument names it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def check_pool_type(pool_type: str) -> str:
    """``pool_type`` if it is one of :data:`POOL_TYPES`, else a ``ValueError`` naming the accepted values."""
    if not isinstance(pool_type, str) or pool_type not in POOL_TYPES:
        accepted = ", ".join(repr(p) for p in POOL_TYPES)
        raise ValueError(f"unknown global_pool {pool_type!r}; expected one of {accepted} ('' keeps the unpooled map)")
    return pool_type


class SelectAdaptivePool2d(nn.Module):
    """Global pooling of an ``(N, C, H, W)`` map: ``avg``, ``max``, ``avgmax`` (their mean), ``catavgmax`` (both,
    concatenated: ``2 C`` features) or ``''`` (no pooling: the map is returned unchanged).

    With pooling the result is flattened to ``(N, C)`` (``flatten=True``); without it stays 4-D.
    """

    def __init__(self, pool_type: str = "avg", flatten: bool = True) -> None:
        super().__init__()
        self.pool_type = check_pool_type(pool_type)
        self.flatten = flatten

    def feat_mult(self) -> int:
        """Pooled features per input channel (2 for ``catavgmax``)."""
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        elif self.pool_type == "max":
            x = F.adaptive_max_pool2d(x, 1)
        elif self.pool_type == "avgmax":
            x = 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        else:
            x = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1)
        return x.flatten(1) if self.flatten else x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}, flatten={self.flatten}"


def pool_type_of(model: nn.Module) -> str:
    """The ``global_pool`` name of a model (``avg`` for one without a :class:`SelectAdaptivePool2d`)."""
    pool = getattr(model, "global_pool", None)
    return pool.pool_type if isinstance(pool, SelectAdaptivePool2d) else "avg"
