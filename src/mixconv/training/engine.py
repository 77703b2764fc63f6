"""One epoch of training and one pass of evaluation (the torchvision reference's two functions)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum, broadcast_flag


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


@dataclass(frozen=True)
class EvalStats:
    loss: float
    top1: float
    top5: float
    images: int
    seconds: float
    skipped: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on any device (on a CPU without native support it runs emulated: see
    :func:`mixconv.capability.emulated_precision`); a no-op for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(amp))


def amp_dtype(amp: str) -> torch.dtype:
    """The autocast dtype of ``--amp bf16|fp16``."""
    return torch.bfloat16 if amp == "bf16" else torch.float16


def warn_amp(device: torch.device, amp: str, stacklevel: int = 2) -> Optional[str]:
    """A :class:`~mixconv.capability.LowPrecisionWarning` where ``--amp`` would run emulated on ``device`` (a
    capability check, not a timing): train and validate both call it. Returns the message, or ``None``."""
    if amp == "none":
        return None
    from ..capability import warn_emulated_precision

    return warn_emulated_precision(amp_dtype(amp), device, f"--amp {amp}", stacklevel=stacklevel + 1)


class Progress:
    """A tqdm bar on a terminal; plain lines every ``interval`` steps otherwise (logs, CI). Silent off rank 0."""

    def __init__(self, total: int, desc: str, enabled: bool, interval: int = 10) -> None:
        self.total, self.desc, self.enabled, self.interval = total, desc, enabled, max(interval, 1)
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)

    def update(self, step: int, **info: Any) -> None:
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif step % self.interval == 0 or step == self.total:
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            print(f"{self.desc} [{step}/{self.total}] {fields}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
) -> TrainStats:
    """Train for one pass over ``loader``; returns the mean loss over all ranks, throughput and skips."""
    model.train()
    unwrapped = getattr(model, "module", model)
    device = info.device
    progress = Progress(len(loader), desc or f"epoch {epoch}", info.is_main, settings.log_interval)
    loss_sum, n_images, skipped, step_in_accum = 0.0, 0, 0, 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    for i, (images, targets, n_skipped) in enumerate(loader, start=1):
        skipped += n_skipped
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if batch_mix is not None:
            images, targets = batch_mix(images, targets)
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
        loss_sum += loss.item() * hard_targets.size(0)
        n_images += hard_targets.size(0)
        elapsed = time.perf_counter() - start
        progress.update(i, loss=loss.item(), lr=optimizer.param_groups[0]["lr"],
                        img_s=n_images * info.world_size / max(elapsed, 1e-9))
    progress.close()
    seconds = time.perf_counter() - start
    loss_sum, n_images, skipped = all_reduce_sum([loss_sum, float(n_images), float(skipped)], info)
    return TrainStats(loss_sum / max(n_images, 1), int(n_images), seconds, int(skipped),
                      optimizer.param_groups[0]["lr"])


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    info: DistInfo,
    amp: str = "none",
    channels_last: bool = False,
    desc: str = "val",
    log_interval: int = 10,
) -> EvalStats:
    """Cross-entropy loss, top-1 and top-5 (percent) over ``loader``, summed over all ranks."""
    model.eval()
    device = info.device
    loss_sum, c1, c5, n, skipped = 0.0, 0.0, 0.0, 0, 0
    progress = Progress(len(loader), desc, info.is_main, log_interval)
    start = time.perf_counter()
    for i, (images, targets, n_skipped) in enumerate(loader, start=1):
        skipped += n_skipped
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            output = model(images)
        output = output.float()
        loss_sum += F.cross_entropy(output, targets, reduction="sum").item()
        k = min(5, output.size(1))
        top = output.topk(k, dim=1).indices
        hit = top.eq(targets[:, None])
        c1 += hit[:, 0].sum().item()
        c5 += hit.any(dim=1).sum().item()
        n += targets.size(0)
        progress.update(i, top1=100.0 * c1 / n)
    progress.close()
    seconds = time.perf_counter() - start
    loss_sum, c1, c5, n, skipped = all_reduce_sum([loss_sum, c1, c5, float(n), float(skipped)], info)
    if n == 0:
        return EvalStats(float("nan"), float("nan"), float("nan"), 0, seconds, int(skipped))
    return EvalStats(loss_sum / n, 100.0 * c1 / n, 100.0 * c5 / n, int(n), seconds, int(skipped))
