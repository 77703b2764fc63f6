"""WebDataset shards: written from a tiny ImageFolder and read back (classes, counts, bytes), split over ranks
and workers (disjoint and complete, in process and under torchrun), damaged shards skipped and named."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO, image_folder, make_image_folder, tiny_model, tiny_settings  # noqa: F401

import mixconv
from mixconv.cli import main as cli
from mixconv.data.shard_writer import write_shards
from mixconv.data.datasets import build_dataset
from mixconv.data.shards import INDEX_NAME, ShardSamples, ShardStream, open_shards, read_shard
from mixconv.files.config import ConfigError


@pytest.fixture
def shards(image_folder, tmp_path) -> Path:
    out = tmp_path / "shards"
    write_shards(str(image_folder), out, shard_size=6)  # 48 train images: 8 shards; 24 val: 4
    return out


def names(stream: ShardStream, workers: int) -> list[str]:
    """The sample names one rank's loader yields (encoded samples carry ``shard:key``)."""
    loader = torch.utils.data.DataLoader(stream, batch_size=stream.batch_size, num_workers=workers,
                                         collate_fn=lambda batch: batch)
    return [item[2] for batch in loader for item in batch]


def stream(split, rank, world, workers, train=True, batch_size=4, epoch=0, step=0):
    s = ShardStream(split, None, rank=rank, world_size=world, workers=workers, batch_size=batch_size, seed=0,
                    train=train, encoded=True)
    s.set_position(epoch, step)
    return s


def test_round_trip_keeps_classes_counts_and_bytes(image_folder, tmp_path):
    out = tmp_path / "shards"
    assert cli(["shards", str(image_folder), str(out), "--shard-size", "10"]) == 0
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["classes"] == ["digit0", "digit1", "digit2"]
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [10, 10, 10, 10, 8]
    for split, per_class in (("train", 16), ("val", 8)):
        found = open_shards(str(out), split)
        samples = [s for shard in found.shards for s in read_shard(shard)]
        counts = collections.Counter(found.classes[int(s["cls"])] for s in samples)
        assert counts == {c: per_class for c in found.classes}
        for s in samples:  # each sample is its file's bytes, under its class
            path = image_folder / split / s["path.txt"].decode()
            assert s["png"] == path.read_bytes()
            assert path.parent.name == found.classes[int(s["cls"])]
    # the same data and seed give byte-identical shards
    write_shards(str(image_folder), tmp_path / "again", shard_size=10)
    assert (tmp_path / "again" / "train-000000.tar").read_bytes() == (out / "train-000000.tar").read_bytes()


def test_brace_pattern_selects_training_shards(shards):
    picked = open_shards(str(shards / "train-{000000..000003}.tar"), "train")
    assert [s.path.name for s in picked.shards] == [f"train-{i:06d}.tar" for i in range(4)]
    assert picked.samples == 24
    assert open_shards(str(shards / "train-{000000..000003}.tar"), "val").samples == 24  # val from the index
    with pytest.raises(ConfigError, match=r"train-000009.tar not in .*shards.json"):
        open_shards(str(shards / "train-{000007..000009}.tar"), "train")


@pytest.mark.parametrize("shard_size", [6, 20], ids=["shard-split", "sample-split"])
def test_rank_and_worker_splits_are_disjoint_and_complete(image_folder, tmp_path, shard_size):
    """2 ranks x 2 workers: with 8 shards each stream reads 2 of them; with 3 shards (fewer than the 4 streams)
    every stream reads all and keeps every 4th sample. Either way each training epoch and the validation pass
    see every sample exactly once; another epoch reorders them."""
    write_shards(str(image_folder), tmp_path / "s", shard_size=shard_size)
    train, val = open_shards(str(tmp_path / "s"), "train"), open_shards(str(tmp_path / "s"), "val")
    epoch0 = [names(stream(train, r, 2, 2), 2) for r in (0, 1)]
    assert not set(epoch0[0]) & set(epoch0[1])
    all_train = {f"{s.path}:{k['__key__']}" for s in train.shards for k in read_shard(s)}
    assert len(epoch0[0]) == len(epoch0[1]) == 24 and set(epoch0[0]) | set(epoch0[1]) == all_train
    epoch1 = [names(stream(train, r, 2, 2, epoch=1), 2) for r in (0, 1)]
    assert set(epoch1[0]) | set(epoch1[1]) == all_train and epoch1[0] != epoch0[0]
    vals = [names(stream(val, r, 2, 2, train=False), 2) for r in (0, 1)]
    assert not set(vals[0]) & set(vals[1]) and len(vals[0]) + len(vals[1]) == 24
    assert len(vals[0]) == len(stream(val, 0, 2, 2, train=False))


def test_a_started_epoch_continues_with_the_same_samples(shards):
    """Steps 3.. of an epoch read from step 3 are the uninterrupted epoch's steps 3.. (2 workers, whose round
    robin restarts at worker 0)."""
    split = open_shards(str(shards), "train")
    whole = names(stream(split, 0, 1, 2), 2)
    assert names(stream(split, 0, 1, 2, step=3), 2) == whole[3 * 4:]
    assert names(stream(split, 0, 1, 0, step=5), 0) == names(stream(split, 0, 1, 0), 0)[5 * 4:]


