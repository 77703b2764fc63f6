"""Visual evaluation: ``validate --report``, ``predict --cam`` and TensorBoard logging of a tiny run."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from training_fixtures import TINY_YAML, make_image_folder, run_cli, tiny_settings

import mixconv
from mixconv.visual.report import Predictions, confident_mistakes, write_report

pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One tiny training run (1 epoch on 3 classes of 16x16 digits) shared by the tests below."""
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.yaml").write_text(TINY_YAML)
    data = make_image_folder(root / "data", n_train=16, n_val=8)
    torch.set_num_threads(1)
    summary = mixconv.train(None, **tiny_settings(str(root / "tiny.yaml"), str(data), root / "run", epochs=1,
                                                  img_size=32))
    return {"root": root, "data": data, "summary": summary, "out": root / "run"}


def _png(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_write_report_from_logits(tmp_path):
    # 6 samples of 3 classes: two mistakes, the one at position 4 (p=0.9 for class 0) the more confident.
    logits = np.log(np.array([[.8, .1, .1], [.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.9, .05, .05], [.1, .1, .8]]))
    preds = Predictions(logits.astype(np.float32), np.array([0, 1, 0, 2, 1, 2]), np.arange(10, 16))
    assert confident_mistakes(preds, 5) == [(14, 1, 0, pytest.approx(0.9)), (12, 0, 1, pytest.approx(0.7))]
    seen = []
    paths = write_report(tmp_path / "rep", preds, ["cat", "dog", "eel"],
                         image_of=lambda i: seen.append(i) or np.full((8, 8), i / 20.0), summary={"data": "x<y"})
    assert seen == [14, 12]
    with open(paths["per_class"]) as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    assert rows["cat"] == {"class": "cat", "precision": "0.5000", "recall": "0.5000", "f1": "0.5000", "support": "2"}
    assert rows["dog"]["precision"] == "0.5000" and rows["eel"]["f1"] == "1.0000"
    assert rows["macro avg"]["recall"] == "0.6667" and rows["weighted avg"]["support"] == "6"
    for key in ("confusion", "mistakes"):
        assert min(_png(paths[key])) > 100
    page = paths["index"].read_text()
    assert "66.67" in page and "100.00" in page  # top-1 and top-5
    assert "x&lt;y" in page and "confusion_matrix.png" in page and "mistakes.png" in page and ">eel<" in page


def test_validate_report_on_a_training_checkpoint(run, tmp_path):
    best = run["summary"]["best_checkpoint"]
    plain = run_cli("validate", "--checkpoint", best, "--format", "json")
    r = run_cli("validate", "--checkpoint", best, "--format", "json", "--report", str(tmp_path / "rep"))
    assert plain.returncode == 0 and r.returncode == 0, r.stderr
    a, b = json.loads(plain.stdout), json.loads(r.stdout)
    assert b["top1"] == pytest.approx(a["top1"]) and b["top5"] == pytest.approx(a["top5"])
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-4) and b["images"] == a["images"] == 24
    with open(tmp_path / "rep" / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows[:3]] == ["digit0", "digit1", "digit2"]
    assert sum(int(r["support"]) for r in rows[:3]) == 24
    _png(tmp_path / "rep" / "confusion_matrix.png")
    _png(tmp_path / "rep" / "mistakes.png")
    assert "digit1" in (tmp_path / "rep" / "index.html").read_text()


def test_predict_cam_overlays(run, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    images = sorted((run["data"] / "val" / "digit1").glob("*.png"))[:2]
    r = run_cli("predict", *map(str, images), "--checkpoint", run["summary"]["last_checkpoint"],
                "--cam", str(tmp_path / "cam"), "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["cam"] for o in out] == [str(tmp_path / "cam" / f"{p.stem}_cam.png") for p in images]
    w, h = _png(out[0]["cam"])
    assert h >= 224 and w == 2 * h  # the image and its overlay, side by side
    r = run_cli("predict", str(images[0]), "--checkpoint", run["summary"]["last_checkpoint"],
                "--cam", str(tmp_path / "cam2"), "--cam-layer", "stages.0")
    assert r.returncode == 0, r.stderr
    r = run_cli("predict", str(images[0]), "--checkpoint", run["summary"]["last_checkpoint"],
                "--cam", str(tmp_path / "cam3"), "--cam-layer", "nope")
    assert r.returncode == 2 and "--cam-layer 'nope': no such module" in r.stderr


def test_predict_cam_without_grad_cam_is_a_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import now raises ImportError
    image = next((run["data"] / "val" / "digit0").glob("*.png"))
    r = run_cli("predict", str(image), "--checkpoint", run["summary"]["last_checkpoint"], "--cam", str(tmp_path))
    assert r.returncode == 2 and "pip install 'mixconv[cam]'" in r.stderr


def test_tensorboard_events_hold_loss_lr_top1_and_images(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["out"] / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train_loss", "val_loss", "lr", "val_top1", "val_top5"} <= set(tags["scalars"])
    top1 = acc.Scalars("val_top1")
    assert [e.step for e in top1] == [1] and top1[0].value == pytest.approx(run["summary"]["final_top1"], abs=1e-3)
    with open(run["out"] / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    for tag in ("train_loss", "lr"):  # the same numbers as metrics.csv (lr: the schedule's end-of-epoch value)
        assert acc.Scalars(tag)[0].value == pytest.approx(float(row[tag]), rel=1e-5, abs=1e-9)
    assert "train/examples" in tags["images"]
    imgs = acc.Images("train/examples")
    assert len(imgs) == 1 and (imgs[0].width, imgs[0].height) == (8 * 32, 32)  # one grid of 8 training images
