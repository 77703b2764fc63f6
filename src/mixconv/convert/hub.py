"""Writing MixNets as folders in timm's Hugging Face hub layout, with a model card, and ``mixconv convert`` to
or from such a folder. Reading the folders is :mod:`mixconv.files.hub`; models from them come from
:mod:`mixconv.factory`.
"""
from __future__ import annotations

import copy
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from mixconv.convert.result import ConvertResult, is_folder_output
from mixconv.factory.checkpoint import model_from_checkpoint
from mixconv.factory.create import load_hub_model
from mixconv.files.hub import (
    TIMM_CLASSIFIER,
    TIMM_FIRST_CONV,
    _folder,
    is_hub_folder,
    read_hub_config,
    write_hub_folder,
)
from mixconv.files.inputs import CheckpointError
from mixconv.files.weights import (
    header_extra,
    is_timm_state_dict,
    mixconv_to_timm,
    read_checkpoint,
    save_model_checkpoint,
)
from mixconv.layers.pooling import pool_type_of
from mixconv.models.pretrained_cfg import cfg_from_preprocess
from mixconv.models.profile import count_macs, count_params
from mixconv.models.registry import get_model_def, list_models


def _architecture(model: nn.Module) -> str:
    """The registered MixNet name whose architecture ``model`` has (timm knows it under that name)."""
    name = str(getattr(model, "model_name", ""))
    spec = getattr(model, "spec", None)
    if not hasattr(model, "classifier"):
        raise CheckpointError("save_pretrained: a features-only model has no classifier; timm's hub layout holds "
                              "a classification model")
    if spec is None or name not in list_models() or get_model_def(name).spec != spec:
        raise CheckpointError(
            f"save_pretrained: model {name or type(model).__name__!r} is not a registered MixNet variant "
            f"({', '.join(n for n in list_models() if get_model_def(n).spec is not None)}); timm has no "
            "architecture to load it as")
    return name