def test_a_training_stream_leaves_the_callers_random_state_alone(shards):
    """Each sample's augmentation runs under its own seed; between samples (while the training step runs, with
    --workers 0) the caller's random stream is its own, and the augmentation is the same either way."""
    from torchvision.transforms import v2

    tf = v2.Compose([v2.PILToTensor(), v2.RandomCrop(16)])
    s = ShardStream(open_shards(str(shards), "train"), tf, rank=0, world_size=1, workers=0, batch_size=4)
    torch.manual_seed(123)
    expected = torch.rand(3)  # the caller's next draw, had no sample been read
    torch.manual_seed(123)
    it = iter(s)
    first = next(it)
    assert torch.equal(torch.rand(3), expected)
    second = next(it)
    torch.manual_seed(7)  # another caller state: the samples do not change
    again = list(zip(range(2), iter(s)))
    assert torch.equal(again[0][1][0], first[0]) and torch.equal(again[1][1][0], second[0])


def test_damaged_shards_are_skipped_counted_and_named(image_folder, tmp_path, tiny_model, capfd):
    out = tmp_path / "shards"
    write_shards(str(image_folder), out, shard_size=6)
    data = (out / "train-000001.tar").read_bytes()
    (out / "train-000001.tar").write_bytes(data[: len(data) // 2])  # truncated
    (out / "train-000002.tar").unlink()  # lost
    with tarfile.open(out / "train-000003.tar", "a") as tar:  # a member that is not an image
        info = tarfile.TarInfo("zzz.png")
        bad = b"not an image"
        info.size = len(bad)
        import io

        tar.addfile(info, io.BytesIO(bad))
    (tmp_path / "cls").write_text("1")
    with tarfile.open(out / "train-000003.tar", "a") as tar:
        tar.add(tmp_path / "cls", arcname="zzz.cls")
    index = json.loads((out / INDEX_NAME).read_text())
    index["splits"]["train"]["shards"][3]["samples"] += 1
    (out / INDEX_NAME).write_text(json.dumps(index))
    summary = mixconv.train(None, **tiny_settings(tiny_model, str(out), tmp_path / "run", epochs=1, batch_size=7))
    err = capfd.readouterr().err
    assert f"damaged shard {out / 'train-000001.tar'} after" in err
    assert f"damaged shard {out / 'train-000002.tar'} after 0 of its 6 samples" in err
    assert f"skipping unreadable image {out / 'train-000003.tar'}:zzz.png" in err
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    skipped = int(rows[1].split(",")[-1])
    assert skipped >= 7 and summary["finished"]  # 6 lost + the bad member (at least; truncation too)


def test_index_errors_name_the_file_and_the_key(shards):
    (shards / INDEX_NAME).write_text(json.dumps({"format": "mixconv-shards/1", "classes": [], "splits": {}}))
    with pytest.raises(ConfigError, match=r"shards.json .*'classes' must be a non-empty list"):
        open_shards(str(shards), "train")
    (shards / INDEX_NAME).write_text("{")
    with pytest.raises(ConfigError, match="not readable JSON"):
        open_shards(str(shards), "train")


def test_train_from_shards_and_from_a_pattern(image_folder, shards, tiny_model, tmp_path):
    summary = mixconv.train(None, **tiny_settings(tiny_model, str(shards / "train-{000000..000007}.tar"),
                                                  tmp_path / "run", epochs=1, workers=2))
    assert summary["finished"] and summary["epochs"] == 1
    from mixconv.factory.checkpoint import model_from_training_checkpoint as model_from_checkpoint

    _, extra = model_from_checkpoint(tmp_path / "run" / "best.safetensors")
    assert extra["classes"] == ["digit0", "digit1", "digit2"]
    # validate reads the val shards as it reads the folder: the same images, the same numbers
    ckpt = str(tmp_path / "run" / "best.safetensors")
    on_shards, on_folder = mixconv.evaluate(ckpt, data=str(shards)), mixconv.evaluate(ckpt, data=str(image_folder))
    assert on_shards["images"] == on_folder["images"] == 24
    assert on_shards["top1"] == on_folder["top1"] and on_shards["loss"] == pytest.approx(on_folder["loss"], rel=1e-6)


def test_shard_samples_index_in_order_and_out_of_order(image_folder, shards):
    """validate/quantize/--qat calibration read shards as an indexed data set: sample i is the same image
    whichever order it is asked in (a step back reopens the shard), with the folder's classes and counts."""
    ds = build_dataset(str(shards), "train", None)
    assert isinstance(ds, ShardSamples) and len(ds) == 48 and ds.classes == ["digit0", "digit1", "digit2"]
    forward = [ds[i] for i in range(len(ds))]
    for i in (40, 7, 8, 3, 47, 0):  # back and forth, across shards and within one
        img, target = ds[i]
        assert target == forward[i][1] and img.tobytes() == forward[i][0].tobytes()
    assert collections.Counter(t for _, t in forward) == {0: 16, 1: 16, 2: 16}
    folder = build_dataset(str(image_folder), "val", None)
    val = build_dataset(str(shards), "val", None)  # val shards keep the folder's order
    assert [t for _, t in val] == [t for _, t in folder]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(val, folder))
    with pytest.raises(IndexError, match="sample 48 of 48"):
        ds[48]
    import pickle

    ds[5]  # an open reader is dropped when pickled (spawned data-loader workers)
    assert pickle.loads(pickle.dumps(ds))[5][1] == forward[5][1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_torchrun_ranks_see_disjoint_samples(tmp_path):
    make_image_folder(tmp_path / "data")
    write_shards(str(tmp_path / "data"), tmp_path / "shards", shard_size=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    script = REPO / "tests" / "shard_ranks_worker.py"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(tmp_path / "shards"), str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [set(json.loads((tmp_path / f"rank{rank}.json").read_text())) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]
