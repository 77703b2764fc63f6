"""``create_model``: registered names or YAML files to models, with optional local pretrained weights."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from .mixnet import MixNet, MixNetFeatures
from .registry import get_model_def
from .specs import MixNetSpec, ModelMeta


def resolve_model_name(name_or_yaml: str | Path | MixNetSpec) -> tuple[str, MixNetSpec | None, ModelMeta]:
    """Return ``(name, spec, meta)`` for a registered name, a YAML path or a spec.

    ``spec`` is ``None`` for a registered model built by a builder function (not a MixNet).
    """
    from ..config import is_config_path, load_config

    if isinstance(name_or_yaml, MixNetSpec):
        return "custom", name_or_yaml, ModelMeta()
    if is_config_path(name_or_yaml):
        return Path(name_or_yaml).stem, load_config(name_or_yaml), ModelMeta()
    model_def = get_model_def(str(name_or_yaml))
    return model_def.name, model_def.spec, model_def.meta


def create_model(
    name_or_yaml: str | Path | MixNetSpec,
    *,
    num_classes: int = 1000,
    pretrained: str | Path | None = None,
    in_chans: int = 3,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
) -> nn.Module:
    """Build a MixNet.

    Args:
        name_or_yaml: a registered name (see :func:`list_models`), a path to a ``.yaml``/``.yml`` config, or
            a :class:`MixNetSpec`.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        pretrained: path to a local timm or mixconv checkpoint of the same architecture. Nothing is ever
            downloaded.
        in_chans: input channels; pretrained stem weights are adapted.
        drop_rate: dropout before the classifier (default: the variant's).
        drop_path_rate: stochastic depth rate of the last block, ramped linearly from 0.
        features_only: return a :class:`MixNetFeatures` giving the feature maps at strides 2..32.
        out_indices: which feature stages ``features_only`` returns (default: all).
    """
    name, spec, meta = resolve_model_name(name_or_yaml)
    if spec is None:
        return _create_from_builder(name, num_classes, pretrained, in_chans, drop_rate, drop_path_rate,
                                    features_only, out_indices)
    dpr = 0.0 if drop_path_rate is None else float(drop_path_rate)
    if features_only:
        model: nn.Module = MixNetFeatures(spec, out_indices, in_chans=in_chans, drop_path_rate=dpr, meta=meta)
    else:
        if out_indices is not None:
            raise ValueError("out_indices is only used with features_only=True")
        model = MixNet(spec, num_classes, in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=dpr, meta=meta)
    model.model_name = name
    if pretrained is not None:
        from ..weights import load_pretrained

        load_pretrained(model, pretrained)
    return model


def _create_from_builder(
    name: str,
    num_classes: int,
    pretrained: str | Path | None,
    in_chans: int,
    drop_rate: float | None,
    drop_path_rate: float | None,
    features_only: bool,
    out_indices: Sequence[int] | None,
) -> nn.Module:
    """A registered non-MixNet model (``ModelDef.builder``); MixNet-only options are refused clearly."""
    for option, value in (("drop_path_rate", drop_path_rate), ("out_indices", out_indices)):
        if value is not None:
            raise ValueError(f"{option} is not supported by {name!r} (only by MixNet models)")
    if features_only:
        raise ValueError(f"features_only is not supported by {name!r} (only by MixNet models)")
    model = get_model_def(name).builder(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    model.model_name = name
    if pretrained is not None:
        from ..weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
