"""Validation and prediction from a checkpoint: the model, its classes and its preprocessing."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from mixconv.data.datasets import (
    build_dataset,
    collate_skip,
    dataset_classes,
    eval_transform,
)
from mixconv.factory.checkpoint import model_with_extra
from mixconv.factory.create import resolve_model_name
from mixconv.files.config import ConfigError
from mixconv.files.inputs import MixconvInputError, open_image
from mixconv.inference.distributed import DistInfo
from mixconv.inference.engine import evaluate as evaluate_loader
from mixconv.inference.engine import warn_amp
from mixconv.inference.loaded import Loaded
from mixconv.inference.ort import load_onnx
from mixconv.models.pretrained_cfg import Preprocess
from mixconv.surgery.fake_quant import load_qat_ranges, prepare_qat


def load_model(checkpoint: str | Path, model: Optional[str] = None, *, img_size: Optional[int] = None,
               crop_pct: Optional[float] = None, interpolation: Optional[str] = None) -> Loaded:
    """``checkpoint`` alone (a mixconv training checkpoint knows its model), or ``model`` + any checkpoint, or a
    folder in timm's hub layout; the preprocessing is the source's, else the model's defaults."""
    net, extra = model_with_extra(checkpoint, model)
    pre = Preprocess.from_dict(extra["preprocess"]) if "preprocess" in extra else _meta_preprocess(model)
    pre = replace(pre, img_size=img_size or pre.img_size, crop_pct=crop_pct or pre.crop_pct,
                  interpolation=interpolation or pre.interpolation)
    cfg = extra.get("train_config", {})
    qat = extra.get("qat")
    if qat is not None:  # its number was measured as simulated int8 with these ranges: evaluate the same way
        prepare_qat(net, qat["activation_type"], bool(qat["reduce_range"]))
        load_qat_ranges(net, qat["ranges"])
    return Loaded(net.eval(), extra.get("classes"), pre, extra.get("data"), float(cfg.get("val_fraction", 0.2)),
                  describe_checkpoint(checkpoint, net, extra))


def describe_checkpoint(source: str | Path, net: torch.nn.Module, extra: dict[str, Any]) -> str:
    """One line on what was loaded: the model, which weights (EMA or raw, from which epoch), QAT and dtype."""
    name = getattr(net, "model_name", "") or "model"
    parts = [f"{source}: {name}"]
    if "epoch" in extra:
        cfg = extra.get("train_config", {})
        parts.append(f"epoch {extra['epoch']}" + (f" of {cfg['epochs']}" if "epochs" in cfg else "")
                     + (f", val top-1 {extra['val_top1']:.2f} at training" if "val_top1" in extra else ""))
        parts.append("EMA weights" if extra.get("ema") else "raw weights (no EMA)")
    qat = extra.get("qat")
    if qat is not None:
        parts.append(f"QAT: simulated int8 as onnxruntime's ({qat['activation_type']} activations"
                     f"{', 7-bit weights' if qat['reduce_range'] else ''}, the training's activation ranges)")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in net.parameters()})
    parts.append("/".join(dtypes) or "no parameters")
    return ", ".join(parts)


def _meta_preprocess(model: Optional[str]) -> Preprocess:
    _, _, meta = resolve_model_name(model or "mixnet_s")
    return Preprocess(meta.input_size[-1], meta.crop_pct, meta.interpolation, tuple(meta.mean), tuple(meta.std))


def load_source(checkpoint: Optional[str | Path], model: Optional[str], onnx: Optional[str | Path],
          **pre: Any) -> Loaded:
    """A PyTorch checkpoint or (``onnx``) an ONNX file run by onnxruntime, with its classes and preprocessing."""
    if onnx is not None:
        if checkpoint is not None or model is not None:
            raise ConfigError("--onnx FILE runs the ONNX file alone; drop --checkpoint/--model")
        return load_onnx(onnx, **pre)
    if checkpoint is None:
        raise ConfigError("give a checkpoint (--checkpoint FILE) or an ONNX file (--onnx FILE)")
    return load_model(checkpoint, model, **pre)


