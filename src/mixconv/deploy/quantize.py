"""Static int8 post-training quantization of an exported MixNet with ``onnxruntime.quantization``.

The recipe (what ORT's x86/Arm int8 kernels are fastest and most accurate with):

- ``quant_pre_process`` first (symbolic shape inference and ORT's graph fusions, so that quantization sees
  the graph that will run);
- small grouped 1x1 convs made dense (block-diagonal weights; ORT's int8 grouped conv is slow: densify.py);
- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops; ORT fuses them into int8 kernels);
- weights int8, symmetric, per output channel: depthwise MixConv kernels and folded BatchNorms give channels
  whose ranges differ by orders of magnitude, which per-tensor scales would crush;
- activations uint8 (asymmetric: swish and the SE gates are one-sided) or int8 (symmetric);
- calibration on real images (MinMax, Percentile or Entropy), the eval preprocessing stored in the file.

:func:`quantize_onnx` writes the int8 file; :func:`verify_int8` compares it with the float file on real
validation images (top-1 of both, agreement, largest logit difference, file sizes, speed); where the loss
exceeds the bound, :func:`sensitivity` lists the tensors that lose the most (ORT's ``qdq_loss_debug``).
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mixconv.data.datasets import image_batches, sample_subset
from mixconv.deploy.densify import MAX_ZEROS, densify_grouped_pointwise
from mixconv.files.config import ConfigError
from mixconv.files.onnx_metadata import OnnxMetadata, read_metadata, write_metadata

METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("uint8", "int8")
# The default bound: int8 top-1 within this many points of float32 and at least this agreement (percent).
MAX_DROP = 0.5
MIN_AGREEMENT = 99.0


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize (the ``mixconv quantize`` options)."""

    method: str = "minmax"
    calib_images: int = 256
    activation_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: for int8 GEMMs without VNNI (u8s8 saturation)
    exclude: tuple[str, ...] = ()  # groups, module paths or node names kept in float
    percentile: float = 99.999
    dense_max_zeros: int = MAX_ZEROS  # grouped 1x1 convs made dense for the int8 GEMM (see densify.py); 0: none

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: got {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"activation_type: got {self.activation_type!r}; expected one of "
                              f"{', '.join(ACTIVATION_TYPES)}")
        if self.calib_images < 1:
            raise ConfigError(f"calib_images: got {self.calib_images}; expected an int >= 1")
        if self.dense_max_zeros < 0:
            raise ConfigError(f"dense_max_zeros: got {self.dense_max_zeros}; expected an int >= 0")


@dataclass
class QuantizeReport:
    """The verification of an int8 file against its float32 source on real validation images."""

    fp32_path: Path
    int8_path: Path
    images: int
    fp32_top1: float
    int8_top1: float
    agreement: float  # percent of images where both models' top-1 classes agree
    max_logit_diff: float
    fp32_bytes: int
    int8_bytes: int
    speed: dict[int, float] = field(default_factory=dict)  # batch size -> int8 img/s over fp32 img/s
    sensitivity: list[tuple[str, float, float]] = field(default_factory=list)  # (tensor, local SQNR, total SQNR)
    written: bool = True  # False: outside the bound, so nothing was written at int8_path

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes

    def within(self, max_drop: float = MAX_DROP, min_agreement: float = MIN_AGREEMENT) -> bool:
        return self.drop <= max_drop and self.agreement >= min_agreement

    def lines(self) -> list[str]:
        out = [
            f"top-1 on {self.images} validation images: fp32 {self.fp32_top1:.2f}, int8 {self.int8_top1:.2f} "
            f"({-self.drop:+.2f} points); top-1 agreement {self.agreement:.2f}%; largest logit difference "
            f"{self.max_logit_diff:.4f}",
            f"file sizes: fp32 {self.fp32_bytes / 2**20:.2f} MiB, int8 {self.int8_bytes / 2**20:.2f} MiB "
            f"({self.size_ratio:.2f}x)",
        ]
        if self.speed:
            out.append("speed, int8 vs fp32 in onnxruntime on this machine: " + ", ".join(
                f"batch {b} {r:.2f}x" for b, r in self.speed.items()))
        return out


