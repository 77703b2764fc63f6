"""``mixconv predict``: top-k classes of image files with the checkpoint's class names."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from training_fixtures import TINY_YAML, run_cli, tiny_settings

import mixconv
from mixconv.data.datasets import DigitsDataset, eval_transform
from mixconv.factory.checkpoint import (
    model_from_training_checkpoint as model_from_checkpoint,
)
from mixconv.models.pretrained_cfg import Preprocess


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("predict")
    (root / "tiny.yaml").write_text(TINY_YAML)
    torch.set_num_threads(1)
    summary = mixconv.train(None, **tiny_settings(str(root / "tiny.yaml"), "digits", root / "run", epochs=1,
                                                  batch_size=128, lr_base_size=128, img_size=64))
    return summary["best_checkpoint"]


def test_predict_matches_the_model_on_the_same_images(checkpoint, tmp_path):
    ds = DigitsDataset("val")
    paths = []
    for i in range(4):
        p = tmp_path / f"digit_{i}.png"
        Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    r = run_cli("predict", *paths, "--checkpoint", checkpoint, "--top-k", "3", "--format", "json",
                subprocess_=True)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    model, extra = model_from_checkpoint(checkpoint)
    transform = eval_transform(Preprocess.from_dict(extra["preprocess"]))
    with torch.no_grad():
        probs = model.eval()(torch.stack([transform(ds.images[i]) for i in range(4)])).softmax(1)
    for i, res in enumerate(results):
        assert res["image"] == paths[i] and len(res["top"]) == 3
        assert res["top"][0]["class"] == str(int(probs[i].argmax()))
        assert res["top"][0]["prob"] == pytest.approx(float(probs[i].max()), abs=1e-4)
        ps = [t["prob"] for t in res["top"]]
        assert ps == sorted(ps, reverse=True) and sum(ps) <= 1.0 + 1e-6
    r = run_cli("predict", paths[0], "--checkpoint", checkpoint, "--top-k", "2")
    assert r.returncode == 0 and r.stdout.startswith(paths[0] + ": ") and r.stdout.count("%") == 2


def test_unreadable_images_are_named(checkpoint, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (255, 255, 255)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    r = run_cli("predict", str(bad), str(good), "--checkpoint", checkpoint)
    assert r.returncode == 1  # every image is tried; the exit status says one failed
    assert "skipping unreadable image" in r.stderr and "bad.jpg: not a readable image" in r.stderr
    assert "good.png: " in r.stdout and "bad.jpg: unreadable" in r.stdout
    r = run_cli("predict", str(bad), "--checkpoint", checkpoint)
    assert r.returncode == 1


def test_predict_errors(checkpoint, tmp_path):
    r = run_cli("predict", "x.png", "--checkpoint", checkpoint, "--top-k", "0")
    assert r.returncode == 2 and "--top-k" in r.stderr
    r = run_cli("predict", "x.png", "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run_cli("predict", "--checkpoint", checkpoint)
    assert r.returncode == 2 and "IMAGE" in r.stderr
