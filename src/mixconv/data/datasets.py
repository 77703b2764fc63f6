"""Datasets and transforms: the built-in sets (scikit-learn's digits, and digit pairs as 100 classes) and
ImageFolder roots.

Transforms are torchvision's v2. An image that cannot be read is skipped with a warning naming the file;
the collate function counts the skipped samples so the epoch log reports them.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from mixconv.files.config import ConfigError
from mixconv.files.inputs import MixconvInputError, check_dir, open_image
from mixconv.models.pretrained_cfg import Preprocess

DIGITS_SIZE = 64  # the 8x8 digits are upsampled once to this, so crops are not confined to an 8-pixel grid
PAIRS_SIZE = 32  # a digit pair: two 8x8 digits side by side, each upsampled to PAIRS_SIZE x PAIRS_SIZE / 2
PAIRS_PER_CLASS = {"train": 100, "val": 20}  # 10,000 training and 2,000 validation images
# The training pairs are built from this many images of each digit (of the ~144 in the digits' training split):
# with all of them MixNet-S reached 98.6% in 5 epochs, too close to 100% to rank architectures.
PAIRS_TRAIN_DIGITS = 30
BUILTIN_DATASETS = ("digits", "digit-pairs")


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation (a typed subset of the training config)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    auto_augment: str = "none"
    randaugment_magnitude: int = 9
    re_prob: float = 0.0


def _interp(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode(name)


def _finish(pre: Preprocess) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]


def eval_transform(pre: Preprocess) -> v2.Compose:
    """Resize the short side to ``img_size / crop_pct``, center crop ``img_size``, normalise."""
    resize = int(math.floor(pre.img_size / pre.crop_pct))
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize, interpolation=_interp(pre.interpolation), antialias=True),
        v2.CenterCrop(pre.img_size),
        *_finish(pre),
    ])


def train_transform(pre: Preprocess, aug: AugmentSettings) -> v2.Compose:
    ops: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(pre.img_size, scale=aug.scale, ratio=aug.ratio,
                             interpolation=_interp(pre.interpolation), antialias=True),
    ]
    if aug.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.auto_augment == "randaugment":
        ops.append(v2.RandAugment(magnitude=aug.randaugment_magnitude, interpolation=_interp("bilinear")))
    elif aug.auto_augment == "autoaugment":
        ops.append(v2.AutoAugment(interpolation=_interp("bilinear")))
    elif aug.auto_augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=_interp("bilinear")))
    ops += _finish(pre)
    if aug.re_prob > 0:
        ops.append(v2.RandomErasing(aug.re_prob, value=0))
    return v2.Compose(ops)


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits as 3-channel uint8 images of ``DIGITS_SIZE`` pixels.

    The split is stratified and fixed (``random_state=0``), independent of the training seed.
    """

    classes = [str(i) for i in range(10)]

    def __init__(self, split: str, transform: Callable | None = None, val_fraction: float = 0.2) -> None:
        digit_images, labels = _digit_split(split, val_fraction)
        images = torch.as_tensor(digit_images, dtype=torch.float32)  # values 0..16
        images = (images * (255.0 / 16.0)).unsqueeze(1)
        images = torch.nn.functional.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear",
                                                 align_corners=False)
        self.images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        self.targets = [int(t) for t in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = tv_tensors.Image(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def _digit_split(split: str, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digit images (0..16) and labels of the fixed, stratified digits split (``random_state=0``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = list(range(len(digits.target)))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=digits.target, random_state=0)
    chosen = sorted(train_idx if split == "train" else val_idx)
    return digits.images[chosen], digits.target[chosen]


class DigitPairsDataset(Dataset):
    """A harder built-in task: two handwritten digits side by side, ``10 * left + right`` as 100 classes.

    The digits of the validation pairs are digit images the training pairs never use (the digits' own fixed,
    stratified 80/20 split), so a model must read each digit, not remember the pair; the training pairs use
    only ``PAIRS_TRAIN_DIGITS`` images of each digit, so generalising to new handwriting is the hard part.
    Every class has ``PAIRS_PER_CLASS[split]`` pairs, drawn once with a fixed seed (independent of the training
    seed). Images are 3-channel uint8, ``PAIRS_SIZE`` pixels square.
    """

    classes = [f"{i:02d}" for i in range(100)]

    def __init__(self, split: str, transform: Callable | None = None, val_fraction: float = 0.2,
                 pairs_per_class: int | None = None) -> None:
        images, labels = _digit_split("val" if split == "val" else "train", val_fraction)
        by_digit = [np.flatnonzero(labels == d) for d in range(10)]
        if split == "train":
            by_digit = [idx[:PAIRS_TRAIN_DIGITS] for idx in by_digit]
        elif split == "holdout":  # training-split digit images the training pairs never use
            by_digit = [idx[PAIRS_TRAIN_DIGITS:] for idx in by_digit]
        rng = np.random.default_rng({"train": 0, "val": 1}.get(split, 2))
        n = pairs_per_class or PAIRS_PER_CLASS["train" if split == "train" else "val"]
        left, right, targets = [], [], []
        for cls in range(100):
            a, b = divmod(cls, 10)
            left.append(rng.choice(by_digit[a], n))
            right.append(rng.choice(by_digit[b], n))
            targets += [cls] * n
        digits = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
        half = torch.nn.functional.interpolate(digits, size=(PAIRS_SIZE, PAIRS_SIZE // 2), mode="bilinear",
                                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
        pairs = torch.cat([half[np.concatenate(left)], half[np.concatenate(right)]], dim=3)
        self.images = pairs.expand(-1, 3, -1, -1).contiguous()
        self.targets = targets
        self.transform = transform
        self.val_fraction = val_fraction

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = tv_tensors.Image(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]

    def holdout(self, fraction: float) -> tuple[Dataset, Dataset]:
        """``(rest, held out)`` for :func:`holdout_split`: all training pairs, and ``fraction`` as many pairs
        again built from the training split's digit images that no training pair uses (a random subset of the
        training pairs would share their digit images, and every model scores ~100% on it)."""
        per_class = max(1, int(round(PAIRS_PER_CLASS["train"] * fraction)))
        held = DigitPairsDataset("holdout", self.transform, self.val_fraction, per_class)
        return HeldOut(self, range(len(self))), HeldOut(held, range(len(held)))


class HeldOut(torch.utils.data.Subset):
    """A fixed part of a dataset (a :class:`torch.utils.data.Subset` that keeps the class names)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        self.classes = dataset_classes(dataset)


def holdout_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(rest, held out)``: ``fraction`` of ``dataset`` set aside, chosen with a fixed ``seed`` (not the
    training seed), so a search can score architectures on training data the weights never saw while the
    validation set stays untouched."""
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout_fraction: got {fraction!r}; expected a number in (0, 1)")
    own = getattr(dataset, "holdout", None)
    if callable(own):  # a data set that knows how to hold out without leaking (digit-pairs)
        return own(fraction)
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = int(round(n * fraction))
    if k < 1 or k >= n:
        raise ConfigError(f"holdout_fraction {fraction}: {n} training images leave no held-out or no training part")
    return HeldOut(dataset, sorted(order[k:])), HeldOut(dataset, sorted(order[:k]))


class SafeImageFolder(datasets.ImageFolder):
    """An ImageFolder whose unreadable images are skipped (``None``) with a warning naming the file."""

    def __init__(self, root: str, transform: Callable | None = None) -> None:
        super().__init__(root, transform=transform, loader=open_image)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        path, target = self.samples[i]
        try:
            img = self.loader(path)
            if self.transform is not None:
                img = self.transform(img)
        except MixconvInputError as e:  # the message names the file and the damage
            print(f"warning: skipping unreadable image {e}", file=sys.stderr, flush=True)
            return None
        except Exception as e:  # a transform failing on an odd (e.g. 1-pixel) image
            print(f"warning: skipping unreadable image {path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        return img, target


def open_image_folder(root: Path, transform: Callable, encoded: bool = False) -> Dataset:
    """A :class:`SafeImageFolder`; with ``encoded``, the files' bytes for GPU decoding (``transform`` is then
    applied after decoding, see :mod:`mixconv.data.jpeg`)."""
    expected = "an ImageFolder (one sub-folder of images per class)"
    check_dir(root, expected, ConfigError)
    try:
        if encoded:
            from mixconv.data.jpeg import EncodedImageFolder

            return EncodedImageFolder(str(root))
        return SafeImageFolder(str(root), transform=transform)
    except (OSError, RuntimeError) as e:  # no class folders, no images, or a sub-folder that cannot be listed
        raise ConfigError(f"{root}: not a usable ImageFolder ({e}); expected {expected}") from None


def build_dataset(data: str, split: str, transform: Callable, val_fraction: float = 0.2,
                  encoded: bool = False) -> Dataset:
    """``data`` is a built-in set (``digits``, ``digit-pairs``), an ImageFolder root holding ``train/`` and
    ``val/``, or shards written by ``mixconv shards`` (their folder, or a pattern of training shards).

    For ``split="val"`` a directory without ``val/`` is taken as the val images themselves (validate's use).
    ``encoded``: the ImageFolder's file bytes, for GPU decoding.
    """
    from mixconv.data.shards import ShardSamples, is_shards, open_shards

    if is_shards(data):  # a shards folder or pattern: its split, read in order
        return ShardSamples(open_shards(data, split), transform, encoded)
    if data in BUILTIN_DATASETS and encoded:
        raise ConfigError(f"--gpu-decode decodes image files; --data {data} is in memory (use an ImageFolder root)")
    if data == "digits":
        return DigitsDataset(split, transform, val_fraction)
    if data == "digit-pairs":
        return DigitPairsDataset(split, transform, val_fraction)
    root = check_dir(data, f"{', '.join(BUILTIN_DATASETS)} or an ImageFolder root with train/ and val/", ConfigError)
    sub = root / split
    if split == "train" and not (sub.is_dir() and (root / "val").is_dir()):
        raise ConfigError(f"--data {data}: no {'train' if not sub.is_dir() else 'val'}/ folder; expected an "
                          "ImageFolder root with train/ and val/ (one sub-folder of images per class in each)")
    return open_image_folder(sub if sub.is_dir() else root, transform, encoded)


def dataset_classes(ds: Dataset) -> list[str]:
    return list(getattr(ds, "classes"))


def collate_skip(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, int] | tuple[None, None, int]:
    """Stack the readable samples; the third element counts the skipped (unreadable) ones."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([torch.as_tensor(b[0]) for b in good])
    targets = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, skipped


def sample_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` images of ``ds`` chosen at random with a fixed seed (every class represented); all of ``ds`` when
    it has no more. ``mixconv quantize`` calibrates on ``sample_subset(train, N)`` and ``--qat`` on the same."""
    if n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.utils.data.Subset(ds, sorted(idx))


def image_batches(ds: Dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """The readable images of ``ds`` in order, ``batch_size`` at a time (labels dropped)."""
    for images, _targets, _skipped in torch.utils.data.DataLoader(ds, batch_size, collate_fn=collate_skip):
        if images is not None:
            yield images


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index from ``rank``: an exact, unpadded split of the val set over ranks."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def denormalizer(dataset: Dataset, mean: Sequence[float],
                 std: Sequence[float]) -> Callable[[int], Optional[np.ndarray]]:
    """``index -> HxWxC`` float image in [0, 1]: a sample as the model saw it, with the normalisation undone
    (``None`` for a sample the dataset cannot read)."""
    m = torch.tensor(list(mean)).view(-1, 1, 1)
    s = torch.tensor(list(std)).view(-1, 1, 1)

    def image_of(i: int) -> Optional[np.ndarray]:
        item = dataset[i]
        if item is None:
            return None
        x = torch.as_tensor(item[0]).float()
        img = (x * s[: x.shape[0]] + m[: x.shape[0]]).clamp(0, 1).permute(1, 2, 0).numpy()
        return img[..., 0] if img.shape[-1] == 1 else img

    return image_of
