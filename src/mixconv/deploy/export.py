"""Export to ONNX, TorchScript and ``torch.export`` ExportedProgram, each verified after writing.

Every export runs on an eval-mode copy of the model in which TensorFlow SAME padding (the ``tf_`` variants)
is frozen to static pads at the export size, so no graph computes paddings from shapes; those models then
take exactly the export's height and width. The batch dimension is dynamic by default.

After writing, the file is read back and run (ONNX: ``onnx.checker`` and onnxruntime; TorchScript and
ExportedProgram: reloaded with torch) at a batch size other than the export's, and compared with the PyTorch
model: the maximum absolute difference relative to the largest output magnitude must be <= ``tol``.
"""
from __future__ import annotations

import copy
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.files.atomic import staged_file
from mixconv.files.inputs import MixconvInputError, load_onnx, onnx_session
from mixconv.layers.conv2d_same import Conv2dSame
from mixconv.layers.padding import same_pad_amount

FORMATS = ("onnx", "torchscript", "exported-program")
ONNX_EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """An export that failed or did not reproduce the PyTorch model; the message says which and by how much."""


@dataclass(frozen=True)
class ExportCheck:
    """The verification of one exported file against the PyTorch model."""

    format: str
    path: Path
    runtime: str
    input_shape: tuple[int, ...]
    export_batch: int
    max_abs_err: float
    rel_err: float
    tol: float

    @property
    def passed(self) -> bool:
        return self.rel_err <= self.tol

    def __str__(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"check {self.format}: {self.runtime} vs PyTorch on input {tuple(self.input_shape)} (exported at "
                f"batch {self.export_batch}): max abs err {self.max_abs_err:.3e}, rel err {self.rel_err:.3e} "
                f"(tol {self.tol:.0e}) {verdict}")


