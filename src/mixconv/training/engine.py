"""One epoch of training (the torchvision reference's train_one_epoch); evaluation is in
:mod:`mixconv.inference.engine`."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from mixconv.inference.distributed import DistInfo, all_reduce_sum, broadcast_flag
from mixconv.inference.engine import Progress, autocast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


@dataclass(frozen=True)
class StepSettings:
    """What a training step needs to know besides the model and the data."""

    amp: str = "none"
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    channels_last: bool = False
    log_interval: int = 10
    freeze_bn: bool = False  # BatchNorm in eval mode while training (running statistics, not updated)


@dataclass
class EpochTotals:
    """Where an epoch stands on this rank: batches done and the running sums (a step checkpoint keeps them)."""

    step: int = 0
    loss_sum: float = 0.0
    images: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainStats:
    loss: float
    images: int
    seconds: float
    skipped: int
    lr: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable,
    epoch: int,
    info: DistInfo,
    settings: StepSettings,
    scaler: Optional[torch.amp.GradScaler] = None,
    ema: Optional[nn.Module] = None,
    batch_mix: Optional[Callable] = None,
    desc: str = "",
    before_step: Optional[Callable[[int], None]] = None,
    totals: Optional[EpochTotals] = None,
    n_batches: Optional[int] = None,
    after_step: Optional[Callable[[EpochTotals], None]] = None,
) -> TrainStats:
    """Train for one pass over ``loader``; returns the mean loss over all ranks, throughput and skips.

    ``before_step(i)`` runs before the forward pass of batch ``i`` (1-based), e.g. QAT's recalibration.
    ``totals``: a resumed epoch's position (``loader`` then yields the batches after ``totals.step``) and sums;
    ``n_batches``: the whole epoch's batches (default ``len(loader)``). ``after_step(totals)`` runs after every
    optimizer step (no gradients pending): step checkpoints and preemption."""
    model.train()
    unwrapped = getattr(model, "module", model)
    if settings.freeze_bn:
        for m in unwrapped.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # its affine weights still train
    device = info.device
    tot = totals if totals is not None else EpochTotals()
    n_batches = n_batches if n_batches is not None else len(loader)
    progress = Progress(n_batches, desc or f"epoch {epoch}", info.is_main, settings.log_interval)
    step_in_accum = 0
    start, seconds_before = time.perf_counter(), tot.seconds
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets, n_skipped) in enumerate(loader, start=tot.step + 1):
        tot.skipped += n_skipped
        tot.step = i
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if batch_mix is not None:
            images, targets = batch_mix(images, targets)
        if before_step is not None:
            before_step(i)
        step_in_accum += 1
        do_step = step_in_accum == settings.accum_steps or i == n_batches
        sync = contextlib.nullcontext() if do_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, settings.amp):
                output = model(images)
                loss = criterion(output, targets)
            bad = not math.isfinite(loss.item())
            if broadcast_flag(bad, info):
                progress.close()
                raise NonFiniteLossError(f"the loss is {loss.item()} at epoch {epoch}, step {i}")
            scaled = loss / settings.accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if do_step:
            _optimizer_step(model, optimizer, scaler, settings.clip_grad)
            scheduler.step()
            if ema is not None:
                ema.update(unwrapped)
            step_in_accum = 0
        tot.loss_sum += loss.item() * hard_targets.size(0)
        tot.images += hard_targets.size(0)
        tot.seconds = seconds_before + time.perf_counter() - start
        progress.update(i, loss=loss.item(), lr=_peak_lr(optimizer),
                        img_s=tot.images * info.world_size / max(tot.seconds, 1e-9))
        if do_step and after_step is not None:
            try:
                after_step(tot)
            except BaseException:
                progress.close()
                raise
    progress.close()
    tot.seconds = seconds_before + time.perf_counter() - start
    loss_sum, n_images, skipped = all_reduce_sum([tot.loss_sum, float(tot.images), float(tot.skipped)], info)
    return TrainStats(loss_sum / max(n_images, 1), int(n_images), tot.seconds, int(skipped),
                      _peak_lr(optimizer))


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], clip_grad: Optional[float]) -> None:
    if scaler is not None:
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _peak_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group rate (with layer decay the classifier's; without it every group's)."""
    return max(float(g["lr"]) for g in optimizer.param_groups)
