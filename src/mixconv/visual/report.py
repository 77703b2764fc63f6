"""``mixconv validate --report DIR``: a visual evaluation report.

The report is computed from predictions (logits), not from a model, so any runtime can feed it (PyTorch here,
ONNX Runtime or another backend through :func:`collect_predictions` with its own ``run`` function):

* ``confusion_matrix.png``: the row-normalised confusion matrix with class names (scikit-learn, matplotlib);
* ``per_class.csv``: precision, recall, F1 and support per class, plus macro and weighted averages;
* ``mistakes.png``: the most confident mistakes (image, true and predicted class, probability);
* ``index.html``: all of the above with the top-1/top-5 summary.

Needs matplotlib (the ``report`` extra).
"""
from __future__ import annotations

import csv
import html
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mixconv.data.datasets import denormalizer
from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError

FILES = {"confusion": "confusion_matrix.png", "per_class": "per_class.csv", "mistakes": "mistakes.png",
         "index": "index.html"}


@dataclass(frozen=True)
class Predictions:
    """Logits ``(N, C)``, integer targets ``(N,)`` and each sample's position in its dataset ``(N,)``."""

    logits: np.ndarray
    targets: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or self.targets.shape != (self.logits.shape[0],) or \
                self.indices.shape != self.targets.shape:
            raise ValueError(f"Predictions: logits {self.logits.shape}, targets {self.targets.shape} and indices "
                             f"{self.indices.shape} must be (N, C), (N,) and (N,)")

    @property
    def probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def summary_metrics(preds: Predictions) -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy, the same numbers ``mixconv validate`` prints."""
    n = len(preds.targets)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "images": 0}
    k = min(5, preds.logits.shape[1])
    top = np.argsort(-preds.logits, axis=1)[:, :k]
    hit = top == preds.targets[:, None]
    logp = np.log(np.clip(preds.probs[np.arange(n), preds.targets], 1e-30, None))
    return {"top1": 100.0 * hit[:, 0].mean(), "top5": 100.0 * hit.any(axis=1).mean(), "loss": float(-logp.mean()),
            "images": n}


def _collate_indexed(batch: Sequence[Any]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], list[int], int]:
    good = [(b[0], b[1]) for b in batch if b[0] is not None]
    if not good:
        return None, None, [], len(batch)
    x = torch.stack([torch.as_tensor(s[0]) for s in good])
    y = torch.tensor([s[1][1] for s in good], dtype=torch.long)
    return x, y, [s[1][0] for s in good], len(batch) - len(good)


class _Indexed(Dataset):
    """``(image, (index, target))``; an unreadable sample (``None`` from the dataset) stays ``(None, ...)``."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, tuple[int, int]]:
        item = self.ds[i]
        return (None, (i, -1)) if item is None else (item[0], (i, int(item[1])))


def collect_predictions(run: Callable[[torch.Tensor], Any], dataset: Dataset, batch_size: int = 64,
                        workers: int = 0) -> tuple[Predictions, int, float]:
    """Run ``run(images) -> logits`` (a model, an ONNX session wrapper, ...) over ``dataset``.

    Returns the predictions, the number of unreadable samples skipped, and the seconds spent in ``run``.
    """
    loader = DataLoader(_Indexed(dataset), batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_indexed)
    logits, targets, indices, skipped, seconds = [], [], [], 0, 0.0
    for x, y, idx, n_skipped in loader:
        skipped += n_skipped
        if x is None:
            continue
        start = time.perf_counter()
        out = run(x)
        seconds += time.perf_counter() - start
        out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
        logits.append(out)
        targets.append(y.numpy())
        indices.extend(idx)
    if not logits:
        return Predictions(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)), skipped, seconds
    return Predictions(np.concatenate(logits), np.concatenate(targets), np.asarray(indices)), skipped, seconds


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--report needs matplotlib: pip install 'mixconv[report]'") from None
    return plt


