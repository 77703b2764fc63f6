"""Quantization-aware fine-tuning that simulates onnxruntime's int8 graph tensor by tensor.

``mixconv quantize`` (static QDQ quantization, :mod:`mixconv.deploy.quantize`) rounds every weight and every
activation tensor of the exported graph, with ranges calibrated (MinMax) on a sample of training images. QAT
is only useful if training sees the same rounding, so :func:`prepare_qat` makes a float model compute through:

- **weights**: every conv and linear weight fake-quantized per output channel, symmetric int8 in [-127, 127]
  (``--reduce-range``: [-64, 64]) with ``scale = max|w| / qmax``: the integers ORT gives the exported,
  BatchNorm-folded weight (folding scales each output channel by a constant, to which per-channel symmetric
  rounding is blind);
- **activations**: each tensor ORT quantizes, once, where it is produced: the network input, every conv
  output after its BatchNorm (the folded conv's output), the outputs of the SE convs (which have a bias and no
  BatchNorm), of ReLU, of swish's sigmoid and of its product, of the SE pool, gate and product, of each
  residual sum, the classifier's input and its logits. Per tensor, uint8 asymmetric or int8 symmetric
  (``[-127, 127]``), with ORT's scale and zero point formulas.

The activation ranges are not learned: :func:`calibrate_qat` sets them as ORT's MinMax calibration does (the
float model, eval mode, min and max over the calibration images), and they stay frozen while training.
``mixconv train --qat`` recalibrates at the start of each epoch and every ``QAT_RECALIBRATE_STEPS`` steps on
the images ``mixconv quantize`` will calibrate on, so the ranges the model is trained under are the ranges it
is deployed with. (Moving-average ranges, tried first, let the model learn to rely on clipping that ORT's
MinMax ranges then do not do: the int8 file lost 20 points.)

Gradients pass straight through the rounding (and are zero where a value is clipped). The hooks and the
ranges are kept out of the state dict: a QAT checkpoint is an ordinary float checkpoint, which `mixconv
quantize` turns into the int8 file. MixConvs run their per-group path so that each group's weight is rounded
with its own channels' scales (as the merged, zero-padded kernel ORT receives is).
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from mixconv.layers.mixed_conv import MixConv2d
from mixconv.layers.squeeze_excite import SqueezeExcite

# The activation types QAT simulates: `mixconv train --qat-activation` and `mixconv quantize --activation-type`
ACTIVATION_TYPES = ("uint8", "int8")
MODES = ("float", "calibrate", "quantize")
QAT_RECALIBRATE_STEPS = 50  # training steps between recalibrations of the activation ranges
_STATE = "_mixconv_qat"  # attribute on the prepared model: its QatState
_PARAM = "_mixconv_qat_param"


def fake_quant_weight(w: torch.Tensor, reduce_range: bool = False) -> torch.Tensor:
    """``w`` rounded to per-output-channel symmetric int8 in [-127, 127] (ORT's scheme), straight-through;
    ``reduce_range``: in [-64, 64] (ORT's 7-bit weights, ``mixconv quantize --reduce-range``)."""
    qmax = 64 if reduce_range else 127
    amax = w.detach().flatten(1).abs().amax(1).float().clamp_min(1e-12)
    scale = amax / qmax
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -qmax, qmax).to(w.dtype)


@dataclass
class TensorRange:
    """The calibrated range of one activation tensor, and the int8 parameters ORT derives from it."""

    lo: float = math.inf
    hi: float = -math.inf

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))

    @property
    def calibrated(self) -> bool:
        return self.lo <= self.hi

    def qparams(self, activation_type: str) -> tuple[float, int, int, int]:
        """(scale, zero point, qmin, qmax) as onnxruntime's ``compute_scale_zp`` (zero always representable)."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if activation_type == "int8":  # symmetric, [-127, 127], zero point 0
            scale = max(-lo, hi) / 127.0
            return (scale, 0, -127, 127) if scale > 0 else (1.0, 0, -127, 127)
        scale = (hi - lo) / 255.0
        if scale <= 0:
            return 1.0, 0, 0, 255
        return scale, int(min(255, max(0, round(-lo / scale)))), 0, 255


@dataclass
class QatState:
    """What :func:`prepare_qat` attached to a model: the settings, one range per quantized tensor, the mode."""

    activation_type: str
    reduce_range: bool
    mode: str = "quantize"
    ranges: dict[str, TensorRange] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    patched: list[nn.Module] = field(default_factory=list)  # modules whose forward was replaced

    def act(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The activation tensor ``name`` as the current mode sees it (observed, rounded or untouched)."""
        if self.mode == "float":
            return x
        r = self.ranges.setdefault(name, TensorRange())
        if self.mode == "calibrate":
            r.observe(x)
            return x
        if not r.calibrated:
            raise RuntimeError(f"QAT: the range of {name} was never calibrated; call calibrate_qat(model, images) "
                               "before training or evaluating in quantize mode")
        scale, zero, qmin, qmax = r.qparams(self.activation_type)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, qmin, qmax).to(x.dtype)

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.mode != "quantize" else fake_quant_weight(w, self.reduce_range)


