"""Scoring a candidate: its subnet's weights from the supernet, BatchNorm recalibrated on a few training
batches, then top-1 on the held-out part of the training data (the validation set is never used)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from mixconv.data.datasets import build_dataset, eval_transform, holdout_split
from mixconv.models.pretrained_cfg import Preprocess
from mixconv.models.space import Arch
from mixconv.models.supernet import Supernet


def _stack(ds: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in indices]
    items = [it for it in items if it is not None]  # an unreadable image is skipped (the dataset warned)
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.tensor([y for _, y in items])


@dataclass
class ScoringData:
    """Fixed tensors: the recalibration images (training part) and the held-out images with labels."""

    recal: torch.Tensor
    heldout: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_dataset(cls, data: str, pre: Preprocess, holdout_fraction: float, val_fraction: float = 0.2,
                     recal_images: int = 512, heldout_images: int | None = None, seed: int = 0) -> "ScoringData":
        """The same split as the supernet's training run (``holdout_split`` with its fixed seed)."""
        ds = build_dataset(data, "train", eval_transform(pre), val_fraction)
        train, held = holdout_split(ds, holdout_fraction)
        g = torch.Generator().manual_seed(seed)
        recal_idx = torch.randperm(len(train), generator=g)[:recal_images].tolist()
        held_idx = list(range(len(held)))[: heldout_images or len(held)]
        recal, _ = _stack(train, recal_idx)
        x, y = _stack(held, held_idx)
        return cls(recal, x, y)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> None:
    """Replace every BatchNorm's running statistics with their exact average over ``images`` (training-mode
    forwards with cumulative momentum): a subnet's statistics differ from the supernet's shared ones."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for chunk in images.split(batch_size):
            model(chunk)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / max(len(labels), 1)


class Scorer:
    """``score(arch)``: the supernet's accuracy for ``arch`` on the held-out images, after recalibration."""

    def __init__(self, supernet: Supernet, data: ScoringData) -> None:
        self.supernet, self.data = supernet.eval(), data

    def score(self, arch: Arch) -> float:
        net = self.supernet.subnet(arch)
        recalibrate_bn(net, self.data.recal)
        return top1(net, self.data.heldout, self.data.labels)
