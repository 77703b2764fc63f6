"""onnxruntime as a runtime: an ONNX file (float32 or int8 QDQ) behind the interface of a PyTorch classifier.

:class:`OrtClassifier` is an ``nn.Module`` whose forward runs an onnxruntime session, so the evaluation loop,
``predict`` and the benchmark use one code path for PyTorch and ONNX models. :func:`load_onnx` wraps one with
the preprocessing and classes stored in the file's metadata (see :mod:`mixconv.files.onnx_metadata`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from mixconv.files.config import ConfigError
from mixconv.files.inputs import load_onnx as read_onnx
from mixconv.files.inputs import onnx_session
from mixconv.files.onnx_metadata import MetadataError, metadata_of
from mixconv.inference.loaded import Loaded
from mixconv.models.pretrained_cfg import Preprocess


def ort_session(path: str | Path, threads: Optional[int] = None, spin: bool = True):
    """A CPU onnxruntime session for ``path`` with all graph optimizations and ``threads`` intra-op threads
    (default: torch's thread count, so ORT and PyTorch are compared on the same cores). ``spin=False`` stops
    ORT's idle threads from busy-waiting after each run: in a process that also runs PyTorch (a benchmark),
    spinning threads would steal its cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnx_session(path, ConfigError, opts, check=False)


class OrtClassifier(nn.Module):
    """An onnxruntime session as an eval-only module: float32 NCHW tensor in, logits (float32) out."""

    def __init__(self, path: str | Path, threads: Optional[int] = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)  # the batch is a name (dynamic) or an int
        out_shape = self.session.get_outputs()[0].shape
        self.num_classes = int(out_shape[-1]) if isinstance(out_shape[-1], int) else 0
        self.model_name = self.path.stem
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """The logits of a float32 NCHW array (no tensor conversion: the benchmark's path)."""
        return self.session.run(None, {self.input_name: x})[0]


def onnx_input_hw(model: OrtClassifier) -> tuple[int, int]:
    """The fixed (height, width) of the ONNX model's input."""
    h, w = model.input_shape[-2:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise ConfigError(f"{model.path}: the input's height/width are not fixed ({model.input_shape}); export with "
                          "`mixconv export` (fixed size, dynamic batch)")
    return h, w


def load_onnx(path: str | Path, *, threads: Optional[int] = None, img_size: Optional[int] = None,
              crop_pct: Optional[float] = None, interpolation: Optional[str] = None):
    """A :class:`mixconv.inference.loaded.Loaded` around an ONNX file: its model, classes, preprocessing and data
    from the metadata (without metadata: ImageNet defaults at the input's size, with a warning)."""
    import sys


    proto = read_onnx(path, check=False, error=MetadataError)  # read once: the metadata and the kind of file
    meta = metadata_of(proto, path)
    net = OrtClassifier(path, threads)
    h, w = onnx_input_hw(net)
    if h != w:
        raise ConfigError(f"{path}: input {h}x{w}; validate/predict --onnx need a square input")
    pre = meta.preprocess
    if pre is None:
        print(f"warning: {path} has no mixconv preprocessing metadata; using ImageNet mean/std, bicubic, crop 0.875",
              file=sys.stderr)
        pre = Preprocess(h, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if img_size is not None and img_size != h:
        raise ConfigError(f"--img-size {img_size}: {path} takes {h}x{w} images only")
    pre = replace(pre, img_size=h, crop_pct=crop_pct or pre.crop_pct, interpolation=interpolation or pre.interpolation)
    net.model_name = meta.model_name or net.model_name
    kind = "int8" if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else "float32"  # QDQ: int8
    return Loaded(net, meta.classes, pre, meta.data, meta.val_fraction,
                  f"{path}: {net.model_name}, {kind} ONNX in onnxruntime on the CPU")
