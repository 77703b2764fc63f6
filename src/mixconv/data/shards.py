"""WebDataset tar shards: the index that describes them, and the streams that train and validate from them.

A shards folder (written by ``mixconv shards``, see :mod:`mixconv.data.shard_writer`) holds ``train-NNNNNN.tar``
and ``val-NNNNNN.tar`` and an index, ``shards.json``: the class names (a sample's ``cls`` is an index into them)
and the number of samples of every shard. ``--data`` names the folder, or a brace pattern of shards
(``'OUT/train-{000000..000099}.tar'``) whose folder holds the index.

How a training epoch reads them (:class:`ShardStream`):

- An epoch is ``samples // (world_size * batch_size)`` steps on every rank, whatever the shards hold.
- The epoch's shard order is a permutation drawn from ``(seed, epoch)``. The shards are dealt to
  ``world_size * workers`` streams, one per rank and data-loader worker, so every sample is read by one of them.
  With fewer shards than streams, every stream reads every shard and keeps every ``streams``-th sample.
- Each stream shuffles through a buffer, and starts over on its own shards when it needs more samples than
  they hold (uneven shards).
- Every sample's augmentation is seeded from ``(seed, epoch, stream, position)``, so a run's batches depend on
  nothing but the settings and the step: stopping after step ``k`` and starting again at ``k`` yields the same
  batches (the streams skip the samples already used without decoding them).

Validation reads every val sample once, in the index's order, split over ranks and workers the same way.

Damage never stops a run: a shard that is missing or truncated, or a member that is not a decodable image, is
skipped with a warning naming the shard (and sample), and counted as skipped images.
"""
from __future__ import annotations

import bisect
import io
import itertools
import json
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mixconv.data.seeding import sample_seed, seeded
from mixconv.files.config import ConfigError

INDEX_NAME = "shards.json"
INDEX_FORMAT = "mixconv-shards/1"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
SPLITS = ("train", "val")
_DAMAGED = "__damaged__"  # a placeholder for a sample that a damaged shard lost (keeps the positions)


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int


@dataclass(frozen=True)
class ShardSplit:
    """The shards of one split and the class names they index."""

    classes: tuple[str, ...]
    shards: tuple[Shard, ...]
    source: str  # what --data said, for messages

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def is_shards(data: str) -> bool:
    """Whether ``--data`` names shards: a ``.tar`` path or pattern, or a folder holding ``shards.json``."""
    return data.endswith(".tar") or (".tar" in data and "{" in data) or (Path(data) / INDEX_NAME).is_file()


def read_index(path: Path) -> dict[str, ShardSplit]:
    """``shards.json`` as typed splits; any problem raises :class:`ConfigError` naming the file and the key."""
    where = f"{path} (the shards' index, written by `mixconv shards`)"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: missing; it lies next to the shards and names their classes") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not readable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ConfigError(f"{where}: 'format' is not {INDEX_FORMAT!r}")
    classes = doc.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ConfigError(f"{where}: 'classes' must be a non-empty list of class names")
    splits = doc.get("splits")
    if not isinstance(splits, dict):
        raise ConfigError(f"{where}: 'splits' must map train/val to their shards")
    out = {}
    for name, split in splits.items():
        rows = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(rows, list) or not all(
                isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("samples"), int)
                and r["samples"] >= 0 for r in rows):
            raise ConfigError(f"{where}: 'splits.{name}.shards' must be a list of {{name, samples}} entries")
        shards = tuple(Shard(path.parent / r["name"], r["samples"]) for r in rows)
        out[name] = ShardSplit(tuple(classes), shards, str(path.parent))
    return out


