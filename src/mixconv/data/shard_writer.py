"""``mixconv shards``: an ImageFolder root (or a built-in data set) written as WebDataset tar shards.

Each sample is the image file's own bytes under its extension (``.jpg``, ``.png``, ...; the built-in sets'
in-memory images as PNG) and its class index as ``.cls``. The samples are shuffled once (a fixed seed) before
they are dealt to shards, so that every shard holds every class: a shard-level shuffle and a buffer are then
enough to mix a training stream. ``shards.json`` records the class names and every shard's sample count; it is
written last, so a folder with an index holds complete shards. Every file is written atomically.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from mixconv.data.datasets import BUILTIN_DATASETS, build_dataset
from mixconv.data.shards import INDEX_FORMAT, INDEX_NAME, SPLITS
from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError

# (key, extension, read bytes): one sample before it is written
Sample = tuple[str, str, Callable[[], bytes], int]


@dataclass(frozen=True)
class ShardsWritten:
    index: Path
    classes: tuple[str, ...]
    counts: dict[str, list[int]]  # split -> samples per shard


def _folder_samples(root: Path, split: str) -> tuple[list[str], list[Sample]]:
    from torchvision import datasets

    folder = datasets.ImageFolder(str(root / split), loader=lambda p: p)
    samples = [(Path(path).relative_to(root / split).as_posix(), Path(path).suffix.lower().lstrip(".") or "bin",
                (lambda p=path: Path(p).read_bytes()), target) for path, target in folder.samples]
    return list(folder.classes), samples


def _builtin_samples(data: str, split: str, val_fraction: float) -> tuple[list[str], list[Sample]]:
    from torchvision.io import encode_png

    ds = build_dataset(data, split, None, val_fraction)  # type: ignore[arg-type]
    images = ds.images  # type: ignore[attr-defined]
    samples = [(f"{data}/{split}/{i:06d}", "png", (lambda i=i: encode_png(images[i]).numpy().tobytes()), int(t))
               for i, t in enumerate(ds.targets)]  # type: ignore[attr-defined]
    return list(ds.classes), samples  # type: ignore[attr-defined]


def source_samples(data: str, split: str, val_fraction: float = 0.2) -> tuple[list[str], list[Sample]]:
    """The class names and the samples (key, extension, bytes reader, class index) of ``split`` of ``data``."""
    if data in BUILTIN_DATASETS:
        return _builtin_samples(data, split, val_fraction)
    root = Path(data)
    if not (root / split).is_dir():
        raise ConfigError(f"{data}: no {split}/ folder; expected {', '.join(BUILTIN_DATASETS)} or an ImageFolder "
                          "root with train/ and val/ (one sub-folder of images per class in each)")
    try:
        return _folder_samples(root, split)
    except (OSError, RuntimeError) as e:
        raise ConfigError(f"{root / split}: not a usable ImageFolder ({e})") from None


def _chunks(items: list[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _write_tar(path: Path, samples: list[Sample]) -> None:
    import webdataset as wds

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            # mtime fixed: the same data gives byte-identical shards
            with wds.TarWriter(f, encoder=False, mtime=0.0) as sink:
                for n, (name, ext, read, target) in enumerate(samples):
                    sink.write({"__key__": f"{n:06d}", ext: read(), "cls": str(target).encode(),
                                "path.txt": name.encode()})

    atomic_write(path, write)


def write_shards(data: str, out: Path, shard_size: int = 1000, seed: int = 0, val_fraction: float = 0.2,
                 log: Optional[Callable[[str], None]] = None) -> ShardsWritten:
    """Write ``data``'s train and val splits as shards of ``shard_size`` samples under ``out``, then the index."""
    if shard_size < 1:
        raise ConfigError(f"--shard-size: got {shard_size}; expected an int >= 1")
    if out.exists() and any(out.glob("*.tar")):
        raise ConfigError(f"{out}: already holds shards; choose an empty or new folder")
    index: dict = {"format": INDEX_FORMAT, "source": str(data), "classes": None, "splits": {}}
    counts: dict[str, list[int]] = {}
    for split in SPLITS:
        classes, samples = source_samples(data, split, val_fraction)
        if index["classes"] is None:
            index["classes"] = classes
        elif classes != index["classes"]:
            raise ConfigError(f"{data}: train/ and val/ have different class folders")
        if split == "train":  # every shard gets every class; val stays in its order (its reading is ordered)
            random.Random(seed).shuffle(samples)
        rows = []
        for i, chunk in enumerate(_chunks(samples, shard_size)):
            name = f"{split}-{i:06d}.tar"
            _write_tar(out / name, chunk)
            rows.append({"name": name, "samples": len(chunk)})
        index["splits"][split] = {"samples": len(samples), "shards": rows}
        counts[split] = [r["samples"] for r in rows]
        if log is not None:
            log(f"{split}: {len(samples)} samples in {len(rows)} shards ({out}/{split}-*.tar)")
    path = out / INDEX_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8"))
    return ShardsWritten(path, tuple(index["classes"]), counts)
