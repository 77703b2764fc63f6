"""timm's ``pretrained_cfg`` on mixconv models: the preprocessing and head facts timm's data tools read.

Every model built by :func:`mixconv.create_model` carries ``model.pretrained_cfg`` (a plain dict with timm's
field names), so ``timm.data.resolve_model_data_config(model)`` and ``timm.data.create_transform`` give the
model's own preprocessing. It starts from the variant's :class:`ModelMeta` and is replaced by a hub folder's
``pretrained_cfg`` or a mixconv checkpoint's training preprocessing when the weights come from one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from mixconv.models.specs import ModelMeta

FIRST_CONV = "stem.conv"
CLASSIFIER = "classifier"
# The fields mixconv reads from (and writes to) a pretrained_cfg; timm's other fields pass through untouched.
PREPROCESS_FIELDS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def pool_size(input_size: tuple[int, ...], reduction: int) -> tuple[int, int]:
    """The size of the final feature map (what ``global_pool=''`` returns) for ``input_size``: each side divided
    by the output stride, rounded up (every stride-2 layer pads to ``ceil``)."""
    return (math.ceil(input_size[-2] / reduction), math.ceil(input_size[-1] / reduction))


def cfg_from_meta(meta: ModelMeta, *, architecture: str, num_classes: int, in_chans: int = 3,
                  reduction: int = 32) -> dict[str, Any]:
    """A ``pretrained_cfg`` for a freshly built model of a registered variant (or a custom spec);
    ``reduction`` is the output stride of the final feature map."""
    mean, std = _per_channel(meta.mean, in_chans), _per_channel(meta.std, in_chans)
    return {
        "architecture": architecture,
        "input_size": (in_chans, *meta.input_size[1:]),
        "pool_size": pool_size(meta.input_size, reduction),
        "fixed_input_size": False,
        "interpolation": meta.interpolation,
        "crop_pct": meta.crop_pct,
        "crop_mode": "center",
        "mean": mean,
        "std": std,
        "num_classes": num_classes,
        "first_conv": FIRST_CONV,
        "classifier": CLASSIFIER,
    }


def _per_channel(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """timm's convention for other channel counts: one value repeated, or the RGB mean of the three."""
    if len(values) == in_chans:
        return tuple(values)
    avg = sum(values) / len(values)
    return tuple([avg] * in_chans)


def cfg_from_preprocess(pre: Mapping[str, Any], in_chans: int = 3) -> dict[str, Any]:
    """The preprocessing fields of a ``pretrained_cfg`` from a mixconv checkpoint's ``preprocess`` dict."""
    size = int(pre["img_size"])
    return {"input_size": (in_chans, size, size), "interpolation": str(pre["interpolation"]),
            "crop_pct": float(pre["crop_pct"]), "crop_mode": "center",
            "mean": tuple(float(v) for v in pre["mean"]), "std": tuple(float(v) for v in pre["std"])}


def preprocess_from_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`cfg_from_preprocess` (a dict for ``Preprocess.from_dict``)."""
    return {"img_size": int(cfg["input_size"][-1]), "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": str(cfg.get("interpolation", "bicubic")), "mean": list(cfg["mean"]),
            "std": list(cfg["std"])}


def set_pretrained_cfg(model: nn.Module, **fields: Any) -> dict[str, Any]:
    """Update ``model.pretrained_cfg`` with ``fields`` (unknown timm fields are kept as given)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(fields)
    info = getattr(model, "feature_info", None)
    if "input_size" in cfg and info is not None and len(info):
        cfg["pool_size"] = pool_size(tuple(cfg["input_size"]), int(info[-1]["reduction"]))
    if hasattr(model, "num_classes"):
        cfg["num_classes"] = int(model.num_classes)
    if not hasattr(model, "classifier"):  # features-only trunk: timm drops the head fields too
        cfg.pop("classifier", None)
        cfg["num_classes"] = 0
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm < 0.9 and some tools read the older name
    return cfg


__all__ = ["CLASSIFIER", "FIRST_CONV", "PREPROCESS_FIELDS", "cfg_from_meta", "pool_size", "cfg_from_preprocess",
           "preprocess_from_cfg", "set_pretrained_cfg"]


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing; embedded in checkpoints so validate/predict reproduce it."""

    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"img_size": self.img_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(int(d["img_size"]), float(d["crop_pct"]), str(d["interpolation"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
