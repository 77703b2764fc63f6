"""``mixconv validate`` and ``mixconv.evaluate`` on checkpoints from a short training run."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from training_fixtures import TINY_YAML, make_image_folder, run_cli, tiny_settings

import mixconv
from mixconv.factory.checkpoint import (
    model_from_training_checkpoint as model_from_checkpoint,
)
from mixconv.files.weights import mixconv_to_timm


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("validate")
    model = root / "tiny.yaml"
    model.write_text(TINY_YAML)
    torch.set_num_threads(1)
    summary = mixconv.train(None, **tiny_settings(str(model), "digits", root / "run", epochs=2, batch_size=64,
                                                  lr=0.01, lr_base_size=64))
    return {"root": root, "model": str(model), "summary": summary, "out": root / "run"}


def test_best_checkpoint_reproduces_the_reported_top1(trained):
    best = trained["summary"]["best_checkpoint"]
    r = run_cli("validate", "--checkpoint", best, "--format", "json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["top1"] == pytest.approx(trained["summary"]["best_top1"], abs=0.01)
    assert res["images"] == 360 and res["data"] == "digits"
    with open(trained["out"] / "metrics.csv") as f:
        best_row = max(csv.DictReader(f), key=lambda row: float(row["val_top1"]))
    assert res["loss"] == pytest.approx(float(best_row["val_loss"]), abs=1e-3)


def test_results_file_json_and_csv(trained, tmp_path):
    last = trained["summary"]["last_checkpoint"]
    for name in ("res.json", "res.csv"):
        r = run_cli("validate", "--checkpoint", last, "--results-file", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert "top1" in r.stdout
    doc = json.loads((tmp_path / "res.json").read_text())
    with open(tmp_path / "res.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["top1"]) == pytest.approx(doc["top1"]) == pytest.approx(trained["summary"]["final_top1"], abs=0.01)
    assert {"top1", "top5", "loss", "images_per_s"} <= set(row)


def test_timm_checkpoint_with_model(trained, tmp_path):
    model, _ = model_from_checkpoint(trained["summary"]["last_checkpoint"])
    pth = tmp_path / "timm_style.pth"
    torch.save(mixconv_to_timm(model.state_dict(), model), pth)
    res = mixconv.evaluate(str(pth), model=trained["model"], data="digits", img_size=32, crop_pct=1.0)
    ref = mixconv.evaluate(trained["summary"]["last_checkpoint"])
    assert res["top1"] == pytest.approx(ref["top1"])
    r = run_cli("validate", "--checkpoint", str(pth))
    assert r.returncode == 2 and "not a self-describing mixconv checkpoint" in r.stderr


def test_image_folder_val_data_and_overrides(trained, tmp_path):
    data = make_image_folder(tmp_path / "d", classes=(0, 1, 2), n_train=1, n_val=4)
    # class folders named like the checkpoint's classes map onto its outputs
    for split in ("train", "val"):
        for d in (data / split).iterdir():
            d.rename(d.with_name(d.name.replace("digit", "")))
    res = mixconv.evaluate(trained["summary"]["last_checkpoint"], data=str(data), img_size=32,
                           interpolation="bicubic")
    assert res["images"] == 12
    (data / "val" / "0" / "bad.png").write_bytes(b"garbage")
    res = mixconv.evaluate(trained["summary"]["last_checkpoint"], data=str(data / "val"))
    assert res["images"] == 12 and res["skipped_images"] == 1


def test_validate_errors(trained, tmp_path):
    last = trained["summary"]["last_checkpoint"]
    r = run_cli("validate", "--checkpoint", str(tmp_path / "none.safetensors"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run_cli("validate", "--checkpoint", last, "--results-file", str(tmp_path / "out.txt"))
    assert r.returncode == 2 and "expected a .json or .csv" in r.stderr
    r = run_cli("validate", "--checkpoint", last, "--data", str(tmp_path / "nodir"))
    assert r.returncode == 2 and "no such directory" in r.stderr
    other = make_image_folder(tmp_path / "other", classes=(0,), n_train=1, n_val=1)
    r = run_cli("validate", "--checkpoint", last, "--data", str(other))
    assert r.returncode == 2 and "digit0 are not among the checkpoint's classes" in r.stderr
    r = run_cli("validate", "--checkpoint", last, "--amp", "fp16")  # fp16 autocast on CPU too
    assert r.returncode == 0 and "top1" in r.stdout, r.stderr
    r = run_cli("validate")
    assert r.returncode == 2 and "--checkpoint" in r.stderr
    r = run_cli("validate", "--checkpoint", last, "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size" in r.stderr
