"""Checkpoint conversion between timm and mixconv, and models rebuilt from checkpoint files.

* timm MixNet state dict (``.pth``/``.safetensors``) -> self-describing mixconv checkpoint (``.safetensors``
  with the architecture YAML, model name, classes and input channels in its header). The variant is inferred
  from the parameter shapes (and the file name where shapes cannot tell ``mixnet_s`` from ``tf_mixnet_s``),
  or given.
* mixconv checkpoint -> timm state dict (``.pth`` or ``.safetensors``) that
  ``timm.create_model(name).load_state_dict(sd, strict=True)`` accepts.

Nothing here executes code from a file (see :func:`mixconv.weights.read_checkpoint`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .config import spec_from_dict
from .inputs import load_yaml
from .models.factory import create_model
from .models.registry import get_model_def, list_models
from .weights import (
    MIXCONV_FORMAT,
    CheckpointError,
    atomic_write,
    check_state_dict,
    is_timm_state_dict,
    mixconv_to_timm,
    read_checkpoint,
    save_checkpoint,
    timm_to_mixconv,
    write_safetensors,
)

TIMM_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_checkpoint` did."""

    direction: str  # "timm->mixconv" or "mixconv->timm"
    model_name: str
    num_classes: int
    in_chans: int
    num_tensors: int
    output: Path

    def __str__(self) -> str:
        return (f"{self.direction}: {self.model_name} ({self.num_classes} classes, {self.in_chans} input channels, "
                f"{self.num_tensors} tensors) -> {self.output}")


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


def _fill_batches_tracked(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v, device="cpu")
    return sd


def model_from_checkpoint(path: str | Path, model: str | Path | None = None, *, use_ema: bool = False) -> nn.Module:
    """Build the model a checkpoint describes and load its weights.

    ``path`` is a mixconv checkpoint (the architecture comes from its header), a timm MixNet state dict (the
    variant is inferred, or ``model``), or a plain mixconv state dict (``model`` required). ``model`` (a
    registered name or YAML), when given, overrides the architecture; classes and input channels always come
    from the checkpoint's tensors.
    """
    if Path(path).is_dir():  # a folder in timm's hub layout
        from .hub import load_hub_model

        return load_hub_model(path, None if model is None else str(model))[0]
    sd, meta = read_checkpoint(path, use_ema=use_ema)
    if is_timm_state_dict(sd):
        num_classes, in_chans = _head_shape(sd)
        name = model if model is not None else infer_timm_variant(sd, path)
        net = create_model(name, num_classes=num_classes, in_chans=in_chans)
        sd = _fill_batches_tracked(timm_to_mixconv(sd, net), net)
    else:
        num_classes = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else 0
        in_chans = int(sd["stem.conv.weight"].shape[1]) if "stem.conv.weight" in sd else 3
        if model is not None:
            net = create_model(model, num_classes=num_classes, in_chans=in_chans)
        elif meta.get("config"):
            source = f"{path} (header 'config')"
            spec = spec_from_dict(load_yaml(meta["config"], source, CheckpointError), source)
            net = create_model(spec, num_classes=num_classes, in_chans=in_chans)
        elif meta.get("model_name") in list_models():
            net = create_model(meta["model_name"], num_classes=num_classes, in_chans=in_chans)
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


def _apply_checkpoint_preprocess(net: nn.Module, meta: Mapping[str, str]) -> None:
    """A training checkpoint's preprocessing becomes the model's ``pretrained_cfg`` (what timm's tools read)."""
    from .models.pretrained_cfg import cfg_from_preprocess, set_pretrained_cfg

    try:
        pre = json.loads(meta.get("extra") or "{}").get("preprocess")
    except (json.JSONDecodeError, AttributeError):
        return  # an unreadable 'extra' only loses the preprocessing; the weights are fine
    if isinstance(pre, dict):
        set_pretrained_cfg(net, **cfg_from_preprocess(pre, int(getattr(net, "in_chans", 3))))


def save_model_checkpoint(model: nn.Module, path: str | Path, extra: Mapping[str, object] | None = None) -> Path:
    """:func:`mixconv.save_checkpoint` for MixNets; for registered non-MixNet models (no spec) the same header
    without ``config`` (the registered ``model_name`` rebuilds them)."""
    if getattr(model, "spec", None) is not None:
        return save_checkpoint(model, path, extra)
    name = str(getattr(model, "model_name", ""))
    if name not in list_models():
        raise CheckpointError(f"cannot describe {type(model).__name__} in a checkpoint: no spec and no registered name")
    meta = {"format": MIXCONV_FORMAT, "model_name": name, "num_classes": str(getattr(model, "num_classes", 0)),
            "in_chans": str(getattr(model, "in_chans", 3)), "extra": json.dumps(dict(extra or {}))}
    return write_safetensors(model.state_dict(), path, meta)


def _save_state_dict(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        return write_safetensors(sd, path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def is_folder_output(dst: str | Path) -> bool:
    """An output named ``DIR/`` (or an existing directory, or a name without suffix) is a hub folder."""
    text = str(dst)
    return text.endswith(("/", "\\")) or Path(text).is_dir() or not Path(text).suffix


def convert_checkpoint(src: str | Path, dst: str | Path, model: str | Path | None = None) -> ConvertResult:
    """Convert a timm MixNet checkpoint to a mixconv one, or a mixconv checkpoint to a timm state dict.

    The direction follows the input: a timm state dict becomes a mixconv ``.safetensors`` checkpoint; anything
    else is read as a mixconv checkpoint and written with timm's names (``.pth``/``.pt`` via ``torch.save``, or
    ``.safetensors``). A hub folder as input, or ``DIR/`` as output, reads or writes timm's hub layout (see
    :func:`mixconv.hub.convert_hub`). ``model`` names the architecture when the file cannot (see :func:`model_from_checkpoint`).
    """
    if Path(src).is_dir() or is_folder_output(dst):
        from .hub import convert_hub

        return convert_hub(src, dst, model)
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the output must differ from the input")
    sd, _ = read_checkpoint(src)
    net = model_from_checkpoint(src, model)
    name = str(getattr(net, "model_name", "") or model or "custom")
    if is_timm_state_dict(sd):
        if dst.suffix != ".safetensors":
            raise CheckpointError(f"{dst}: a mixconv checkpoint is a .safetensors file; got suffix {dst.suffix!r}")
        save_model_checkpoint(net, dst, {"converted_from": src.name})
        out = net.state_dict()
        direction = "timm->mixconv"
    else:
        if getattr(net, "spec", None) is None:
            raise CheckpointError(f"{src}: {name} is not a MixNet; timm has no counterpart to convert it to")
        if dst.suffix not in TIMM_SUFFIXES:
            raise CheckpointError(f"{dst}: expected a .pth, .pt or .safetensors output, got suffix {dst.suffix!r}")
        out = mixconv_to_timm(net.state_dict(), net)
        _save_state_dict(out, dst)
        direction = "mixconv->timm"
    return ConvertResult(direction, name, int(getattr(net, "num_classes", 0)), int(getattr(net, "in_chans", 3)),
                         len(out), dst)


__all__ = ["ConvertResult", "convert_checkpoint", "infer_timm_variant", "is_folder_output", "model_from_checkpoint",
           "save_model_checkpoint"]
