"""A run's data: the preprocessing, and train/val loaders whose position (epoch, step) can be set.

``--data`` is a built-in set, an ImageFolder root, or WebDataset shards (a folder with ``shards.json`` or a
brace pattern of ``.tar`` files). Whatever the source, :meth:`TrainData.set_position` puts the training loader
at any step of any epoch, and the batches from there on are the same as an uninterrupted run's (see
:mod:`mixconv.data.resumable` and :mod:`mixconv.data.shards`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from mixconv.data.datasets import (
    AugmentSettings,
    ShardSampler,
    build_dataset,
    collate_skip,
    dataset_classes,
    eval_transform,
    holdout_split,
    train_transform,
)
from mixconv.data.jpeg import DeviceDecodeLoader, collate_encoded
from mixconv.data.resumable import EpochSampler, SeededSamples
from mixconv.data.shards import ShardStream, is_shards, open_shards
from mixconv.factory.create import resolve_model_name
from mixconv.files.config import ConfigError
from mixconv.inference.distributed import DistInfo
from mixconv.models.pretrained_cfg import Preprocess
from mixconv.training.config import TrainConfig
from mixconv.training.errors import TrainingError
from mixconv.training.preempt import ignore_in_worker


@dataclass
class TrainData:
    """The loaders of a run, the class names, and the training loader's position."""

    train_loader: Any  # a DataLoader, or a DeviceDecodeLoader around one (--gpu-decode)
    val_loader: Any
    classes: list[str]
    steps_per_epoch: int  # batches per epoch on every rank
    examples: Dataset  # training samples as augmented (TensorBoard's examples)
    set_position: Callable[[int, int], None]  # (epoch, steps already done in it)
    source: str  # "shards" or "dataset", for the log


def resolve_preprocess(cfg: TrainConfig) -> Preprocess:
    _, _, meta = resolve_model_name(cfg.model)
    return Preprocess(
        img_size=cfg.img_size or meta.input_size[-1],
        crop_pct=cfg.crop_pct or meta.crop_pct,
        interpolation=cfg.interpolation or meta.interpolation,
        mean=tuple(cfg.mean or meta.mean),
        std=tuple(cfg.std or meta.std),
    )


def _datasets(cfg: TrainConfig, train_tf: Any, val_tf: Any, encoded: bool) -> tuple[Dataset, Dataset]:
    train_ds = build_dataset(cfg.data, "train", train_tf, cfg.val_fraction, encoded=encoded)
    if cfg.holdout_fraction > 0:  # evaluate on held-out training images; the validation set stays untouched
        train_ds, _ = holdout_split(train_ds, cfg.holdout_fraction)
        _, val_ds = holdout_split(build_dataset(cfg.data, "train", val_tf, cfg.val_fraction, encoded=encoded),
                                  cfg.holdout_fraction)
    else:
        val_ds = build_dataset(cfg.data, "val", val_tf, cfg.val_fraction, encoded=encoded)
    return train_ds, val_ds


def _loader_options(cfg: TrainConfig, info: DistInfo, encoded: bool) -> dict[str, Any]:
    return dict(num_workers=cfg.workers, pin_memory=info.device.type == "cuda" and not encoded,
                collate_fn=collate_encoded if encoded else collate_skip, persistent_workers=False,
                worker_init_fn=ignore_in_worker if cfg.workers else None)