class _Rejected(Exception):
    """Raised inside the staged write of an int8 file that fails its bound, so that the file is removed."""

    def __init__(self, report: QuantizeReport) -> None:
        super().__init__("the int8 model is outside the bound")
        self.report = report


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over preprocessed images, one batch at a time."""

    def __init__(self, input_name: str, batches: Iterator[torch.Tensor]) -> None:
        self.input_name, self.batches = input_name, batches

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch.numpy())}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # qdq_loss_debug iterates
        return iter(self.get_next, None)


def data_splits(data: str, meta: OnnxMetadata, source: str) -> tuple[Dataset, Dataset]:
    """(calibration, validation) datasets of ``data`` (``digits``, an ImageFolder root or shards) with the
    file's eval preprocessing: calibration from the training split, validation from the val split. A folder
    without ``train/`` serves both (the calibration images are then a sample of the validation images)."""
    from mixconv.data.datasets import BUILTIN_DATASETS, build_dataset, eval_transform
    from mixconv.data.shards import is_shards

    if meta.preprocess is None:
        raise ConfigError(f"{source}: no mixconv preprocessing in its metadata; export it with `mixconv export`")
    transform = eval_transform(meta.preprocess)
    val = build_dataset(data, "val", transform, meta.val_fraction)
    if data not in BUILTIN_DATASETS and not is_shards(data) and not (Path(data) / "train").is_dir():
        print(f"warning: --data {data} has no train/ folder; calibrating on a sample of its validation images",
              file=sys.stderr)
        return val, val
    return build_dataset(data, "train", transform, meta.val_fraction), val


def quantize_onnx(
    model: str | Path,
    output: str | Path,
    *,
    data: Optional[str] = None,
    settings: QuantizeSettings = QuantizeSettings(),
    verify: bool = True,
    val_images: Optional[int] = None,
    speed_batches: Sequence[int] = (1, 32),
    max_drop: float = MAX_DROP,
    min_agreement: float = MIN_AGREEMENT,
) -> Optional[QuantizeReport]:
    """Quantize the float32 ONNX file ``model`` (from ``mixconv export``) to int8 QDQ at ``output``.

    The int8 file is written beside ``output`` under a temporary name and moved into place only when it passes
    verification (or with ``verify=False``): an int8 model outside the bound is never left at ``output``.

    Args:
        data: ``digits`` or an ImageFolder root for calibration and verification; default: the data recorded
            in the file's metadata (``mixconv export`` of a ``mixconv train`` checkpoint records it).
        settings: method, number of calibration images, activation type, nodes kept in float (see
            :class:`QuantizeSettings`).
        verify: compare with the float file on ``val_images`` validation images (default: all) and time both
            at ``speed_batches`` (empty: no timing); where the int8 top-1 drops more than ``max_drop`` points or
            agrees on fewer than ``min_agreement`` percent of images, a per-tensor sensitivity report is added
            and nothing is written (``report.written`` is False).
    Returns the :class:`QuantizeReport` (``None`` with ``verify=False``).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from mixconv.deploy.groups import resolve_excludes
    from mixconv.files.atomic import staged_file
    from mixconv.inference.ort import ort_session

    model, output = Path(model), Path(output)
    meta = read_metadata(model)
    data = data or meta.data
    if not data:
        raise ConfigError(f"{model}: the file names no data set to calibrate on; pass --data digits|DIR")
    calib_ds, val_ds = data_splits(data, meta, str(model))
    exclude = resolve_excludes(model, settings.exclude) if settings.exclude else []
    input_name = ort_session(model, 1).get_inputs()[0].name
    act = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[settings.method]
    extra = {"WeightSymmetric": True, "ActivationSymmetric": settings.activation_type == "int8",
             "CalibPercentile": settings.percentile}
    try:
        with tempfile.TemporaryDirectory(prefix="mixconv-quantize-") as tmp, staged_file(output) as staged:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(model), str(pre))
            if settings.dense_max_zeros > 0:
                densify_grouped_pointwise(pre, pre, settings.dense_max_zeros)
            reader = _Reader(input_name, image_batches(sample_subset(calib_ds, settings.calib_images), 16))
            quantize_static(str(pre), str(staged), reader, quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                            reduce_range=settings.reduce_range, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=method, extra_options=extra)
            write_metadata(staged, meta)  # quantization drops the model-level metadata: the int8 file keeps it
            if not verify:
                return None
            report = verify_int8(model, staged, sample_subset(val_ds, val_images or len(val_ds)), speed_batches)
            report.int8_path = output
            if report.within(max_drop, min_agreement):
                return report  # the staged file moves to output as the block ends
            report.written = False
            report.sensitivity = sensitivity(model, staged, sample_subset(calib_ds, min(settings.calib_images, 32), seed=1),
                                             input_name)
            raise _Rejected(report)  # removes the staged file: a rejected int8 model is never left at output
    except _Rejected as rejected:
        return rejected.report


