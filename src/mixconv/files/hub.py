"""Folders in timm's Hugging Face hub layout, read and written locally (nothing here uses the network).

A hub folder (what ``huggingface_hub.snapshot_download("timm/mixnet_s.ft_in1k")`` leaves, or what
``timm.models.save_for_hf`` writes) holds:

* ``config.json``: ``architecture`` (a timm model name), ``num_classes``, ``model_args`` (``in_chans``),
  ``pretrained_cfg`` (input size, mean, std, crop, interpolation) and optionally ``label_names``;
* ``model.safetensors`` and/or ``pytorch_model.bin``: the weights under timm's key names.

:func:`save_pretrained` writes the same layout plus a short model card (``README.md``), so
``timm.create_model("local-dir:DIR", pretrained=True)`` loads a mixconv model with the same outputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import save_file

from mixconv.files.atomic import atomic_write
from mixconv.files.inputs import CheckpointError, read_text
from mixconv.layers.pooling import POOL_TYPES
from mixconv.models.pretrained_cfg import (
    PREPROCESS_FIELDS,
    preprocess_from_cfg,
)
from mixconv.models.registry import get_model_def, list_models

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
CARD_NAME = "README.md"
# timm's names for the first conv and the classifier (the weights in a hub folder use timm's keys).
TIMM_FIRST_CONV = "conv_stem"
TIMM_CLASSIFIER = "classifier"


def is_hub_folder(path: Any) -> bool:
    """True for a directory holding ``config.json`` (``local-dir:`` prefixes are accepted)."""
    if not isinstance(path, (str, Path)):
        return False
    text = str(path)
    folder = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text)
    return folder.is_dir() and (folder / CONFIG_NAME).is_file()


def _folder(path: str | Path) -> Path:
    text = str(path)
    return Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text)


@dataclass(frozen=True)
class HubConfig:
    """The parts of a hub folder's ``config.json`` that mixconv uses."""

    folder: Path
    architecture: str
    num_classes: int
    in_chans: int
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    label_names: Optional[list[str]] = None
    global_pool: str = "avg"

    def preprocess_cfg(self, in_chans: Optional[int] = None) -> dict[str, Any]:
        """The preprocessing fields of ``pretrained_cfg`` (input size with ``in_chans`` channels)."""
        out = {k: self.pretrained_cfg[k] for k in PREPROCESS_FIELDS if k in self.pretrained_cfg}
        for k in ("input_size", "mean", "std"):
            if k in out:
                out[k] = tuple(out[k])
        if "input_size" in out:
            out["input_size"] = (in_chans or self.in_chans, *out["input_size"][1:])
        return out

    def preprocess(self) -> dict[str, Any]:
        """The preprocessing as a mixconv checkpoint stores it (``Preprocess.to_dict`` fields)."""
        cfg = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
               **self.preprocess_cfg()}
        return preprocess_from_cfg(cfg)


def read_hub_config(path: str | Path) -> HubConfig:
    """Read and check ``DIR/config.json``; errors name the folder and the field."""
    folder = _folder(path)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: not a hub folder (no {CONFIG_NAME}); expected timm's layout with "
                              f"{CONFIG_NAME} and {SAFETENSORS_NAME} or {PYTORCH_NAME}")
    text = read_text(cfg_path, "timm's hub config.json (UTF-8 JSON)", CheckpointError)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{cfg_path}: field 'architecture' is missing or not a string; expected a model name "
                              "such as mixnet_s")
    arch = arch.split(".")[0]  # "mixnet_s.ft_in1k" names a pretrained tag of mixnet_s
    if arch not in list_models() or get_model_def(arch).spec is None:
        known = ", ".join(n for n in list_models() if get_model_def(n).spec is not None)
        raise CheckpointError(f"{cfg_path}: field 'architecture' is {raw['architecture']!r}, which mixconv does not "
                              f"have; expected one of the MixNet family: {known}")
    pcfg = raw.get("pretrained_cfg", {})
    if not isinstance(pcfg, dict):
        raise CheckpointError(f"{cfg_path}: field 'pretrained_cfg' must be a JSON object, got {type(pcfg).__name__}")
    model_args = raw.get("model_args") or {}
    num_classes = raw.get("num_classes", model_args.get("num_classes", pcfg.get("num_classes", 1000)))
    in_chans = model_args.get("in_chans", (pcfg.get("input_size") or [3])[0])
    for name, value in (("num_classes", num_classes), ("model_args.in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{cfg_path}: field '{name}' is {value!r}; expected a non-negative int")
    _check_preprocess(pcfg, cfg_path)
    pool = model_args.get("global_pool", raw.get("global_pool", "avg"))
    if pool not in POOL_TYPES:
        raise CheckpointError(f"{cfg_path}: field 'model_args.global_pool' is {pool!r}; expected one of "
                              f"{', '.join(repr(p) for p in POOL_TYPES)}")
    labels = raw.get("label_names")
    if isinstance(labels, dict):  # timm allows {index: name} with gaps; mixconv keeps a list
        labels = [str(labels.get(str(i), labels.get(i, i))) for i in range(num_classes)]
    if labels is not None and (not isinstance(labels, list) or len(labels) != num_classes):
        raise CheckpointError(f"{cfg_path}: field 'label_names' must list {num_classes} names (num_classes)")
    return HubConfig(folder, arch, int(num_classes), int(in_chans), dict(pcfg),
                     [str(x) for x in labels] if labels is not None else None, pool)


def _check_preprocess(pcfg: Mapping[str, Any], cfg_path: Path) -> None:
    size = pcfg.get("input_size")
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3):
        raise CheckpointError(f"{cfg_path}: field 'pretrained_cfg.input_size' is {size!r}; expected [C, H, W]")
    for key in ("mean", "std"):
        v = pcfg.get(key)
        if v is not None and (not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) for x in v)):
            raise CheckpointError(f"{cfg_path}: field 'pretrained_cfg.{key}' is {v!r}; expected a list of numbers")
    crop = pcfg.get("crop_pct")
    if crop is not None and (not isinstance(crop, (int, float)) or not 0 < crop <= 1):
        raise CheckpointError(f"{cfg_path}: field 'pretrained_cfg.crop_pct' is {crop!r}; expected a number in (0, 1]")


def hub_weights_file(path: str | Path) -> Path:
    """``model.safetensors`` (preferred) or ``pytorch_model.bin`` in a hub folder."""
    folder = _folder(path)
    for name in (SAFETENSORS_NAME, PYTORCH_NAME):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights; expected {SAFETENSORS_NAME} or {PYTORCH_NAME} next to {CONFIG_NAME}")


def write_hub_folder(folder: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                     card: str) -> Path:
    """Write ``model.safetensors`` (``tensors``, timm's keys), ``config.json`` and the model card ``README.md``
    into ``folder``, each file atomically."""
    folder = _folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(folder / SAFETENSORS_NAME, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))
    text = json.dumps(dict(config), indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(folder / CARD_NAME, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return folder