class StaticPadConv2d(nn.Conv2d):
    """A conv with a fixed (possibly asymmetric) zero pad ``(left, right, top, bottom)``: TF SAME frozen at one
    input size. Same parameters (and state-dict keys) as the conv it replaces."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        self.load_state_dict(conv.state_dict())
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def freeze_same_padding(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """Replace (in place) every dynamic TF-SAME conv by a :class:`StaticPadConv2d` for ``input_shape``."""
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, Conv2dSame)]
    if not hooks:
        return model
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape[1:]))
    finally:
        for h in hooks:
            h.remove()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Conv2dSame) and id(child) in sizes:
                (h, w), k, s, d = sizes[id(child)], child.kernel_size[0], child.stride[0], child.dilation[0]
                ph, pw = same_pad_amount(h, k, s, d), same_pad_amount(w, k, s, d)
                setattr(parent, name, StaticPadConv2d(child, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
    return model


def export_input_shape(model: nn.Module, img_size: int | Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
    """``(batch, in_chans, H, W)``: ``img_size`` (an int or ``(H, W)``) or the model's ``meta.input_size``."""
    if img_size is None:
        meta = getattr(model, "meta", None)
        hw = tuple(meta.input_size[1:]) if meta is not None else (224, 224)
    elif isinstance(img_size, int):
        hw = (img_size, img_size)
    else:
        hw = tuple(int(v) for v in img_size)
    if len(hw) != 2 or any(v < 1 for v in hw):
        raise ValueError(f"img_size must be a positive int or (height, width), got {img_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return (batch_size, int(getattr(model, "in_chans", 3)), *hw)


def prepare_for_export(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """An eval-mode copy of ``model`` with TF SAME padding frozen at ``input_shape`` (the original is untouched)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        # A graph has no memory format: the trunk's NHWC conversion would only add shape/stride ops.
        if isinstance(getattr(m, "channels_last", None), bool):
            m.channels_last = False
        if getattr(m, "micro_stages", 0):  # an optimized model: slicing a symbolic batch is not exportable
            m.micro_stages = 0
    return freeze_same_padding(model, input_shape)


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _outputs(v)]
    raise ExportError(f"cannot compare a model output of type {type(out).__name__}")


def _compare(fmt: str, path: Path, runtime: str, got: Sequence[Any], ref: Sequence[torch.Tensor],
             shape: Sequence[int], export_batch: int, tol: float) -> ExportCheck:
    if len(got) != len(ref):
        raise ExportError(f"{path}: the exported {fmt} returns {len(got)} outputs, PyTorch {len(ref)}")
    max_abs, rel = 0.0, 0.0
    for g, r in zip(got, ref):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(r.shape):
            raise ExportError(f"{path}: output shape {tuple(g.shape)} differs from PyTorch's {tuple(r.shape)}")
        err = (g.float() - r.float()).abs().max().item()
        max_abs = max(max_abs, err)
        rel = max(rel, err / max(r.abs().max().item(), 1e-12))
    if math.isnan(rel):
        rel = math.inf
    check = ExportCheck(fmt, path, runtime, tuple(shape), export_batch, max_abs, rel, tol)
    if not check.passed:
        raise ExportError(f"{path}: verification failed, so the file was not written: relative error "
                          f"{check.rel_err:.3e} exceeds the bound {tol:.0e} (a larger tol, --tol in the CLI, "
                          f"accepts it); {check}")
    return check


def _reference(model: nn.Module, shape: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A seeded input of ``shape`` and the original model's (eval-mode) outputs on it."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = _outputs(model(x))
    finally:
        model.train(was_training)
    return x, ref


def _verify(fmt: str, path: Path, runtime: str, run: Callable[[torch.Tensor], Sequence[Any]], model: nn.Module,
            shape: tuple[int, ...], dynamic_batch: bool, tol: float) -> ExportCheck:
    """Run the re-loaded export (``run``) and the original model on a seeded input and compare them; the input
    has a different batch size (export batch + 1) when the batch is dynamic."""
    check_shape = (shape[0] + 1, *shape[1:]) if dynamic_batch else shape
    x, ref = _reference(model, check_shape)
    return _compare(fmt, path, runtime, run(x), ref, check_shape, shape[0], tol)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | Sequence[int] | None = None,
    batch_size: int = 2,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    verify: bool = True,
    tol: float = 1e-4,
    metadata: Any = None,
    ort_rewrites: bool = False,
) -> ExportCheck | None:
    """Export ``model`` to ONNX at ``path`` (atomically) and verify it with ``onnx.checker`` and onnxruntime.

    Args:
        img_size: export height/width (int or ``(H, W)``; default: the model's input size).
        batch_size: batch of the example input; verification runs at ``batch_size + 1`` when the batch is dynamic.
        opset: ONNX opset version.
        dynamic_batch: make the batch dimension symbolic (height and width are always fixed).
        exporter: ``"dynamo"`` (``torch.export``-based, the default: SAME pads fold into the Conv nodes) or
            ``"torchscript"`` (the legacy ``torch.onnx.export(dynamo=False)``: about twice as fast, deprecated
            by PyTorch, and it leaves a few shape ops around frozen asymmetric pads).
        verify: read the file back and compare with PyTorch; raises :class:`ExportError` beyond ``tol``.
        metadata: a :class:`mixconv.deploy.OnnxMetadata` (preprocessing, classes, data) stored in the file's
            ``metadata_props``; default: the model's own preprocessing at the export size.
        ort_rewrites: rewrite the graph for onnxruntime's CPU kernels (same outputs; see
            :mod:`mixconv.deploy.ort_graph`): what ``mixconv export --optimize`` does.
    Returns the :class:`ExportCheck` (``None`` with ``verify=False``).
    """
    import onnx

    from mixconv.files.onnx_metadata import model_metadata, set_metadata

    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; expected one of {', '.join(ONNX_EXPORTERS)}")
    path = Path(path)
    shape = export_input_shape(model, img_size, batch_size)
    net = prepare_for_export(model, shape)
    example = torch.zeros(shape)
    with torch.no_grad():
        n_out = len(_outputs(net(example)))
    names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*", category=DeprecationWarning)
            if exporter == "dynamo":
                dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                torch.onnx.export(net, (example,), tmp, dynamo=True, opset_version=opset, input_names=["input"],
                                  output_names=names, dynamic_shapes=dyn, verbose=False)
            else:
                axes = {n: {0: "batch"} for n in ["input", *names]} if dynamic_batch else None
                torch.onnx.export(net, (example,), tmp, dynamo=False, opset_version=opset, input_names=["input"],
                                  output_names=names, dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(tmp)  # with the weights the dynamo exporter may have put in "<tmp>.data"
        Path(tmp + ".data").unlink(missing_ok=True)  # re-saved inside the model below
        set_metadata(proto, metadata if metadata is not None else model_metadata(model, tuple(shape[2:])))
        if ort_rewrites:
            from mixconv.deploy.ort_graph import tune_for_onnxruntime

            tune_for_onnxruntime(proto)
        onnx.save(proto, tmp)
        onnx.checker.check_model(proto, full_check=True)

    with staged_file(path) as tmp:  # published only once verified: a failed check leaves no file at path
        write(str(tmp))
        return _verify_onnx(tmp, path, model, shape, dynamic_batch, tol) if verify else None


def _verify_onnx(tmp: Path, path: Path, model: nn.Module, shape: tuple[int, ...], dynamic_batch: bool,
                 tol: float) -> ExportCheck:
    """Read the staged file ``tmp`` back from disk (damage there is one clear error naming ``path``, as the user
    knows it) and compare onnxruntime's outputs with PyTorch's."""
    import onnxruntime as ort

    try:
        session = onnx_session(tmp)
    except MixconvInputError as e:
        raise type(e)(str(e).replace(str(tmp), str(path))) from None

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(g) for g in session.run(None, {session.get_inputs()[0].name: x.numpy()})]

    return _verify("onnx", path, f"onnxruntime {ort.__version__}", run, model, shape, dynamic_batch, tol)


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | Sequence[int] | None = None,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    verify: bool = True,
    tol: float = 1e-4,
) -> ExportCheck | None:
    """Trace ``model`` to TorchScript at ``path`` (atomically) and verify the reloaded module.

    A traced convolutional network accepts any batch size; with ``dynamic_batch=False`` it is only verified at
    the export's batch. Options as :func:`export_onnx`.
    """
    path = Path(path)
    shape = export_input_shape(model, img_size, batch_size)
    net = prepare_for_export(model, shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
        traced = torch.jit.trace(net, torch.zeros(shape), check_trace=False)
    with staged_file(path) as tmp:  # published only once verified
        with warnings.catch_warnings():  # TorchScript is this format; its deprecation is not the user's to act on
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
            torch.jit.save(traced, str(tmp))
        if not verify:
            return None

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
                return _outputs(torch.jit.load(str(tmp), map_location="cpu")(x))

        return _verify("torchscript", path, "torch.jit.load", run, model, shape, dynamic_batch, tol)


def export_program(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | Sequence[int] | None = None,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    verify: bool = True,
    tol: float = 1e-4,
) -> ExportCheck | None:
    """``torch.export`` ``model`` to an ExportedProgram file (``.pt2``, atomically) and verify the reloaded program.

    Options as :func:`export_onnx`.
    """
    path = Path(path)
    shape = export_input_shape(model, img_size, batch_size)
    net = prepare_for_export(model, shape)
    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.export.export(net, (torch.zeros(shape),), dynamic_shapes=dyn)
    buf = io.BytesIO()  # through a buffer: torch.export wants a .pt2 name, the atomic temporary file has none
    torch.export.save(program, buf)
    with staged_file(path) as tmp:  # published only once verified
        tmp.write_bytes(buf.getvalue())
        if not verify:
            return None

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return _outputs(torch.export.load(io.BytesIO(tmp.read_bytes())).module()(x))

        return _verify("exported-program", path, "torch.export.load", run, model, shape, dynamic_batch, tol)


EXPORTERS: dict[str, Callable[..., ExportCheck | None]] = {
    "onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program,
}


def export_model(model: nn.Module, path: str | Path, format: str, **opts: Any) -> ExportCheck | None:
    """Dispatch to :func:`export_onnx`, :func:`export_torchscript` or :func:`export_program` by ``format``."""
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    return EXPORTERS[format](model, path, **opts)


def onnx_op_counts(path: str | Path) -> dict[str, int]:
    """Node counts per op type of an ONNX file's main graph (sorted by op type)."""
    counts: dict[str, int] = {}
    for node in load_onnx(path, check=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
