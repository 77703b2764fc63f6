"""Optimizers (SGD, TensorFlow-style RMSprop, AdamW) and per-step learning-rate schedules."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from mixconv.models.param_groups import group_parameters, layer_decay_scales
from mixconv.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None) -> list[dict]:
    """Weight decay on conv/linear weights only, none on norms and biases (1-d tensors).

    With ``layer_decay`` (timm's layer-wise learning-rate decay), each of the model's parameter groups
    (:func:`mixconv.models.param_groups.group_parameters`: stem, blocks, head conv, classifier) gets the
    learning-rate multiplier ``lr_scale = layer_decay ** (last - index)``: the classifier trains at the full
    rate, the stem at the smallest.
    """
    if layer_decay is None:
        decay, no_decay = _decay_split(p for p in model.parameters() if p.requires_grad)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups
    try:
        names = group_parameters(model)
    except TypeError as e:
        raise ValueError(f"--layer-decay: {e}") from None
    scales = layer_decay_scales(len(names), layer_decay)
    params = dict(model.named_parameters())
    out: list[dict] = []
    for index, (group, scale) in enumerate(zip(names, scales)):
        decay, no_decay = _decay_split(params[n] for n in group if params[n].requires_grad)
        for wd, members in ((weight_decay, decay), (0.0, no_decay)):
            if members:
                out.append({"params": members, "weight_decay": wd, "lr_scale": scale, "layer": index})
    return out


def _decay_split(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not decayed)``: conv and linear weights, then norms and biases (1-d tensors)."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop with TensorFlow's semantics, as the original MixNet/EfficientNet recipe uses.

    Differences from ``torch.optim.RMSprop``: epsilon is added *inside* the square root, the square average
    starts at one (not zero), and momentum accumulates the lr-scaled step (``buf = m * buf + lr * g / rms``),
    so a learning-rate change does not rescale the momentum already built up.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.9, eps: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9) -> None:
        if lr <= 0 or eps <= 0 or not 0 <= alpha < 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid RMSpropTF settings: lr={lr}, alpha={alpha}, eps={eps}, momentum={momentum}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the torch.optim contract
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.ones_like(p)
                    if group["momentum"] > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                sq = state["square_avg"]
                sq.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                rms = sq.add(group["eps"]).sqrt_()  # eps inside the sqrt (TF)
                if group["momentum"] > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).addcdiv_(grad, rms, value=group["lr"])
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, rms, value=-group["lr"])
        return loss


def scaled_lr(cfg: TrainConfig, world_size: int) -> float:
    """The peak learning rate: ``lr`` is for ``lr_base_size`` images; it scales with the global batch."""
    return cfg.lr * cfg.batch_size * cfg.accum_steps * world_size / cfg.lr_base_size


def create_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.opt`` at peak rate ``lr`` (each group's rate times its ``lr_scale``)."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # LambdaLR keeps each group's initial rate as its base
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.opt == "rmsproptf":
        return RMSpropTF(groups, lr=lr, alpha=cfg.rmsprop_decay, eps=cfg.opt_eps, momentum=cfg.momentum)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=cfg.opt_eps)
    raise ValueError(f"unknown optimizer {cfg.opt!r}")  # TrainConfig already checked it


def lr_factor(cfg: TrainConfig, epoch_float: float, peak_lr: float) -> float:
    """The multiplier of the peak lr at (fractional) epoch ``epoch_float``: linear warmup, then the schedule."""
    warm = cfg.warmup_epochs
    if warm > 0 and epoch_float < warm:
        return cfg.warmup_lr_factor + (1 - cfg.warmup_lr_factor) * epoch_float / warm
    if cfg.sched == "step":
        return cfg.decay_rate ** math.floor((epoch_float - warm) / cfg.decay_epochs)
    span = max(cfg.epochs - warm, 1e-8)
    t = min(max((epoch_float - warm) / span, 0.0), 1.0)
    floor = min(cfg.min_lr / peak_lr, 1.0) if peak_lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, peak_lr: float,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step LambdaLR following :func:`lr_factor`."""
    steps = max(steps_per_epoch, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step / steps, peak_lr))
