"""Parameters grouped by a model's ``group_matcher``, as timm's ``group_parameters`` groups them.

The groups run from the input to the output: the stem first, then each block (or stage), the head conv in the
last one (a pattern with the suffix ``(99999,)`` joins the group before it, as in timm); parameters no pattern
matches (the classifier) form the last group. Layer-wise learning-rate decay scales
each group's rate by ``decay ** (last - index)``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from torch import nn

Key = tuple[float, ...]
# A pattern whose suffix ends with this joins the group before it (timm's MATCH_PREV_GROUP).
MATCH_PREV_GROUP = 99999.0


def _compile(matcher: dict[str, Any]) -> list[tuple[re.Pattern[str], float, tuple[float, ...]]]:
    compiled = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for regex, suffix in entries:
            compiled.append((re.compile(regex), float(ordinal), tuple(float(v) for v in (suffix or ()))))
    return compiled


def _grouping(matcher: dict[str, Any]) -> Callable[[str], Key]:
    compiled = _compile(matcher)

    def key(name: str) -> Key:
        for regex, ordinal, suffix in compiled:
            m = regex.match(name)
            if m:
                return (ordinal, *(float(g) for g in m.groups() if g is not None), *suffix)
        return (math.inf,)  # not matched: after every group (the classifier)
    return key


def group_parameters(model: nn.Module, coarse: bool = False) -> list[list[str]]:
    """The names of ``model``'s parameters in groups, input to output, from ``model.group_matcher(coarse)``.

    Every parameter is in exactly one group. Raises ``TypeError`` for a model without ``group_matcher``.
    """
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise TypeError(f"{type(model).__name__} has no group_matcher(); parameter groups need one")
    key = _grouping(matcher(coarse=coarse))
    by_key: dict[Key, list[str]] = {}
    for name, _ in model.named_parameters():
        by_key.setdefault(key(name), []).append(name)
    groups: list[list[str]] = []
    for k in sorted(by_key):
        if groups and k[-1] == MATCH_PREV_GROUP:  # e.g. the head conv joins the last block's group
            groups[-1].extend(by_key[k])
        else:
            groups.append(list(by_key[k]))
    return groups


def layer_decay_scales(num_groups: int, decay: float) -> list[float]:
    """Learning-rate multipliers ``decay ** (num_groups - 1 - i)``: 1 for the last group (the classifier),
    the smallest for the first (the stem). ``decay`` must be in (0, 1]."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"layer decay must be a number in (0, 1] (1: no decay), got {decay!r}")
    return [float(decay) ** (num_groups - 1 - i) for i in range(num_groups)]
