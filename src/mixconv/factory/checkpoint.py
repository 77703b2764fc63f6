"""Models rebuilt from files: checkpoints (mixconv, timm, plain state dicts) and folders in timm's hub layout.

With :mod:`mixconv.factory.create` this is where a file becomes a model; the files themselves are read and
written by :mod:`mixconv.files` (nothing here executes code from a file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from mixconv.factory.create import create_model, load_hub_model
from mixconv.files.config import spec_from_dict
from mixconv.files.inputs import CheckpointError, load_yaml
from mixconv.files.mobilenet import is_mobilenet_document, mobilenet_from_dict
from mixconv.files.space import is_space_document, space_from_dict
from mixconv.files.weights import (
    check_state_dict,
    fill_batches_tracked,
    is_timm_state_dict,
    load_pretrained,
    mixconv_to_timm,
    read_checkpoint,
    read_training_checkpoint,
    timm_to_mixconv,
)
from mixconv.layers.pooling import POOL_TYPES
from mixconv.models.mobilenet import MobileNetSpec
from mixconv.models.pretrained_cfg import cfg_from_preprocess, set_pretrained_cfg
from mixconv.models.registry import get_model_def, list_models
from mixconv.models.space import SearchSpace
from mixconv.models.specs import MixNetSpec


def _timm_shapes(name: str, num_classes: int, in_chans: int) -> dict[str, tuple[int, ...]]:
    """The timm key -> shape map of a registered MixNet (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    return {k: tuple(v.shape) for k, v in mixconv_to_timm(model.state_dict(), model).items()}


def _head_shape(sd: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    w = sd.get("classifier.weight")
    num_classes = int(w.shape[0]) if w is not None else 0
    return num_classes, int(sd["conv_stem.weight"].shape[1])


def infer_timm_variant(sd: Mapping[str, torch.Tensor], filename: str | Path = "") -> str:
    """The registered MixNet whose timm parameters have exactly the shapes of ``sd``.

    Shapes cannot tell a variant from its TF port (``mixnet_s`` / ``tf_mixnet_s``: same tensors, different
    padding and BatchNorm epsilon); then the variant named in ``filename`` wins, else :class:`CheckpointError`
    asks for ``--model``.
    """
    num_classes, in_chans = _head_shape(sd)
    got = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    matches = []
    for name in list_models():
        if get_model_def(name).spec is None:
            continue
        want = {k: s for k, s in _timm_shapes(name, num_classes, in_chans).items()
                if not k.endswith("num_batches_tracked")}
        if want == got:
            matches.append(name)
    if not matches:
        raise CheckpointError(
            f"{filename or 'checkpoint'}: its {len(got)} tensors match no registered MixNet "
            f"({', '.join(n for n in list_models() if get_model_def(n).spec is not None)}); pass --model NAME|YAML"
        )
    if len(matches) == 1:
        return matches[0]
    stem = Path(str(filename)).name.lower()
    named = sorted((m for m in matches if m in stem), key=len, reverse=True)
    if named:
        return named[0]
    raise CheckpointError(
        f"{filename or 'checkpoint'}: the tensor shapes fit {', '.join(matches)} (TF ports differ only in padding "
        f"and BatchNorm epsilon, which a state dict does not record); pass --model to choose"
    )


def model_from_checkpoint(path: str | Path, model: str | Path | None = None, *, use_ema: bool = False) -> nn.Module:
    """Build the model a checkpoint describes and load its weights.

    ``path`` is a mixconv checkpoint (the architecture comes from its header), a timm MixNet state dict (the
    variant is inferred, or ``model``), or a plain mixconv state dict (``model`` required). ``model`` (a
    registered name or YAML), when given, overrides the architecture; classes and input channels always come
    from the checkpoint's tensors.
    """
    if Path(path).is_dir():  # a folder in timm's hub layout
        return load_hub_model(path, None if model is None else str(model))[0]
    sd, meta = read_checkpoint(path, use_ema=use_ema)
    if is_timm_state_dict(sd):
        num_classes, in_chans = _head_shape(sd)
        name = model if model is not None else infer_timm_variant(sd, path)
        net = create_model(name, num_classes=num_classes, in_chans=in_chans)
        sd = fill_batches_tracked(timm_to_mixconv(sd, net), net)
    else:
        num_classes = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else 0
        in_chans = int(sd["stem.conv.weight"].shape[1]) if "stem.conv.weight" in sd else 3
        pool = _header_pool(meta.get("global_pool"), path)
        if model is not None:
            net = create_model(model, num_classes=num_classes, in_chans=in_chans, global_pool=pool)
        elif meta.get("config"):
            arch = architecture_from_yaml(meta["config"], f"{path} (header 'config')")
            net = create_model(arch, num_classes=num_classes, in_chans=in_chans, global_pool=pool)
        elif meta.get("model_name") in list_models():
            net = create_model(meta["model_name"], num_classes=num_classes, in_chans=in_chans, global_pool=pool)
        else:
            raise CheckpointError(
                f"{path}: not a timm MixNet checkpoint and its header has no 'config' or registered 'model_name'; "
                f"pass --model NAME|YAML"
            )
        if meta.get("model_name"):
            net.model_name = meta["model_name"]
    check_state_dict(net, sd, str(path))
    net.load_state_dict(sd, strict=True)
    _apply_checkpoint_preprocess(net, meta)
    return net


def _header_pool(value: Any, path: str | Path) -> str:
    """A checkpoint header's ``global_pool`` (``avg`` when absent: files written before it was recorded)."""
    if value is None:
        return "avg"
    if value not in POOL_TYPES:
        raise CheckpointError(f"{path}: header field 'global_pool' is {value!r}; expected one of "
                              f"{', '.join(repr(p) for p in POOL_TYPES)}")
    return str(value)


def architecture_from_yaml(text: str, source: str) -> MixNetSpec | MobileNetSpec | SearchSpace:
    """A checkpoint header's architecture: a MixNet config, a ``mobilenet:`` or a ``search_space:`` document."""
    doc = load_yaml(text, source, CheckpointError)
    if is_mobilenet_document(doc):
        return mobilenet_from_dict(doc, source)
    if is_space_document(doc):
        return space_from_dict(doc, source)
    return spec_from_dict(doc, source)


def _apply_checkpoint_preprocess(net: nn.Module, meta: Mapping[str, str]) -> None:
    """A training checkpoint's preprocessing becomes the model's ``pretrained_cfg`` (what timm's tools read)."""
    try:
        pre = json.loads(meta.get("extra") or "{}").get("preprocess")
    except (json.JSONDecodeError, AttributeError):
        return  # an unreadable 'extra' only loses the preprocessing; the weights are fine
    if isinstance(pre, dict):
        set_pretrained_cfg(net, **cfg_from_preprocess(pre, int(getattr(net, "in_chans", 3))))


def model_from_training_checkpoint(path: str | Path, num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a mixconv checkpoint describes and load its weights; also return what the checkpoint
    says about it (classes, preprocessing, data, training settings). Unlike :func:`model_from_checkpoint` the
    file must describe its architecture (validate/predict need its preprocessing too)."""
    sd, extra = read_training_checkpoint(path)
    if "config_yaml" not in extra:
        raise CheckpointError(f"{path}: not a self-describing mixconv checkpoint (no model config in it); pass "
                              "--model NAME|YAML as well")
    name = extra.get("model_name", "")
    arch = architecture_from_yaml(extra["config_yaml"], f"{path} (header 'config')")
    n = int(extra.get("num_classes", 0)) if num_classes is None else num_classes
    pool = _header_pool(extra.get("global_pool"), path)
    model = create_model(arch, num_classes=n, in_chans=int(extra.get("in_chans", 3)), global_pool=pool)
    model.model_name = name or getattr(model, "model_name", "custom")
    load_pretrained(model, path)
    if "preprocess" in extra:  # timm's data tools then see the training preprocessing, not the variant's
        set_pretrained_cfg(model, **cfg_from_preprocess(extra["preprocess"], int(extra.get("in_chans", 3))))
    return model, extra


def model_with_extra(source: str | Path, model: Optional[str | Path] = None) -> tuple[nn.Module, dict[str, Any]]:
    """What validate, predict and export start from: the model of ``source`` with its weights, and what the source
    says about it (``classes``, ``preprocess``, ``data``, ``train_config``; empty where it says nothing).

    ``source`` is a folder in timm's hub layout, a self-describing mixconv checkpoint, or (with ``model``, a
    registered name or YAML) any checkpoint of that architecture, whose classifier size it gives.
    """
    path = Path(source)
    if path.is_dir():  # its config.json knows the model and preprocessing
        return load_hub_model(path, None if model is None else str(model))
    if model is None:
        return model_from_training_checkpoint(path)
    sd, extra = read_training_checkpoint(path)  # extra is {} for a file without a mixconv header
    net = create_model(model, num_classes=_classifier_size(sd, path))
    load_pretrained(net, path)
    return net, extra


def _classifier_size(sd: Mapping[str, torch.Tensor], path: Path) -> int:
    if "classifier.weight" in sd:
        return int(sd["classifier.weight"].shape[0])
    if is_timm_state_dict(sd):
        return 0
    raise CheckpointError(f"{path}: no classifier.weight in the checkpoint; cannot tell its number of classes")
