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

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from .inputs import read_text
from .models.pretrained_cfg import PREPROCESS_FIELDS, preprocess_from_cfg, set_pretrained_cfg
from .models.registry import get_model_def, list_models
from .weights import (
    CheckpointError,
    atomic_write,
    check_state_dict,
    header_extra,
    is_timm_state_dict,
    mixconv_to_timm,
    read_checkpoint,
    timm_to_mixconv,
)

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
    labels = raw.get("label_names")
    if isinstance(labels, dict):  # timm allows {index: name} with gaps; mixconv keeps a list
        labels = [str(labels.get(str(i), labels.get(i, i))) for i in range(num_classes)]
    if labels is not None and (not isinstance(labels, list) or len(labels) != num_classes):
        raise CheckpointError(f"{cfg_path}: field 'label_names' must list {num_classes} names (num_classes)")
    return HubConfig(folder, arch, int(num_classes), int(in_chans), dict(pcfg),
                     [str(x) for x in labels] if labels is not None else None)


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


def read_hub_checkpoint(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights of a hub folder (timm keys) and, as metadata, its ``model_name`` (the architecture)."""
    cfg = read_hub_config(path)
    sd, _ = read_checkpoint(hub_weights_file(path), use_ema=use_ema)
    return sd, {"model_name": cfg.architecture}


def _load_strict(model: nn.Module, cfg: HubConfig) -> None:
    """Load the folder's weights into ``model``, which must match them exactly."""
    weights = hub_weights_file(cfg.folder)
    sd, _ = read_checkpoint(weights)
    where = (f"{weights} (config.json: architecture={cfg.architecture!r}, num_classes={cfg.num_classes}, "
             f"in_chans={cfg.in_chans})")
    if is_timm_state_dict(sd):
        try:
            sd = timm_to_mixconv(sd, model)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: the tensors do not fit the architecture: {e}") from None
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = torch.zeros_like(v, device="cpu")
    check_state_dict(model, sd, where)
    model.load_state_dict(sd, strict=True)


def create_from_hub(path: str | Path, *, num_classes: Optional[int] = None, pretrained: Any = None,
                    in_chans: Optional[int] = None, architecture: Optional[str] = None,
                    drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None,
                    features_only: bool = False, out_indices: Optional[Sequence[int]] = None) -> nn.Module:
    """``create_model(DIR)``: the folder's architecture, classes and preprocessing.

    ``pretrained=True`` (or the folder itself) loads its weights: exactly when the classes and channels are
    the folder's, else through :func:`mixconv.load_pretrained` (a new classifier, an adapted stem).
    ``architecture`` overrides ``config.json`` (e.g. ``tf_mixnet_s`` for a TF port saved under another name).
    The other arguments are :func:`mixconv.create_model`'s.
    """
    from .models.factory import create_model
    from .weights import load_pretrained

    cfg = read_hub_config(path)
    n = cfg.num_classes if num_classes is None else num_classes
    c = cfg.in_chans if in_chans is None else in_chans
    model = create_model(architecture or cfg.architecture, num_classes=n, in_chans=c, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, features_only=features_only, out_indices=out_indices)
    own = pretrained is True or (pretrained is not None and pretrained is not False
                                 and _folder(pretrained).resolve() == cfg.folder.resolve())
    if own and (n, c) == (cfg.num_classes, cfg.in_chans) and hasattr(model, "classifier"):
        _load_strict(model, cfg)
    elif own:
        load_pretrained(model, cfg.folder)
    elif pretrained not in (None, False):
        load_pretrained(model, pretrained)
    set_pretrained_cfg(model, **cfg.preprocess_cfg(c))
    return model


def load_hub_model(path: str | Path, architecture: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a hub folder with its weights, and what a mixconv checkpoint's ``extra`` would say about it
    (``classes``, ``preprocess``)."""
    cfg = read_hub_config(path)
    model = create_from_hub(cfg.folder, pretrained=True, architecture=architecture)
    extra: dict[str, Any] = {"preprocess": cfg.preprocess(), "converted_from": str(cfg.folder)}
    if cfg.label_names:
        extra["classes"] = cfg.label_names
    return model, extra


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
    from .models.pretrained_cfg import cfg_from_preprocess

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
    tensors = {k: v.detach().contiguous().cpu() for k, v in mixconv_to_timm(model.state_dict(), model).items()}
    pcfg = _hub_pretrained_cfg(model, preprocess)
    config: dict[str, Any] = {
        "architecture": arch, "num_classes": int(model.num_classes), "num_features": int(model.num_features),
        "global_pool": "avg",
        "model_args": {"num_classes": int(model.num_classes), "in_chans": int(model.in_chans), "global_pool": "avg"},
        "pretrained_cfg": pcfg,
    }
    if classes is not None:
        config["label_names"] = [str(c) for c in classes]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / SAFETENSORS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    card = model_card(model, arch, pcfg, classes, results)
    atomic_write(folder / CARD_NAME, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return folder


def model_card(model: nn.Module, arch: str, pcfg: Mapping[str, Any], classes: Optional[Sequence[str]],
               results: Optional[Mapping[str, Any]]) -> str:
    """A short Hugging Face model card: params, MACs, preprocessing, usage and, where known, results."""
    from . import __version__
    from .info import count_macs, count_params

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


__all__ = ["HubConfig", "convert_hub", "create_from_hub", "hub_weights_file", "is_hub_folder", "load_hub_model", "model_card",
           "read_hub_checkpoint", "read_hub_config", "save_pretrained"]


_RESULT_KEYS = ("data", "epoch", "val_top1", "val_top5", "val_loss")


def convert_hub(src: str | Path, dst: str | Path, model: Optional[str | Path] = None) -> Any:
    """``mixconv convert`` with a hub folder on either side.

    * hub folder -> ``OUT.safetensors``: a mixconv checkpoint carrying the folder's classes and preprocessing;
    * any checkpoint (mixconv, timm file, hub folder) -> ``DIR/``: :func:`save_pretrained`, with a mixconv
      training checkpoint's classes, preprocessing and validation results.
    """
    from .convert import ConvertResult, is_folder_output, model_from_checkpoint, save_model_checkpoint

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