def _hub_pretrained_cfg(model: nn.Module, preprocess: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    in_chans = int(getattr(model, "in_chans", 3))
    cfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k != "architecture"}
    if preprocess:
        cfg.update(cfg_from_preprocess(preprocess, in_chans))
    cfg.update(num_classes=int(model.num_classes), first_conv=TIMM_FIRST_CONV, classifier=TIMM_CLASSIFIER,
               fixed_input_size=False, license=cfg.get("license", "apache-2.0"))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def save_pretrained(model: nn.Module, path: str | Path, *, classes: Optional[Sequence[str]] = None,
                    preprocess: Optional[Mapping[str, Any]] = None,
                    results: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` as a folder in timm's hub layout: ``model.safetensors`` (timm keys), ``config.json``
    and a model card ``README.md``. Each file is written atomically.

    ``classes`` become ``label_names``; ``preprocess`` (a mixconv checkpoint's preprocessing) overrides the
    model's ``pretrained_cfg``; ``results`` (e.g. ``val_top1``, ``val_top5``, ``data``) go into the card.
    """
    folder = _folder(path)
    arch = _architecture(model)
    if classes is not None and len(classes) != model.num_classes:
        raise CheckpointError(f"save_pretrained: {len(classes)} class names for {model.num_classes} classes")
    tensors = mixconv_to_timm(model.state_dict(), model)
    pcfg = _hub_pretrained_cfg(model, preprocess)
    config: dict[str, Any] = {
        "architecture": arch, "num_classes": int(model.num_classes), "num_features": int(model.num_features),
        "global_pool": pool_type_of(model),
        "model_args": {"num_classes": int(model.num_classes), "in_chans": int(model.in_chans),
                       "global_pool": pool_type_of(model)},
        "pretrained_cfg": pcfg,
    }
    if classes is not None:
        config["label_names"] = [str(c) for c in classes]
    return write_hub_folder(folder, tensors, config, model_card(model, arch, pcfg, classes, results))


def model_card(model: nn.Module, arch: str, pcfg: Mapping[str, Any], classes: Optional[Sequence[str]],
               results: Optional[Mapping[str, Any]]) -> str:
    """A short Hugging Face model card: params, MACs, preprocessing, usage and, where known, results."""
    __version__ = metadata.version("mixconv")
    probe = copy.deepcopy(model).cpu().float()
    size = tuple(int(v) for v in pcfg["input_size"])
    params, macs = count_params(probe), count_macs(probe, size)
    lines = [
        "---", "library_name: timm", "license: " + str(pcfg.get("license", "apache-2.0")),
        "tags: [image-classification, timm, mixconv, mixnet]", "---", "",
        f"# {arch} ({model.num_classes} classes)", "",
        f"A MixNet ({arch}) written by mixconv {__version__} in timm's hub layout: `model.safetensors` holds timm's "
        "keys, `config.json` the architecture and preprocessing.", "",
        "## Model", "",
        f"- Params: {params / 1e6:.2f} M",
        f"- MACs: {macs / 1e6:.1f} M at {size[1]}x{size[2]}",
        f"- Classes: {model.num_classes}" + (f" ({', '.join(map(str, classes[:10]))}"
                                              f"{', ...' if len(classes) > 10 else ''})" if classes else ""),
        "", "## Preprocessing", "",
        f"- Input: {size[0]}x{size[1]}x{size[2]}, resize by {pcfg.get('interpolation', 'bicubic')} interpolation, "
        f"center crop with crop_pct {pcfg.get('crop_pct', 0.875)}",
        f"- Normalise: mean {list(pcfg.get('mean', []))}, std {list(pcfg.get('std', []))}",
    ]
    if results:
        lines += ["", "## Results", ""]
        lines += [f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in results.items()]
    lines += ["", "## Usage", "", "```python",
              "import timm", 'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
              "# or, with mixconv:", "import mixconv",
              'model = mixconv.create_model("PATH/TO/THIS/FOLDER", pretrained=True).eval()', "```", ""]
    return "\n".join(lines)


_RESULT_KEYS = ("data", "epoch", "val_top1", "val_top5", "val_loss")


def convert_hub(src: str | Path, dst: str | Path, model: Optional[str | Path] = None) -> Any:
    """``mixconv convert`` with a hub folder on either side.

    * hub folder -> ``OUT.safetensors``: a mixconv checkpoint carrying the folder's classes and preprocessing;
    * any checkpoint (mixconv, timm file, hub folder) -> ``DIR/``: :func:`save_pretrained`, with a mixconv
      training checkpoint's classes, preprocessing and validation results.
    """
    dst_path = _folder(dst)
    if _folder(src).resolve() == dst_path.resolve():
        raise CheckpointError(f"{dst}: the output must differ from the input")
    if is_hub_folder(src):
        net, extra = load_hub_model(src, None if model is None else str(model))
        direction = "hub->"
    else:
        if Path(src).is_dir():
            read_hub_config(src)  # raises: a folder without config.json
        net = model_from_checkpoint(src, model)
        sd, meta = read_checkpoint(src)
        extra = header_extra(meta, src)
        direction = "timm->" if is_timm_state_dict(sd) else "mixconv->"
    if is_folder_output(dst):
        results = {k: extra[k] for k in _RESULT_KEYS if k in extra}
        save_pretrained(net, dst_path, classes=extra.get("classes"), preprocess=extra.get("preprocess"),
                        results=results or None)
        direction += "hub"
    else:
        if dst_path.suffix != ".safetensors":
            raise CheckpointError(f"{dst}: from a hub folder, write a mixconv .safetensors checkpoint or a folder "
                                  f"(DIR/); got suffix {dst_path.suffix!r}")
        save_model_checkpoint(net, dst_path, extra)
        direction += "mixconv"
    return ConvertResult(direction, str(net.model_name), int(net.num_classes), int(net.in_chans),
                         len(net.state_dict()), dst_path)