def _swap_weight(st: QatState, m: nn.Module) -> None:
    # The parameter is swapped for its rounded value for the duration of one call; the optimizer and the state
    # dict keep seeing the parameter, which receives the gradient through the swap.
    param = m._parameters["weight"]
    m._parameters["weight"] = None  # kept in place (not popped): the parameter order must not change
    m.__dict__[_PARAM] = param  # not setattr: that would register it as a parameter
    m.__dict__["weight"] = st.weight(param)


def _restore_weight(m: nn.Module) -> None:
    param = m.__dict__.pop(_PARAM, None)
    if param is not None:
        m.__dict__.pop("weight", None)
        m._parameters["weight"] = param


def _hook_weighted(st: QatState, name: str, m: nn.Module, quant_out: bool) -> None:
    """Conv/linear: the weight rounded per call; a linear's input rounded, and the output where
    ``quant_out``."""
    quant_in = isinstance(m, nn.Linear)

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        _swap_weight(st, mod)
        return (st.act(f"{name}:in", args[0]), *args[1:]) if quant_in else args

    def post(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        _restore_weight(mod)
        return st.act(f"{name}:out", out) if quant_out else out

    st.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post, always_call=True)]


def _output_hook(st: QatState, name: str, m: nn.Module) -> None:
    st.handles.append(m.register_forward_hook(lambda _m, _a, out: st.act(f"{name}:out", out)))


def _patch(st: QatState, m: nn.Module, forward: Callable[..., torch.Tensor]) -> None:
    m.forward = types.MethodType(forward, m)  # an instance attribute: the class's forward is untouched
    st.patched.append(m)


def _patch_silu(st: QatState, name: str, m: nn.Module) -> None:
    # ORT runs swish as Sigmoid and Mul and rounds both outputs.
    _patch(st, m, lambda _self, x: st.act(f"{name}:mul", x * st.act(f"{name}:sigmoid", torch.sigmoid(x))))


def _patch_se(st: QatState, name: str, m: SqueezeExcite) -> None:
    def forward(self: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
        s = st.act(f"{name}:pool", x.mean((2, 3), keepdim=True))
        return st.act(f"{name}:mul", x * self.gate(self.conv_expand(self.act(self.conv_reduce(s)))))

    _patch(st, m, forward)


def _relu_inputs(model: nn.Module) -> set[str]:
    """Modules whose output only a ReLU (or ReLU6, a Clip) reads. ORT quantizes such a tensor with the ReLU
    output's range (``adjust_tensor_ranges``) and, with uint8 activations, removes the ReLU
    (``QDQRemovableActivation``): either way the values are those of one rounding after the ReLU."""
    relus = (nn.ReLU, nn.ReLU6)
    out = set()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        norm, act = getattr(m, "bn", None), getattr(m, "act", None)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and isinstance(act, relus):
            out.add(prefix + "bn")  # conv-norm-act
        if isinstance(m, SqueezeExcite) and isinstance(m.act, relus):
            out.add(prefix + "conv_reduce")
    return out


def prepare_qat(model: nn.Module, activation_type: str = "uint8", reduce_range: bool = False) -> nn.Module:
    """Make ``model`` compute through ORT's int8 rounding (in place; see the module doc); returns it.

    ``activation_type`` and ``reduce_range`` are those ``mixconv quantize`` will use (``--activation-type``,
    ``--reduce-range``). The model must be calibrated (:func:`calibrate_qat`) before it runs in quantize mode.
    """
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type: got {activation_type!r}; expected one of {', '.join(ACTIVATION_TYPES)}")
    if hasattr(model, _STATE):
        raise ValueError("the model is prepared for QAT already")
    st = QatState(activation_type, reduce_range)
    st.handles.append(model.register_forward_pre_hook(lambda _m, args: (st.act("input", args[0]), *args[1:])))
    merged = _relu_inputs(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, MixConv2d):
            m.impl = "split"  # one conv per group: each group's weight goes through its own hook
        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(m.weight, nn.Parameter):
            # outputs of linears and of biased convs (the SE convs, the classifier: nothing normalizes them)
            out = (isinstance(m, nn.Linear) or m.bias is not None) and name not in merged
            _hook_weighted(st, name, m, out)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if name not in merged:
                _output_hook(st, name, m)
        elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardswish)):
            _output_hook(st, name, m)
        elif isinstance(m, nn.SiLU):
            _patch_silu(st, name, m)
        elif isinstance(m, SqueezeExcite):
            _patch_se(st, name, m)
        if getattr(m, "has_skip", False) is True:  # an inverted-residual block: its output is the residual sum
            _output_hook(st, name, m)
    object.__setattr__(model, _STATE, st)  # not a submodule: nothing of it enters the state dict
    return model


