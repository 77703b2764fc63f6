"""The timm model contract every mixconv classifier keeps, in one base class.

A timm-based pipeline calls more than ``forward``: ``forward_features``/``forward_head``, ``reset_classifier``
with a ``global_pool``, ``forward_intermediates``/``prune_intermediate_layers``, ``set_grad_checkpointing``,
``group_matcher``, ``feature_info``, ``num_features``/``head_hidden_size``. :class:`ContractClassifier`
implements them once, with timm's semantics, over three things a network says about itself: its ``stem``, its
feature stages (:meth:`stage_modules`, one ``nn.Sequential`` of blocks per entry of ``feature_info``) and the
module after the last stage (:meth:`head_module`, a 1x1 head conv or ``nn.Identity``).
"""
# No ``from __future__ import annotations`` here: torch.fx copies forward's annotations into the code of a
# traced graph, and TorchScript cannot resolve them as strings (timm's FX-then-TorchScript test does that).

from typing import Any, Optional, Union

import torch
from torch import nn

from mixconv.layers.pooling import SelectAdaptivePool2d, check_pool_type
from mixconv.models.checkpointing import checkpoint_blocks
from mixconv.models.feature_info import FeatureInfo, Indices, take_indices
from mixconv.models.pretrained_cfg import pool_size

OUTPUT_FORMATS = ("NCHW",)


def check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    return num_classes


def _check_pool_for_classes(global_pool: str, num_classes: int) -> None:
    if global_pool == "" and num_classes:
        raise ValueError(f"global_pool='' keeps the unpooled (N, C, H, W) map, which a linear classifier cannot "
                         f"take: use num_classes=0 with it (got num_classes={num_classes})")


class GradCheckpointing(nn.Module):
    """The ``set_grad_checkpointing`` switch every mixconv model (classifier or features model) has; subclasses
    set ``self.grad_checkpointing = False`` when built (an instance attribute: TorchScript reads it)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (less activation memory,
        one more forward of the trunk per step); outputs, gradients and BatchNorm statistics are unchanged."""
        self.grad_checkpointing = bool(enable)


class ContractFeatures(GradCheckpointing):
    """Base of the features models (``features_only=True``): ``feature_info`` and its ``channels()`` /
    ``reductions()`` for the stages in ``out_indices`` (subclasses set ``self.feature_info``)."""

    def channels(self) -> list[int]:
        return self.feature_info.channels()

    def reductions(self) -> list[int]:
        return self.feature_info.reduction()