def open_shards(data: str, split: str) -> ShardSplit:
    """The shards of ``split`` that ``--data`` names (a shards folder, or a pattern of training shards)."""
    folder = Path(data)
    if (folder / INDEX_NAME).is_file():
        index = read_index(folder / INDEX_NAME)
        chosen = None
    else:
        from braceexpand import braceexpand

        chosen = [Path(p) for p in braceexpand(data)]
        folder = chosen[0].parent
        index = read_index(folder / INDEX_NAME)
    if split not in index:
        raise ConfigError(f"{folder / INDEX_NAME}: no '{split}' split (it has {', '.join(index) or 'none'})")
    found = index[split]
    if chosen is not None and split == "train":  # the pattern picks training shards; val comes from the index
        known = {s.path.name: s for s in found.shards}
        unknown = [p.name for p in chosen if p.name not in known]
        if unknown:
            raise ConfigError(f"--data {data}: {', '.join(unknown[:3])} not in {folder / INDEX_NAME}'s train split")
        found = ShardSplit(found.classes, tuple(known[p.name] for p in chosen), data)
    if not found.shards or found.samples == 0:
        raise ConfigError(f"--data {data}: the {split} split has no samples")
    return found


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def read_shard(shard: Shard) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard (``__key__``, ``__url__`` and one entry per file extension).

    A shard that cannot be opened or ends early is warned about; the samples the index promised and the shard
    did not give are yielded as placeholders (skipped at decoding), so the positions of later samples stay put.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    n = 0
    try:
        with open(shard.path, "rb") as f:
            files = ({**member, "__url__": str(shard.path)} for member in tar_file_iterator(f))
            for sample in group_by_keys(files):
                yield sample
                n += 1
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        _warn(f"damaged shard {shard.path} after {n} of its {shard.samples} samples "
              f"({type(e).__name__}: {e}); skipping the rest")
    for _ in range(n, shard.samples):
        yield {_DAMAGED: str(shard.path), "__url__": str(shard.path), "__key__": "?"}


def split_streams(n_shards: int, n_streams: int, stream: int, order: list[int]) -> tuple[list[int], int]:
    """The shards (indices into the split, in ``order``) stream ``stream`` of ``n_streams`` reads, and the
    stride of the samples it keeps from them (1: all; ``n_streams``: every ``n_streams``-th, when there are
    fewer shards than streams)."""
    if n_shards >= n_streams:
        return order[stream::n_streams], 1
    return list(order), n_streams


def _strided(samples: Iterator[dict[str, Any]], stride: int, offset: int) -> Iterator[dict[str, Any]]:
    return samples if stride == 1 else itertools.islice(samples, offset, None, stride)


def decode_sample(sample: dict[str, Any], transform: Optional[Callable], encoded: bool) -> Optional[tuple]:
    """``(image, target)`` (``(bytes, target, name)`` when ``encoded``), or None with a warning naming the shard
    and the sample when it holds no decodable image or class."""
    name = f"{sample.get('__url__')}:{sample.get('__key__')}"
    if _DAMAGED in sample:
        return None
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    try:
        target = int(sample["cls"])
    except (KeyError, ValueError) as e:
        _warn(f"skipping sample {name}: no class index ('cls': {type(e).__name__})")
        return None
    if key is None:
        _warn(f"skipping sample {name}: no image member (expected one of .{', .'.join(IMAGE_KEYS)})")
        return None
    if encoded:
        return torch.frombuffer(bytearray(sample[key]), dtype=torch.uint8), target, name
    from PIL import Image

    try:
        with Image.open(io.BytesIO(sample[key])) as im:
            img = im.convert("RGB")
        return (transform(img) if transform is not None else img), target
    except Exception as e:  # Pillow's decoders raise many types; a transform may fail on an odd image
        _warn(f"skipping unreadable image {name}.{key} ({type(e).__name__}: {e})")
        return None


class ShardSamples(Dataset):
    """A split's shards as an indexable data set, sample ``i`` being the ``i``-th in the index's order
    (``validate``, ``quantize``'s calibration, ``--qat`` calibration).

    A tar has no random access, so reads stream: in-order or sorted access (a validation pass, a sorted subset)
    reads each shard once, skipping unwanted samples undecoded; a step back reopens the shard.
    """

    def __init__(self, split: ShardSplit, transform: Optional[Callable], encoded: bool = False) -> None:
        self.split, self.transform, self.encoded = split, transform, encoded
        self.classes = list(split.classes)
        self._starts = list(itertools.accumulate([s.samples for s in split.shards], initial=0))
        self._cursor: Optional[tuple[int, int, Iterator[dict[str, Any]]]] = None  # shard, next offset, reader

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:  # a reader does not pickle (spawned workers): they open their own
        return {**self.__dict__, "_cursor": None}

    def __getitem__(self, i: int) -> Optional[tuple]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)} in {self.split.source}")
        k = bisect.bisect_right(self._starts, i) - 1
        offset = i - self._starts[k]
        if self._cursor is None or self._cursor[0] != k or self._cursor[1] > offset:
            self._cursor = (k, 0, read_shard(self.split.shards[k]))
        _, at, reader = self._cursor
        sample = next(itertools.islice(reader, offset - at, None))
        self._cursor = (k, offset + 1, reader)
        return decode_sample(sample, self.transform, self.encoded)


