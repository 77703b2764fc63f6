"""Checkpoint conversion between timm and mixconv (the models come from :mod:`mixconv.factory.checkpoint`).

* timm MixNet state dict (``.pth``/``.safetensors``) -> self-describing mixconv checkpoint (``.safetensors``
  with the architecture YAML, model name, classes and input channels in its header). The variant is inferred
  from the parameter shapes (and the file name where shapes cannot tell ``mixnet_s`` from ``tf_mixnet_s``),
  or given.
* mixconv checkpoint -> timm state dict (``.pth`` or ``.safetensors``) that
  ``timm.create_model(name).load_state_dict(sd, strict=True)`` accepts.

Nothing here executes code from a file (see :func:`mixconv.files.weights.read_checkpoint`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from mixconv.convert.hub import convert_hub
from mixconv.convert.result import ConvertResult, is_folder_output
from mixconv.factory.checkpoint import model_from_checkpoint
from mixconv.files.atomic import atomic_write
from mixconv.files.inputs import CheckpointError
from mixconv.files.weights import (
    is_timm_state_dict,
    mixconv_to_timm,
    read_checkpoint,
    save_model_checkpoint,
    write_safetensors,
)

TIMM_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def _save_state_dict(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        return write_safetensors(sd, path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def convert_checkpoint(src: str | Path, dst: str | Path, model: str | Path | None = None) -> ConvertResult:
    """Convert a timm MixNet checkpoint to a mixconv one, or a mixconv checkpoint to a timm state dict.

    The direction follows the input: a timm state dict becomes a mixconv ``.safetensors`` checkpoint; anything
    else is read as a mixconv checkpoint and written with timm's names (``.pth``/``.pt`` via ``torch.save``, or
    ``.safetensors``). A hub folder as input, or ``DIR/`` as output, reads or writes timm's hub layout (see
    :func:`mixconv.convert.hub.convert_hub`). ``model`` names the architecture when the file cannot (see :func:`model_from_checkpoint`).
    """
    if Path(src).is_dir() or is_folder_output(dst):
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


__all__ = ["ConvertResult", "convert_checkpoint", "is_folder_output"]