def qat_state(model: nn.Module) -> Optional[QatState]:
    """The :class:`QatState` of a prepared model (unwrapping DDP/compile wrappers), or None."""
    inner = getattr(model, "module", model)
    return getattr(inner, _STATE, None)


def _require(model: nn.Module) -> QatState:
    st = qat_state(model)
    if st is None:
        raise ValueError("the model is not prepared for QAT (call prepare_qat first)")
    return st


def set_qat_mode(model: nn.Module, mode: str) -> None:
    """``float`` (hooks pass everything through), ``calibrate`` (observe ranges) or ``quantize``."""
    if mode not in MODES:
        raise ValueError(f"mode: got {mode!r}; expected one of {', '.join(MODES)}")
    _require(model).mode = mode


@torch.no_grad()
def calibrate_qat(model: nn.Module, images: Iterable[torch.Tensor], device: Optional[torch.device] = None) -> int:
    """Set every activation range as ORT's MinMax calibration would: the float model in eval mode over
    ``images`` (batches); then back to quantize mode and the model's previous train/eval mode. Returns the
    number of images seen."""
    st = _require(model)
    modes, seen = {m: m.training for m in model.modules()}, 0  # restored one by one: BatchNorm may be frozen
    st.ranges.clear()
    st.mode = "calibrate"
    model.eval()
    try:
        for batch in images:
            model(batch.to(device) if device is not None else batch)
            seen += len(batch)
    finally:
        st.mode = "quantize"
        for m, training in modes.items():
            m.training = training
    if not seen:
        raise ValueError("calibrate_qat: no calibration images")
    return seen


def remove_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` (in place): plain float modules again; returns ``model``."""
    st = model.__dict__.pop(_STATE, None)
    if st is not None:
        for h in st.handles:
            h.remove()
        for m in st.patched:
            m.__dict__.pop("forward", None)
        for m in model.modules():
            _restore_weight(m)
    return model


def qat_ranges(model: nn.Module) -> dict[str, TensorRange]:
    """The calibrated activation ranges of a prepared model, by tensor name (``module:role``)."""
    st = qat_state(model)
    return {} if st is None else dict(st.ranges)


def load_qat_ranges(model: nn.Module, ranges: dict[str, Any]) -> None:
    """Set a prepared model's activation ranges from ``{tensor name: [lo, hi]}`` (what :func:`qat_ranges_dict`
    gives, saved in checkpoints and step checkpoints) and switch it to quantize mode."""
    st = _require(model)
    st.mode = "quantize"
    for name, (lo, hi) in ranges.items():
        r = st.ranges.setdefault(name, TensorRange())
        r.lo, r.hi = float(lo), float(hi)


def qat_ranges_dict(model: nn.Module) -> dict[str, list[float]]:
    """The activation ranges as plain numbers, ``{tensor name: [lo, hi]}`` (JSON-able)."""
    return {name: [r.lo, r.hi] for name, r in qat_ranges(model).items()}