class ShardStream(IterableDataset):
    """The samples of a shard split for one rank, spread over ``workers`` data-loader workers.

    Training (``train=True``): :meth:`set_position` picks the epoch and the steps already done in it; the rank's
    workers then yield exactly the rest of the epoch's ``steps_per_epoch * batch_size`` samples, batch ``j`` of
    the epoch coming from worker ``j % workers`` (the data loader's round robin). Validation: every sample of
    the split once.
    """

    def __init__(self, split: ShardSplit, transform: Optional[Callable], *, rank: int, world_size: int,
                 workers: int, batch_size: int, seed: int = 0, train: bool = True, shuffle_buffer: int = 1000,
                 encoded: bool = False) -> None:
        self.split, self.transform, self.encoded = split, transform, encoded
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.batch_size, self.seed, self.train, self.shuffle_buffer = batch_size, seed, train, shuffle_buffer
        self.classes = list(split.classes)
        self.steps_per_epoch = max(1, split.samples // (world_size * batch_size))
        self.epoch, self.start_step = 0, 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Read epoch ``epoch`` (0-based) from step ``start_step`` on (the steps before it are skipped)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        if self.train:
            return self.steps_per_epoch * self.batch_size
        return sum(self._val_count(w) for w in range(self.workers))

    def _stream_id(self, worker: int) -> tuple[int, int]:
        return self.rank * self.workers + worker, self.world_size * self.workers

    def _worker(self) -> int:
        info = get_worker_info()
        if info is None:
            return 0
        if info.num_workers != self.workers:
            raise RuntimeError(f"ShardStream was built for {self.workers} workers, the loader has {info.num_workers}")
        return info.id

    def __iter__(self) -> Iterator[Optional[tuple]]:
        if not self.train:
            yield from self._val(self._worker())
            return
        # The loader starts its round robin at worker 0: after k steps, worker 0 plays the part of worker k % W.
        logical = (self._worker() + self.start_step) % self.workers
        stream, n_streams = self._stream_id(logical)
        done = len(range(logical, self.start_step, self.workers))
        total = len(range(logical, self.steps_per_epoch, self.workers))
        b = self.batch_size
        samples = itertools.islice(self._train_samples(stream, n_streams), done * b, total * b)
        for pos, sample in enumerate(samples, start=done * b):
            if self.encoded:
                yield decode_sample(sample, None, True)
                continue
            with seeded(self.seed, self.epoch, stream, pos):  # the transform's randomness: this sample's own
                item = decode_sample(sample, self.transform, False)
            yield item

    def _train_samples(self, stream: int, n_streams: int) -> Iterator[dict[str, Any]]:
        from webdataset.filters import shuffle

        shards = self.split.shards
        order = list(range(len(shards)))
        random.Random(sample_seed(self.seed, self.epoch)).shuffle(order)
        mine, stride = split_streams(len(shards), n_streams, stream, order)

        rng = random.Random(sample_seed(self.seed, self.epoch, stream, -1))
        buf = max(1, self.shuffle_buffer)
        for again in itertools.count():
            if again:  # a stream that needs more samples than its shards hold reads them again, reordered
                random.Random(sample_seed(self.seed, self.epoch, stream, again)).shuffle(mine)
            one_pass = _strided(itertools.chain.from_iterable(read_shard(shards[i]) for i in mine), stride, stream)
            got = 0
            # each pass through its own buffer: a repeat never comes before the whole first pass
            for sample in shuffle(buf, buf, rng=rng)(iter(one_pass)):
                got += 1
                yield sample
            if not got:
                raise RuntimeError(f"{self.split.source}: data stream {stream} of {n_streams} got no samples from "
                                   f"its shards ({', '.join(shards[i].path.name for i in mine)})")

    def _val_shards(self, worker: int) -> tuple[list[int], int, int]:
        stream, n_streams = self._stream_id(worker)
        mine, stride = split_streams(len(self.split.shards), n_streams, stream, list(range(len(self.split.shards))))
        return mine, stride, stream

    def _val_count(self, worker: int) -> int:
        mine, stride, stream = self._val_shards(worker)
        n = sum(self.split.shards[i].samples for i in mine)
        return n if stride == 1 else len(range(stream, n, stride))

    def _val(self, worker: int) -> Iterator[Optional[tuple]]:
        mine, stride, stream = self._val_shards(worker)
        samples = itertools.chain.from_iterable(read_shard(self.split.shards[i]) for i in mine)
        for sample in _strided(samples, stride, stream):
            yield decode_sample(sample, self.transform, self.encoded)