def export_checkpoint(checkpoint: str | Path, output: str | Path, model: Optional[str] = None):
    """Export a checkpoint, optimized for inference, to a float32 ONNX file at ``output`` at its own input size
    with its preprocessing and data in the metadata: what ``mixconv quantize --checkpoint`` quantizes. ``model``
    is the architecture of a checkpoint without a header. Returns the export's ``ExportCheck``."""
    from mixconv.deploy.export import export_onnx
    from mixconv.factory.checkpoint import model_from_checkpoint
    from mixconv.files.onnx_metadata import checkpoint_metadata
    from mixconv.models.mixnet import MixNet, MixNetFeatures
    from mixconv.surgery.optimize import optimize_for_inference

    net = model_from_checkpoint(checkpoint, model).eval()
    img_size = tuple(net.meta.input_size[1:]) if getattr(net, "meta", None) is not None else None
    meta = checkpoint_metadata(net, checkpoint, None)
    if meta.preprocess is not None:
        img_size = (meta.preprocess.img_size, meta.preprocess.img_size)
    # optimize_for_inference knows MixNets; other networks (MixConv-MobileNets) export as built, BN unfolded
    # (onnxruntime folds it when it loads the graph)
    fast = optimize_for_inference(net) if isinstance(net, (MixNet, MixNetFeatures)) else net
    return export_onnx(fast, output, img_size=img_size, metadata=meta, ort_rewrites=True)


def fp32_export_path(output: str | Path, fp32_output: str | Path | None = None) -> Path:
    """Where a checkpoint's float32 export goes before quantizing to ``output``: ``fp32_output``, or ``output``
    with the suffix ``.fp32.onnx``."""
    return Path(fp32_output or Path(output).with_suffix(".fp32.onnx"))


def quantize_checkpoint(checkpoint: str | Path, output: str | Path, *, fp32_output: str | Path | None = None,
                        model: Optional[str] = None, **options) -> Optional[QuantizeReport]:
    """:func:`export_checkpoint` to :func:`fp32_export_path`, then :func:`quantize_onnx` of that file to
    ``output`` with ``options`` (its keyword arguments)."""
    fp32 = fp32_export_path(output, fp32_output)
    export_checkpoint(checkpoint, fp32, model)
    return quantize_onnx(fp32, output, **options)


