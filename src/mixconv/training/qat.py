"""Quantization-aware fine-tuning with fake quantization that matches onnxruntime's int8 scheme.

``prepare_qat(model)`` makes a float MixNet train through int8 rounding, in place, without changing its
modules' names or its state dict (a QAT checkpoint is an ordinary float checkpoint, which `mixconv quantize`
then turns into the int8 ONNX file ORT runs):

- every conv and linear computes with its weight fake-quantized per output channel, symmetric int8 in
  [-127, 127] with ``scale = max|w| / 127`` (``torch.fake_quantize_per_channel_affine``): exactly the integers
  ORT's per-channel symmetric quantization gives the exported, BatchNorm-folded weight, because folding
  scales each output channel by a constant, to which per-channel symmetric rounding is blind;
- every conv and linear input is fake-quantized to uint8 with an asymmetric per-tensor scale from a moving
  average of its min/max (``torch.ao.quantization.FakeQuantize`` with ``MovingAverageMinMaxObserver``): what
  ORT's MinMax calibration computes for the same tensors. ``prepare_qat(model, "int8", reduce_range=True)``
  simulates ``mixconv quantize --activation-type int8 --reduce-range`` instead: symmetric int8 activations in
  [-127, 127] (scale ``max|x| / 127``) and 7-bit weights in [-64, 64] (``mixconv train --qat-activation int8
  --qat-reduce-range``). ORT also quantizes the outputs of the elementwise ops
  (swish, the SE gate multiply, residual adds); those small errors are not simulated.

Gradients pass straight through the rounding (the straight-through estimator). MixConvs run their per-group
reference path so that every group's weight is fake-quantized.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

from mixconv.files.config import ConfigError
from mixconv.layers.mixed_conv import MixConv2d
from mixconv.training.config import QAT_ACTIVATIONS as ACTIVATION_TYPES

_STATE = "_mixconv_qat"  # attribute on each prepared module: (activation fake-quant, hook handles)


def fake_quant_weight(w: torch.Tensor, reduce_range: bool = False) -> torch.Tensor:
    """``w`` rounded to per-output-channel symmetric int8 in [-127, 127] (ORT's scheme), straight-through;
    ``reduce_range``: in [-64, 64] (ORT's 7-bit weights, ``mixconv quantize --reduce-range``)."""
    qmax = 64 if reduce_range else 127
    amax = w.detach().flatten(1).abs().amax(1).float().clamp_min(1e-12)
    scale = amax / qmax
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def _activation_fake_quant(activation_type: str = "uint8") -> FakeQuantize:
    if activation_type == "int8":  # ORT's symmetric int8 activations: [-127, 127], scale max|x| / 127, zero 0
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                            qscheme=torch.per_tensor_symmetric, averaging_constant=0.01)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine, averaging_constant=0.01)


def _pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    fq, _handles, reduce_range = getattr(module, _STATE)
    x = args[0]
    if fq.scale.device != x.device:
        fq.to(x.device)
    # Swap the weight parameter for its fake-quantized value for the duration of this call; the optimizer and
    # the state dict keep seeing the parameter, which receives the gradient through the swap.
    param = module._parameters["weight"]
    module._parameters["weight"] = None  # kept in place (not popped): the parameter order must not change
    module.__dict__["_mixconv_qat_param"] = param  # not setattr: that would register it as a parameter
    module.__dict__["weight"] = fake_quant_weight(param, reduce_range)
    return (fq(x.float()).to(x.dtype), *args[1:])


def _post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    _restore(module)
    return output


def _restore(module: nn.Module) -> None:
    param = module.__dict__.pop("_mixconv_qat_param", None)
    if param is not None:
        module.__dict__.pop("weight", None)
        module._parameters["weight"] = param


def prepare_qat(model: nn.Module, activation_type: str = "uint8", reduce_range: bool = False) -> nn.Module:
    """Fake-quantize ``model`` (in place) for quantization-aware training; returns it. See the module doc.

    ``activation_type`` and ``reduce_range`` are those ``mixconv quantize`` will use (``--activation-type``,
    ``--reduce-range``): uint8 (asymmetric) or int8 (symmetric) activations; 8-bit or 7-bit weights.
    """
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type: got {activation_type!r}; expected one of {', '.join(ACTIVATION_TYPES)}")
    if any(hasattr(m, _STATE) for m in model.modules()):
        raise ValueError("the model is prepared for QAT already")
    for m in model.modules():
        if isinstance(m, MixConv2d):
            m.impl = "split"  # one conv per group: each group's weight goes through its own hook
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(m.weight, nn.Parameter):
            fq = _activation_fake_quant(activation_type).to(m.weight.device)
            handles = (m.register_forward_pre_hook(_pre_hook), m.register_forward_hook(_post_hook, always_call=True))
            # Not a registered submodule: the observers stay out of the state dict (an ordinary checkpoint).
            object.__setattr__(m, _STATE, (fq, handles, reduce_range))
    return model


def remove_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` (in place): plain float modules again; returns ``model``."""
    for m in model.modules():
        state = m.__dict__.pop(_STATE, None)
        if state is not None:
            for h in state[1]:
                h.remove()
            _restore(m)
    return model


def qat_observers(model: nn.Module) -> dict[str, FakeQuantize]:
    """The activation fake-quant of each prepared module, by module name (their ``scale``/``zero_point`` are
    the learned uint8 input ranges)."""
    return {name: m.__dict__[_STATE][0] for name, m in model.named_modules() if _STATE in m.__dict__}


def setup_qat(model: nn.Module, cfg: Any) -> nn.Module:
    """The ``mixconv train --qat`` hook: check the settings, then :func:`prepare_qat`."""
    import warnings

    if cfg.compile:
        raise ConfigError("--qat cannot be combined with --compile (the fake-quant hooks swap weights per call)")
    if not cfg.pretrained:
        warnings.warn("--qat without --pretrained trains from scratch through fake quantization; QAT is meant "
                      "to fine-tune a trained float checkpoint for a few epochs at a low learning rate",
                      stacklevel=2)
    return prepare_qat(model, cfg.qat_activation, cfg.qat_reduce_range)