def evaluate(checkpoint: Optional[str | Path] = None, *, model: Optional[str] = None, data: Optional[str] = None,
             batch_size: int = 64, workers: int = 0, amp: str = "none", channels_last: bool = False,
             img_size: Optional[int] = None, crop_pct: Optional[float] = None,
             interpolation: Optional[str] = None, device: Optional[str] = None,
             onnx: Optional[str | Path] = None) -> dict[str, Any]:
    """Top-1, top-5 (percent), mean loss and images/s of a checkpoint on ``data`` (default: its own val data).

    ``data`` is ``digits`` or a directory of val images in class folders (or a root holding ``val/``).
    ``onnx`` evaluates an ONNX file (float32 or int8) in onnxruntime on the CPU instead, with the preprocessing
    stored in its metadata.
    """
    loaded = load_source(checkpoint, model, onnx, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    source = onnx if onnx is not None else checkpoint
    ds, data = val_dataset(loaded, data, source)
    if onnx is not None:
        device, amp, channels_last = "cpu", "none", False  # onnxruntime's CPU provider takes float32 NCHW
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    msg = warn_amp(dev, amp, stacklevel=2)  # a LowPrecisionWarning and a line (as train) where it is emulated
    if msg is not None:
        print(f"warning: {msg}", file=sys.stderr)
    net = loaded.model.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loader = DataLoader(ds, batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip,
                        pin_memory=dev.type == "cuda")
    start = time.perf_counter()
    stats = evaluate_loader(net, loader, DistInfo(device=dev), amp, channels_last, desc="validate")
    seconds = time.perf_counter() - start
    if stats.images == 0:
        raise MixconvInputError(f"--data {data}: none of its {stats.skipped} images could be read (see the warnings "
                                "above); expected readable image files")
    return {"top1": stats.top1, "top5": stats.top5, "loss": stats.loss,
            "images_per_s": stats.images / seconds if seconds > 0 else 0.0, "images": stats.images,
            "skipped_images": stats.skipped, "checkpoint": str(source), "data": data, "loaded": loaded.description}


def val_dataset(loaded: Loaded, data: Optional[str], checkpoint: str | Path) -> tuple[Any, str]:
    """The val images of ``data`` (default: the checkpoint's), preprocessed and in the checkpoint's class order."""
    data = data or loaded.data
    if not data:
        raise ConfigError(f"{checkpoint}: the model names no data set; pass --data digits|DIR")
    ds = build_dataset(data, "val", eval_transform(loaded.preprocess), loaded.val_fraction)
    _align_classes(ds, loaded, data)
    return ds, data


def _align_classes(ds: Any, loaded: Loaded, data: str) -> None:
    """Map the data's class folders onto the checkpoint's class order (by name)."""
    names = dataset_classes(ds)
    n_out = getattr(loaded.model, "num_classes", 0)
    if loaded.classes is None:
        if len(names) > n_out:
            raise ConfigError(f"--data {data}: {len(names)} classes but the model has {n_out} outputs")
        return
    index = {c: i for i, c in enumerate(loaded.classes)}
    missing = [c for c in names if c not in index]
    if missing:
        raise ConfigError(f"--data {data}: classes {', '.join(missing[:5])} are not among the checkpoint's classes "
                          f"({', '.join(loaded.classes[:10])}{', ...' if len(loaded.classes) > 10 else ''})")
    if names == loaded.classes:
        return
    remap = [index[c] for c in names]
    if hasattr(ds, "samples"):
        ds.samples = [(p, remap[t]) for p, t in ds.samples]
        ds.targets = [remap[t] for t in ds.targets]
    else:
        ds.targets = [remap[t] for t in ds.targets]


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """``.json`` (the whole dict) or ``.csv`` (a header and one row)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    elif path.suffix == ".csv":
        keys = list(results)
        path.write_text(",".join(keys) + "\n" + ",".join(str(results[k]) for k in keys) + "\n", encoding="utf-8")
    else:
        raise ConfigError(f"--results-file {path}: expected a .json or .csv file name")
    return path


@torch.no_grad()
def predict(images: Sequence[str | Path], checkpoint: Optional[str | Path] = None, *, model: Optional[str] = None,
            top_k: int = 5, img_size: Optional[int] = None, crop_pct: Optional[float] = None,
            interpolation: Optional[str] = None, onnx: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """Top-k classes with probabilities per image; unreadable images are reported with an ``error``.
    ``onnx`` runs an ONNX file (float32 or int8) in onnxruntime instead of a checkpoint."""

    loaded = load_source(checkpoint, model, onnx, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    transform = eval_transform(loaded.preprocess)
    n_classes = getattr(loaded.model, "num_classes", 0)
    classes = loaded.classes or [str(i) for i in range(n_classes)]
    out = []
    for path in images:
        try:
            x = transform(open_image(path)).unsqueeze(0)
        except MixconvInputError as e:  # the message names the file and the damage
            print(f"warning: skipping unreadable image {e}", file=sys.stderr)
            out.append({"image": str(path), "error": str(e)})
            continue
        probs = loaded.model(x).float().softmax(dim=1)[0]
        p, idx = probs.topk(min(top_k, probs.numel()))
        out.append({"image": str(path), "top": [{"class": classes[i], "index": int(i), "prob": float(q)}
                                               for q, i in zip(p.tolist(), idx.tolist())]})
    return out
