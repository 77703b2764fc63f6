"""One pass of evaluation, mixed precision and progress: what validation and training share."""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.inference.distributed import DistInfo, all_reduce_sum


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
    :func:`mixconv.kernels.capability.emulated_precision`); a no-op for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(amp))


def amp_dtype(amp: str) -> torch.dtype:
    """The autocast dtype of ``--amp bf16|fp16``."""
    return torch.bfloat16 if amp == "bf16" else torch.float16


def warn_amp(device: torch.device, amp: str, stacklevel: int = 2) -> Optional[str]:
    """A :class:`~mixconv.kernels.capability.LowPrecisionWarning` where ``--amp`` would run emulated on ``device`` (a
    capability check, not a timing): train and validate both call it. Returns the message, or ``None``."""
    if amp == "none":
        return None
    from mixconv.kernels.capability import warn_emulated_precision

    return warn_emulated_precision(amp_dtype(amp), device, f"--amp {amp}", stacklevel=stacklevel + 1)


def quiet_cpu_compile(device: torch.device) -> None:
    """Before ``torch.compile`` on a CPU: with a CUDA build of torch and no CUDA runtime, inductor's C++ build
    logs "No CUDA runtime is found, using CUDA_HOME=..." at its first compile, which says nothing about a CPU
    run and asks nothing of the user; only that logger's warnings are hidden."""
    if device.type == "cpu":
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


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