def _run_all(session, ds: Dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from mixconv.data.datasets import collate_skip

    name = session.get_inputs()[0].name
    logits, targets = [], []
    for images, t, _ in DataLoader(ds, batch_size, collate_fn=collate_skip):
        if images is not None:
            logits.append(session.run(None, {name: np.ascontiguousarray(images.numpy())})[0])
            targets.append(t.numpy())
    if not logits:
        raise ConfigError("no readable validation images to verify the int8 model on")
    return np.concatenate(logits), np.concatenate(targets)


def verify_int8(fp32: str | Path, int8: str | Path, val_ds: Dataset,
                speed_batches: Sequence[int] = (1, 32), rounds: int = 5) -> QuantizeReport:
    """Top-1 of both files, agreement and largest logit difference on ``val_ds``; sizes; int8/fp32 speed."""
    from mixconv.inference.ort import ort_session

    s32, s8 = ort_session(fp32), ort_session(int8)
    l32, targets = _run_all(s32, val_ds)
    l8, _ = _run_all(s8, val_ds)
    p32, p8 = l32.argmax(1), l8.argmax(1)
    report = QuantizeReport(
        Path(fp32), Path(int8), len(targets), 100.0 * float((p32 == targets).mean()),
        100.0 * float((p8 == targets).mean()), 100.0 * float((p32 == p8).mean()), float(np.abs(l32 - l8).max()),
        Path(fp32).stat().st_size, Path(int8).stat().st_size)
    shape = [d if isinstance(d, int) else 1 for d in s32.get_inputs()[0].shape]
    for b in speed_batches:
        report.speed[b] = speed_ratio(s32, s8, (b, *shape[1:]), rounds)
    return report


def speed_ratio(reference, candidate, shape: Sequence[int], rounds: int = 5, min_seconds: float = 0.2) -> float:
    """Median time of ``reference`` over median time of ``candidate`` (two ORT sessions) on a random input of
    ``shape``, in interleaved rounds of at least ``min_seconds`` each."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    runs = []
    for s in (reference, candidate):
        name = s.get_inputs()[0].name
        runs.append(lambda s=s, name=name: s.run(None, {name: x}))
    per_round = []
    for run in runs:  # warm up and size the rounds
        run()
        t0 = time.perf_counter()
        run()
        per_round.append(max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6))))
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            for _ in range(per_round[i]):
                run()
            times[i].append((time.perf_counter() - t0) / per_round[i])
    return statistics.median(times[0]) / statistics.median(times[1])


def sensitivity(fp32: str | Path, int8: str | Path, ds: Dataset, input_name: str,
                top: int = 10) -> list[tuple[str, float, float]]:
    """The ``top`` activations with the lowest signal-to-quantization-noise ratio (dB) in the int8 model:
    ``(tensor, local SQNR of its own quantization, SQNR against the float model's same tensor)``, worst
    first (ORT's ``qdq_loss_debug``). Keep the layers named here in float with ``--exclude``."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory(prefix="mixconv-sensitivity-") as tmp:
        acts = []
        for path, name in ((fp32, "fp32"), (int8, "int8")):
            aug = Path(tmp) / f"{name}.onnx"
            dbg.modify_model_output_intermediate_tensors(str(path), str(aug), save_as_external_data=False)
            acts.append(dbg.collect_activations(str(aug), _Reader(input_name, image_batches(ds, 8))))
    matched = dbg.create_activation_matching(acts[1], acts[0])
    errors = dbg.compute_activation_error(matched)
    rows = [(name, float(e.get("qdq_err", math.inf)), float(e.get("xmodel_err", math.inf)))
            for name, e in errors.items()]
    rows.sort(key=lambda r: (r[1] if math.isfinite(r[1]) else 1e9))
    return rows[:top]


def cpu_warning() -> Optional[str]:
    """A warning where this CPU has no int8 dot-product units (VNNI/AMX on x86, dotprod/i8mm on Arm)."""
    from mixconv.kernels.capability import cpu_info, has_int8_dot

    if has_int8_dot():
        return None
    return (f"warning: this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8; "
            f"{cpu_info().describe()}): int8 will run about as fast as float32 here, and uint8 activations with "
            f"int8 weights can saturate; quantize with --reduce-range for such CPUs")