class ContractClassifier(GradCheckpointing):
    """Base of every mixconv classifier: the classifier head and timm's model API over the network's stages.

    Subclasses build ``stem``, their stages and head conv, then call :meth:`init_head`; they define
    :meth:`stage_modules`, :meth:`head_module`, :meth:`truncate_stages`, :meth:`remove_head_module`,
    :meth:`group_matcher` and a TorchScript-friendly ``forward_features``.
    """

    def init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float,
                  feature_info: FeatureInfo) -> None:
        """Pooling, dropout and the linear classifier on ``num_features`` channels."""
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
        self.num_features = int(num_features)
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False
        self.feature_info = feature_info
        self.drop = nn.Dropout(self.drop_rate)
        self._set_head(num_classes, global_pool)

    def _set_head(self, num_classes: int, global_pool: str) -> None:
        """Pooling and a new (uninitialised) classifier for ``num_classes`` on the pooled features."""
        num_classes = check_num_classes(num_classes)
        _check_pool_for_classes(check_pool_type(global_pool), num_classes)
        self.global_pool = SelectAdaptivePool2d(global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.num_classes = num_classes
        self.classifier: nn.Module = (nn.Linear(self.head_hidden_size, num_classes) if num_classes
                                      else nn.Identity())

    def init_classifier(self, classifier: nn.Module) -> None:
        """Initialise a new classifier (subclasses use their family's rule)."""

    # -- classifier -----------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A freshly initialised classifier for ``num_classes`` (0: none, ``forward`` returns pooled features);
        ``global_pool`` changes the pooling (``None`` keeps it, ``''`` keeps the unpooled map)."""
        self._set_head(num_classes, self.global_pool.pool_type if global_pool is None else global_pool)
        self.init_classifier(self.classifier)
        cfg = getattr(self, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg["num_classes"] = num_classes

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # -- what the network says about itself -------------------------------------------------------------------
    def stage_modules(self) -> list[nn.Sequential]:
        """One ``nn.Sequential`` of blocks per feature stage, in order (``len == len(feature_info)``)."""
        raise NotImplementedError

    def head_module(self) -> nn.Module:
        """What runs after the last stage in ``forward_features`` (the head conv, or ``nn.Identity``)."""
        raise NotImplementedError

    def truncate_stages(self, num_stages: int) -> None:
        """Keep only the first ``num_stages`` stages."""
        raise NotImplementedError

    def remove_head_module(self) -> None:
        """Replace :meth:`head_module` by ``nn.Identity``."""
        raise NotImplementedError

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups: ``stem`` and ``blocks`` regexes (see :func:`mixconv.models.group_parameters`)."""
        raise NotImplementedError

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the stem takes it (a memory-format change; values unchanged)."""
        return x

    # -- training hooks (set_grad_checkpointing: GradCheckpointing) ---------------------------------------------
    @torch.jit.unused
    def forward_trunk_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """The stages (each block checkpointed) and the head module, from the stem's output."""
        for stage in self.stage_modules():
            x = checkpoint_blocks(stage, x)
        return self.head_module()(x)

    # -- intermediates ------------------------------------------------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Indices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """The feature maps of the stages ``indices`` names, and ``forward_features(x)``.

        Args:
            indices: ``None`` every stage, an int the last ``n``, a list those stages (negative from the end).
            norm: timm's flag to normalise intermediates; these networks have no norm after their stages (as
                timm's EfficientNet), so it changes nothing.
            stop_early: stop after the last requested stage; needs ``intermediates_only=True`` unless that
                stage is the last one (the final features need every stage).
            output_fmt: ``'NCHW'`` (the only layout these convnets produce).
            intermediates_only: return only the list of maps.

        Returns:
            ``(final, intermediates)``, ``final`` equal to ``forward_features(x)``; or the list alone.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; expected one of {', '.join(OUTPUT_FORMATS)}")
        stages = self.stage_modules()
        take, last = take_indices(len(stages), indices)
        if stop_early and not intermediates_only and last < len(stages) - 1:
            raise ValueError(f"stop_early=True stops after stage {last}, so there are no final features: pass "
                             f"intermediates_only=True, or ask for the last stage ({len(stages) - 1})")
        x = self.stem(self.prepare_input(x))
        out: list[torch.Tensor] = []
        for i, stage in enumerate(stages[: last + 1] if stop_early else stages):
            x = checkpoint_blocks(stage, x) if self.grad_checkpointing else stage(x)
            if i in take:
                out.append(x)
        if intermediates_only:
            return out
        return self.head_module()(x), out

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one ``indices`` names; with ``prune_head`` also the head conv and the
        classifier (``forward`` then returns that stage's map). Returns the absolute indices kept for
        :meth:`forward_intermediates`. ``prune_norm`` changes nothing (no norm after the stages)."""
        stages = self.stage_modules()
        take, last = take_indices(len(stages), indices)
        if last < len(stages) - 1 and not prune_head:
            raise ValueError(f"pruning after stage {last} removes the input of the head conv: use prune_head=True "
                             f"or keep the last stage ({len(stages) - 1})")
        if last < len(stages) - 1:
            self.truncate_stages(last + 1)
        if prune_head:
            self.remove_head_module()
            self.num_features = int(self.feature_info[last]["num_chs"])
            self.reset_classifier(0, "")
        self.feature_info = FeatureInfo(self.feature_info.info[: last + 1])
        cfg = getattr(self, "pretrained_cfg", None)
        if isinstance(cfg, dict) and "input_size" in cfg:  # the map forward now returns
            cfg["pool_size"] = pool_size(tuple(cfg["input_size"]), int(self.feature_info[-1]["reduction"]))
        return take
