"""`mixconv validate` on a run's `best` checkpoint reproduces the best top-1 the training log reported.

Three kinds of runs: plain weights, an EMA of them (the EMA is what is evaluated, so `best` holds the EMA), and
quantization-aware training (evaluated as simulated int8 with the activation ranges of that evaluation, which
the checkpoint keeps). The validate header says which.
"""
from __future__ import annotations

import csv
import json

import pytest
from training_fixtures import run_cli, tiny_settings

import mixconv

KINDS = {
    "plain": {},
    "ema": {"ema_decay": 0.9},
    "qat": {"qat": True, "qat_calib_images": 64},
}


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    from training_fixtures import TINY_YAML

    path = tmp_path_factory.mktemp("model") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_validate_best_reproduces_the_logged_best(kind, tiny_yaml, tmp_path):
    out = tmp_path / kind
    extra = dict(KINDS[kind])
    if kind == "qat":  # QAT fine-tunes a trained float checkpoint
        base = mixconv.train(None, **tiny_settings(str(tiny_yaml), "digits", tmp_path / "base", epochs=1,
                                                   batch_size=64, lr_base_size=64))
        extra["pretrained"] = base["best_checkpoint"]
        extra["lr"] = 0.0005
    summary = mixconv.train(None, **tiny_settings(str(tiny_yaml), "digits", out, epochs=3, batch_size=64,
                                                  lr_base_size=64, **extra))
    with open(out / "metrics.csv", newline="") as f:
        logged = max(float(row["val_top1"]) for row in csv.DictReader(f))
    assert summary["best_top1"] == pytest.approx(logged, abs=1e-3)

    r = run_cli("validate", "--checkpoint", str(out / "best.safetensors"), "--format", "json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert results["top1"] == pytest.approx(logged, abs=0.01), (kind, results, logged)
    loaded = results["loaded"]
    assert f"epoch {summary['best_epoch']} of 3" in loaded and "float32" in loaded
    assert ("EMA weights" in loaded) == (kind == "ema") and ("raw weights" in loaded) == (kind != "ema")
    assert ("QAT: simulated int8" in loaded) == (kind == "qat")

    text = run_cli("validate", "--checkpoint", str(out / "best.safetensors"))
    assert text.returncode == 0 and text.stdout.startswith("loaded "), text.stdout