def _save_fig(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def plot_confusion(preds: Predictions, classes: Sequence[str], path: Path) -> np.ndarray:
    """The confusion matrix normalised over each true class (rows sum to 1), saved as a PNG; returns it."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    plt = _pyplot()
    n = len(classes)
    cm = confusion_matrix(preds.targets, preds.logits.argmax(1), labels=list(range(n)), normalize="true")
    cm = np.nan_to_num(cm)  # classes absent from the data have an all-zero row
    side = min(max(5.0, 0.45 * n + 2), 40.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ConfusionMatrixDisplay(cm, display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", values_format=".2f", include_values=n <= 30, xticks_rotation="vertical",
        colorbar=True)
    ax.set_title("Confusion matrix (each row: one true class, normalised)")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return cm


def per_class_rows(preds: Predictions, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1, support per class, then the macro and weighted averages (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(classes)))
    pred = preds.logits.argmax(1)
    p, r, f, s = precision_recall_fscore_support(preds.targets, pred, labels=labels, zero_division=0)
    rows = [{"class": c, "precision": p[i], "recall": r[i], "f1": f[i], "support": int(s[i])}
            for i, c in enumerate(classes)]
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(preds.targets, pred, labels=labels, average=avg,
                                                        zero_division=0)
        rows.append({"class": f"{avg} avg", "precision": pa, "recall": ra, "f1": fa, "support": int(s.sum())})
    return rows


def write_per_class_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["class", "precision", "recall", "f1", "support"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def confident_mistakes(preds: Predictions, k: int) -> list[tuple[int, int, int, float]]:
    """Up to ``k`` wrong predictions, most confident first: ``(dataset index, true, predicted, probability)``."""
    probs = preds.probs
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != preds.targets)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:k]
    return [(int(preds.indices[i]), int(preds.targets[i]), int(pred[i]), float(probs[i, pred[i]])) for i in order]


def plot_mistakes(mistakes: Sequence[tuple[int, int, int, float]], classes: Sequence[str],
                  image_of: Optional[Callable[[int], Optional[np.ndarray]]], path: Path) -> None:
    """A grid of the mistakes: each image titled with its true and predicted class and the probability."""
    plt = _pyplot()
    if not mistakes:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        _save_fig(fig, path)
        plt.close(fig)
        return
    cols = min(len(mistakes), 6)
    rows = math.ceil(len(mistakes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (idx, true, pred, prob) in zip(axes.flat, mistakes):
        img = image_of(idx) if image_of is not None else None
        if img is not None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"true {classes[true]}\npred {classes[pred]} ({100 * prob:.0f}%)", fontsize=9, color="darkred")
    fig.suptitle("Most confident mistakes", fontsize=11)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], n_mistakes: int) -> str:
    esc = html.escape
    fmt = (lambda v: f"{v:.2f}" if isinstance(v, float) else esc(str(v)))
    head = "".join(f"<tr><th>{esc(str(k))}</th><td>{fmt(v)}</td></tr>" for k, v in summary.items())
    body = "".join(
        f"<tr><td>{esc(str(r['class']))}</td><td>{r['precision']:.4f}</td><td>{r['recall']:.4f}</td>"
        f"<td>{r['f1']:.4f}</td><td>{r['support']}</td></tr>" for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixconv validation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}img{{max-width:100%}}</style>
</head><body>
<h1>Validation report</h1>
<table>{head}</table>
<h2>Confusion matrix</h2><img src="{FILES['confusion']}" alt="normalised confusion matrix">
<h2>Most confident mistakes ({n_mistakes} shown)</h2><img src="{FILES['mistakes']}" alt="most confident mistakes">
<h2>Per class (<a href="{FILES['per_class']}">CSV</a>)</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{body}</table>
</body></html>
"""


def write_report(out_dir: str | Path, preds: Predictions, classes: Sequence[str], *,
                 image_of: Optional[Callable[[int], Optional[np.ndarray]]] = None,
                 summary: Optional[Mapping[str, Any]] = None, max_mistakes: int = 18) -> dict[str, Path]:
    """Write the report files into ``out_dir`` from ``preds``; returns their paths by kind (see ``FILES``).

    ``image_of(dataset_index)`` gives a displayable image (HxW or HxWxC, floats in [0, 1] or uint8) for the
    mistakes grid; without it the grid has the titles only. ``summary`` (e.g. checkpoint, data, images/s) is
    shown above the metrics that are computed here.
    """
    if preds.logits.shape[0] and preds.logits.shape[1] != len(classes):
        raise ConfigError(f"report: the logits have {preds.logits.shape[1]} classes but {len(classes)} class "
                          "names were given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    plot_confusion(preds, classes, paths["confusion"])
    rows = per_class_rows(preds, classes)
    write_per_class_csv(rows, paths["per_class"])
    mistakes = confident_mistakes(preds, max_mistakes)
    plot_mistakes(mistakes, classes, image_of, paths["mistakes"])
    info = {**summary_metrics(preds), **dict(summary or {})}
    text = _html(info, rows, len(mistakes))
    atomic_write(paths["index"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return paths


def report_from_checkpoint(out_dir: str | Path, checkpoint: Optional[str | Path] = None, *, model: Optional[str] = None,
                           data: Optional[str] = None, batch_size: int = 64, workers: int = 0, amp: str = "none",
                           channels_last: bool = False, img_size: Optional[int] = None,
                           crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                           device: Optional[str] = None, onnx: Optional[str | Path] = None) -> dict[str, Any]:
    """``mixconv validate --report DIR``: one pass over the val data with a PyTorch checkpoint (or ``onnx``, an
    ONNX file run by onnxruntime), the report written to ``out_dir``, and the same results dict as
    :func:`mixconv.inference.runner.evaluate`."""
    from mixconv.inference.engine import autocast
    from mixconv.inference.runner import load_source, val_dataset

    loaded = load_source(checkpoint, model, onnx, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    ds, data = val_dataset(loaded, data, onnx if onnx is not None else checkpoint)
    if onnx is not None:
        device, amp, channels_last = "cpu", "none", False  # onnxruntime's CPU provider takes float32 NCHW
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = loaded.model.to(dev).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev)
        with autocast(dev, amp):
            return net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    preds, skipped, seconds = collect_predictions(run, ds, batch_size, workers)
    n_out = preds.logits.shape[1] if preds.logits.size else getattr(net, "num_classes", 0)
    classes = loaded.classes or [str(c) for c in getattr(ds, "classes", range(n_out))]
    classes = list(classes) + [str(i) for i in range(len(classes), n_out)]
    pre = loaded.preprocess
    results = {**summary_metrics(preds), "images_per_s": len(preds.targets) / seconds if seconds > 0 else 0.0,
               "skipped_images": skipped, "checkpoint": str(checkpoint), "data": data, "loaded": loaded.description}
    write_report(out_dir, preds, classes[:n_out], image_of=denormalizer(ds, pre.mean, pre.std),
                 summary={k: results[k] for k in ("checkpoint", "data", "images_per_s", "skipped_images")})
    results["report"] = str(Path(out_dir) / FILES["index"])
    return results


__all__ = ["FILES", "Predictions", "collect_predictions", "confident_mistakes", "per_class_rows",
           "plot_confusion", "plot_mistakes", "report_from_checkpoint", "summary_metrics", "write_report"]