def _shard_data(cfg: TrainConfig, info: DistInfo, train_tf: Any, val_tf: Any, encoded: bool) -> TrainData:
    if cfg.holdout_fraction > 0:
        raise ConfigError(f"holdout_fraction: not available with shards (--data {cfg.data}); write the held-out "
                          "images as their own split")
    train_split, val_split = open_shards(cfg.data, "train"), open_shards(cfg.data, "val")
    if val_split.classes != train_split.classes:
        raise ConfigError(f"--data {cfg.data}: the train and val shards have different classes")
    common = dict(rank=info.rank, world_size=info.world_size, workers=cfg.workers, batch_size=cfg.batch_size,
                  seed=cfg.seed, encoded=encoded)
    train_ds = ShardStream(train_split, train_tf, train=True, shuffle_buffer=cfg.shuffle_buffer, **common)
    val_ds = ShardStream(val_split, val_tf, train=False, **common)
    opts = _loader_options(cfg, info, encoded)
    train_loader = DataLoader(train_ds, cfg.batch_size, **opts)
    val_loader = DataLoader(val_ds, cfg.batch_size, **opts)
    return TrainData(train_loader, val_loader, list(train_split.classes), train_ds.steps_per_epoch,
                     _ShardExamples(train_ds), train_ds.set_position, "shards")


class _ShardExamples(Dataset):
    """The first training samples of a shard stream, indexable (TensorBoard's examples)."""

    def __init__(self, stream: ShardStream) -> None:
        self.stream, self.items = copy.copy(stream), None  # its own position: the training stream's stays put

    def _load(self) -> list:
        if self.items is None:
            self.stream.set_position(0, 0)
            self.items = [x for _, x in zip(range(8), iter(self.stream)) if x is not None]
        return self.items

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, i: int) -> Any:
        return self._load()[i]


def build_data(cfg: TrainConfig, pre: Preprocess, info: DistInfo) -> TrainData:
    """Train and val loaders (the val set split over ranks without padding) and the class names."""
    aug = AugmentSettings(cfg.scale, cfg.ratio, cfg.hflip, cfg.auto_augment, cfg.randaugment_magnitude, cfg.re_prob)
    encoded = cfg.gpu_decode
    if encoded and info.device.type != "cuda":
        raise ConfigError("--gpu-decode needs CUDA (nvJPEG); on CPU leave it off")
    train_tf, val_tf = train_transform(pre, aug), eval_transform(pre)
    if is_shards(cfg.data):
        data = _shard_data(cfg, info, train_tf, val_tf, encoded)
    else:
        data = _dataset_data(cfg, info, train_tf, val_tf, encoded)
    if encoded:  # workers read the files; the batches are decoded and transformed on the GPU
        data.train_loader = DeviceDecodeLoader(data.train_loader, train_tf, info.device)
        data.val_loader = DeviceDecodeLoader(data.val_loader, val_tf, info.device)
    return data


def _dataset_data(cfg: TrainConfig, info: DistInfo, train_tf: Any, val_tf: Any, encoded: bool) -> TrainData:
    train_ds, val_ds = _datasets(cfg, train_tf, val_tf, encoded)
    classes = dataset_classes(train_ds)
    if dataset_classes(val_ds) != classes:
        raise TrainingError(f"--data {cfg.data}: train/ and val/ have different class folders "
                            f"({len(classes)} vs {len(dataset_classes(val_ds))})")
    seeded = SeededSamples(train_ds, cfg.seed)
    drop_last = len(train_ds) // info.world_size >= cfg.batch_size
    sampler = EpochSampler(len(train_ds), info.rank, info.world_size, cfg.batch_size, cfg.seed, drop_last)
    if sampler.steps_per_epoch == 0:
        raise TrainingError(f"--data {cfg.data}: no training batches (dataset of {len(train_ds)} images)")
    opts = _loader_options(cfg, info, encoded)
    # the generator only seeds the workers; every sample's randomness comes from SeededSamples
    train_loader = DataLoader(seeded, cfg.batch_size, sampler=sampler, generator=torch.Generator().manual_seed(0),
                              **opts)
    val_loader = DataLoader(val_ds, cfg.batch_size, sampler=ShardSampler(len(val_ds), info.rank, info.world_size),
                            **opts)

    def set_position(epoch: int, step: int) -> None:
        sampler.set_position(epoch, step)
        seeded.set_epoch(epoch)

    return TrainData(train_loader, val_loader, classes, sampler.steps_per_epoch, seeded, set_position, "dataset")
