"""``mixconv train --qat``: the training side of quantization-aware fine-tuning.

The fake quantization itself (ORT's int8 rounding, tensor by tensor) is model surgery and lives in
:mod:`mixconv.surgery.fake_quant`, where validation can use it too; this module keeps the model's activation
ranges those ``mixconv quantize`` will calibrate while it trains (:class:`QatCalibration`), and checks the
settings (:func:`setup_qat`).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from mixconv.files.config import ConfigError
from mixconv.surgery.fake_quant import (  # noqa: F401  (re-exported: the training API names them)
    ACTIVATION_TYPES,
    MODES,
    QAT_RECALIBRATE_STEPS,
    TensorRange,
    calibrate_qat,
    fake_quant_weight,
    load_qat_ranges,
    prepare_qat,
    qat_ranges,
    qat_ranges_dict,
    qat_state,
    remove_qat,
    set_qat_mode,
)


class QatCalibration:
    """Keeps a prepared model's activation ranges those ORT will calibrate: :meth:`calibrate` on ``images``
    (the dataset ``mixconv quantize`` calibrates on), also every ``every`` steps through :meth:`before_step`."""

    def __init__(self, model: nn.Module, images: Any, device: Optional[torch.device] = None,
                 every: int = QAT_RECALIBRATE_STEPS) -> None:
        if qat_state(model) is None:
            raise ValueError("the model is not prepared for QAT (call prepare_qat first)")
        self.model, self.images, self.device, self.every = model, images, device, every

    def calibrate(self) -> None:
        from mixconv.data.datasets import image_batches

        calibrate_qat(self.model, image_batches(self.images, 32), self.device)

    def before_step(self, step: int) -> None:
        """The training loop's hook: recalibrate before steps 1, 1 + every, ... of each epoch."""
        if (step - 1) % self.every == 0:
            self.calibrate()

    def state_dict(self) -> dict[str, list[float]]:
        """The current ranges (a step checkpoint keeps them: a resumed epoch goes on with the same ones)."""
        return qat_ranges_dict(self.model)

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        load_qat_ranges(self.model, state)


def qat_calibration(model: nn.Module, cfg: Any, pre: Any, device: torch.device) -> QatCalibration:
    """The calibration ``mixconv quantize`` will do for a run's checkpoint: ``cfg.qat_calib_images`` training
    images (the same sample) with the eval preprocessing ``pre``."""
    from mixconv.data.datasets import build_dataset, eval_transform, sample_subset

    ds = build_dataset(cfg.data, "train", eval_transform(pre), cfg.val_fraction)
    return QatCalibration(model, sample_subset(ds, cfg.qat_calib_images), device)


def setup_qat(model: nn.Module, cfg: Any) -> nn.Module:
    """The ``mixconv train --qat`` hook: check the settings, then :func:`prepare_qat` (the training loop
    calibrates it before the first step: :func:`qat_calibration`)."""
    import warnings

    if cfg.compile:
        raise ConfigError("--qat cannot be combined with --compile (the fake-quant hooks swap weights per call)")
    if cfg.ema_decay > 0:
        raise ConfigError("--qat cannot be combined with --ema-decay (the int8 file is made from the trained "
                          "weights, whose ranges QAT calibrates; an average of them was never calibrated)")
    if not cfg.pretrained:
        warnings.warn("--qat without --pretrained trains from scratch through fake quantization; QAT is meant "
                      "to fine-tune a trained float checkpoint for a few epochs at a low learning rate",
                      stacklevel=2)
    return prepare_qat(model, cfg.qat_activation, cfg.qat_reduce_range)
