"""How fast one data-loader worker feeds training: an ImageFolder of JPEG files against the same images in
WebDataset shards, and what is left to a worker with ``--gpu-decode`` (reading bytes only).

    python benchmarks/data_decode.py                 # 400 ImageNet-sized JPEGs, ~1 min on 2 cores
    python benchmarks/data_decode.py --images 2000 --output runs/decode.json

The images are crops of scikit-learn's two sample photographs (real JPEG content, 500x375 like ImageNet's
typical image, quality 90: ~110 KB). Each path runs in one process (``--workers 0``: what one worker does) with
the training transform of MixNet-S at 224 px (RandomResizedCrop, flip, to float, normalize) and batches of 64.
The arithmetic at the end: workers per GPU = target img/s / (img/s of one worker), the target being MixNet-S
training at 5,000 img/s on one H100.

Measured (2-core Xeon, AVX-512/VNNI/AMX, torch 2.14.1, Pillow's libjpeg-turbo, local NVMe, warm page cache):
printed by this script and copied into the scaling section of the training guide.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mixconv.data.datasets import AugmentSettings, SafeImageFolder, collate_skip, train_transform
from mixconv.data.jpeg import EncodedImageFolder, collate_encoded
from mixconv.data.resumable import EpochSampler, SeededSamples
from mixconv.data.shard_writer import write_shards
from mixconv.data.shards import ShardStream, open_shards
from mixconv.models.pretrained_cfg import Preprocess

TARGET_IMG_S = 5000  # MixNet-S training on one H100 (the GPU targets)


def make_jpegs(root: Path, n: int, classes: int = 10) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427x640 each
    rng = random.Random(0)
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            photo = photos[i % len(photos)]
            scale = rng.uniform(1.0, 1.6)
            big = photo.resize((int(640 * scale), int(427 * scale)), Image.BILINEAR)
            x, y = rng.randint(0, big.width - 500), rng.randint(0, big.height - 375)
            d = root / split / f"class{i % classes:02d}"
            d.mkdir(parents=True, exist_ok=True)
            big.crop((x, y, x + 500, y + 375)).save(d / f"{i:06d}.jpg", quality=90)


def rate(loader, seconds_cap: float = 60.0) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    for batch in loader:
        n += len(batch[1])
        if time.perf_counter() - start > seconds_cap:
            break
    return n / (time.perf_counter() - start), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one worker is one process on one core
    tmp = Path(tempfile.mkdtemp(prefix="mixconv-decode-"))
    try:
        make_jpegs(tmp / "folder", args.images)
        write_shards(str(tmp / "folder"), tmp / "shards", shard_size=200)
        mb = sum(f.stat().st_size for f in (tmp / "folder" / "train").rglob("*.jpg")) / 2**20
        pre = Preprocess(img_size=224, crop_pct=0.875, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225))
        tf = train_transform(pre, AugmentSettings())
        b = args.batch_size
        folder = SeededSamples(SafeImageFolder(str(tmp / "folder" / "train"), tf), 0)
        sampler = EpochSampler(len(folder), 0, 1, b, drop_last=False)
        split = open_shards(str(tmp / "shards"), "train")

        def shards(encoded: bool) -> ShardStream:
            s = ShardStream(split, None if encoded else tf, rank=0, world_size=1, workers=0, batch_size=b,
                            encoded=encoded)
            s.set_position(0, 0)
            return s

        results = {}
        for name, loader in (
            ("imagefolder decode+augment", DataLoader(folder, b, sampler=sampler, collate_fn=collate_skip)),
            ("shards decode+augment", DataLoader(shards(False), b, collate_fn=collate_skip)),
            ("imagefolder read bytes (--gpu-decode)", DataLoader(EncodedImageFolder(str(tmp / "folder" / "train")),
                                                                 b, collate_fn=collate_encoded)),
            ("shards read bytes (--gpu-decode)", DataLoader(shards(True), b, collate_fn=collate_encoded)),
        ):
            r, n = rate(loader)
            results[name] = {"img_per_s": round(r, 1), "images": n,
                             "workers_for_5000": math.ceil(TARGET_IMG_S / r)}
            print(f"{name:40s} {r:8.1f} img/s per worker ({n} images) -> {math.ceil(TARGET_IMG_S / r):4d} workers "
                  f"for {TARGET_IMG_S} img/s", flush=True)
        results["dataset"] = {"images": args.images, "megabytes": round(mb, 1), "kb_per_image": round(
            1024 * mb / args.images, 1)}
        print(json.dumps(results["dataset"]))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
