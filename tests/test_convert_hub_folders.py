"""Hugging Face hub folders (timm's layout) both ways, and ``pretrained_cfg`` on mixconv models."""
from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import make_image_folder, run_cli

import mixconv
from mixconv.convert.hub import save_pretrained
from mixconv.files.hub import read_hub_config
from mixconv.files.inputs import CheckpointError

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _random_model(name: str, num_classes: int = 7, seed: int = 0) -> torch.nn.Module:
    """Random weights and random BatchNorm statistics (a fresh model's are 0/1, which hides key mix-ups)."""
    torch.manual_seed(seed)
    model = mixconv.create_model(name, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("name", ["mixnet_s", "tf_mixnet_s"])
def test_round_trip_with_timm_local_dir(name, tmp_path):
    ours = _random_model(name)
    x = torch.randn(2, 3, 64, 64)
    save_pretrained(ours, tmp_path / "ours")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'ours'}", pretrained=True).eval()
    assert theirs.num_classes == 7
    with torch.no_grad():
        ref = ours(x)
        _close(theirs(x), ref)
    # ... and back: timm's own writer, read by mixconv (safetensors, then the pickle-free .bin path).
    for safe, sub in ((True, "timm_st"), (False, "timm_bin")):
        timm.models.save_for_hf(theirs, tmp_path / sub, safe_serialization=safe)
        back = mixconv.create_model(tmp_path / sub, pretrained=True).eval()
        assert back.model_name == name and back.num_classes == 7
        with torch.no_grad():
            _close(back(x), ref)


def test_pretrained_cfg_gives_the_variant_preprocessing():
    from timm.data import create_transform, resolve_model_data_config

    model = mixconv.create_model("mixnet_s", num_classes=3)
    meta = mixconv.get_model_def("mixnet_s").meta
    cfg = resolve_model_data_config(model)
    assert cfg["input_size"] == meta.input_size and cfg["interpolation"] == meta.interpolation
    assert cfg["crop_pct"] == meta.crop_pct
    assert tuple(cfg["mean"]) == meta.mean and tuple(cfg["std"]) == meta.std
    pc = model.pretrained_cfg
    assert pc["num_classes"] == 3 and pc["first_conv"] == "stem.conv" and pc["classifier"] == "classifier"
    assert dict(model.named_modules())[pc["first_conv"]].in_channels == 3
    t = str(create_transform(**cfg))
    assert "Resize(size=256, interpolation=bicubic" in t and "CenterCrop(size=(224, 224))" in t
    gray = mixconv.create_model("mixnet_s", in_chans=1)
    assert resolve_model_data_config(gray)["input_size"] == (1, 224, 224)
    assert len(gray.pretrained_cfg["mean"]) == 1
    assert "classifier" not in mixconv.create_model("mixnet_s", features_only=True).pretrained_cfg


def test_pretrained_cfg_from_hub_folder_and_checkpoint(tmp_path):
    from timm.data import resolve_model_data_config

    from mixconv.factory.checkpoint import (
        model_from_training_checkpoint as model_from_checkpoint,
    )

    pre = {"img_size": 64, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25]}
    src = _random_model("mixnet_s", num_classes=4)
    ckpt = mixconv.save_checkpoint(src, tmp_path / "run.safetensors", extra={"preprocess": pre})
    from_ckpt, _ = model_from_checkpoint(ckpt)
    want = {"input_size": (3, 64, 64), "interpolation": "bilinear", "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25)}
    for model in (from_ckpt, mixconv.model_from_checkpoint(ckpt)):
        got = resolve_model_data_config(model)
        assert {k: got[k] for k in want} == want
    save_pretrained(src, tmp_path / "hub", preprocess=pre, classes=list("abcd"))
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert cfg["label_names"] == list("abcd") and cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]
    for model in (mixconv.create_model(tmp_path / "hub"),  # config only
                  mixconv.create_model("mixnet_s", num_classes=2, pretrained=tmp_path / "hub")):  # transfer
        got = resolve_model_data_config(model)
        assert {k: got[k] for k in want} == want
    assert timm.data.resolve_model_data_config(
        timm.create_model(f"local-dir:{tmp_path / 'hub'}"))["input_size"] == (3, 64, 64)


def test_transfer_from_hub_folder_keeps_the_trunk(tmp_path):
    src = _random_model("mixnet_s", num_classes=10)
    save_pretrained(src, tmp_path / "hub")
    model = mixconv.create_model("mixnet_s", num_classes=3, pretrained=tmp_path / "hub")
    assert torch.equal(model.stem.conv.weight, src.stem.conv.weight)
    assert model.classifier.out_features == 3 and model.pretrained_cfg["num_classes"] == 3
    fresh = mixconv.load_pretrained(mixconv.create_model("mixnet_s", num_classes=10), tmp_path / "hub")  # --pretrained
    assert torch.equal(fresh.classifier.weight, src.classifier.weight)


def test_convert_to_and_from_a_hub_folder(tmp_path):
    src = _random_model("mixnet_s", num_classes=3)
    pre = {"img_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    extra = {"classes": ["cat", "dog", "eel"], "preprocess": pre, "val_top1": 91.5, "val_top5": 100.0,
             "epoch": 4, "data": "somewhere"}
    ckpt = mixconv.save_checkpoint(src, tmp_path / "best.safetensors", extra=extra)
    r = run_cli("convert", str(ckpt), str(tmp_path / "hub") + "/")
    assert r.returncode == 0, r.stderr
    assert "mixconv->hub" in r.stdout
    card = (tmp_path / "hub" / "README.md").read_text()
    for text in ("Params: 2.6", "MACs:", "at 32x32", "bilinear", "val_top1: 91.5", "cat, dog, eel"):
        assert text in card
    cfg = read_hub_config(tmp_path / "hub")
    assert cfg.label_names == ["cat", "dog", "eel"] and cfg.preprocess() == pre
    r = run_cli("convert", str(tmp_path / "hub"), str(tmp_path / "back.safetensors"))
    assert r.returncode == 0, r.stderr
    back = mixconv.model_from_checkpoint(tmp_path / "back.safetensors").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _close(back(x), src(x))
    from mixconv.inference.runner import load_model

    loaded = load_model(tmp_path / "back.safetensors")  # classes and preprocessing travelled too
    assert loaded.classes == ["cat", "dog", "eel"] and loaded.preprocess.img_size == 32


def test_validate_and_predict_accept_a_hub_folder(tmp_path):
    from PIL import Image

    src = _random_model("mixnet_s", num_classes=10)
    pre = {"img_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    save_pretrained(src, tmp_path / "hub", preprocess=pre, classes=[f"digit{i}" for i in range(10)])
    data = make_image_folder(tmp_path / "data", n_train=0, n_val=4)
    r = run_cli("validate", "--checkpoint", str(tmp_path / "hub"), "--data", str(data / "val"), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    r = run_cli("predict", str(tmp_path / "red.png"), "--checkpoint", str(tmp_path / "hub"), "--format", "json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]["top"][0]
    with torch.no_grad():
        x = (torch.tensor([200, 10, 10]).view(1, 3, 1, 1).float() / 255 - 0.5) / 0.5
        want = int(src(x.expand(1, 3, 32, 32)).argmax())
    assert top["class"] == f"digit{want}"


def test_unknown_architecture_and_mismatched_tensors_are_named(tmp_path):
    save_pretrained(_random_model("mixnet_s", num_classes=5), tmp_path / "hub")
    cfg_path = tmp_path / "hub" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architecture"] = "resnet50"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"hub.*config\.json: field 'architecture' is 'resnet50'"):
        mixconv.create_model(tmp_path / "hub", pretrained=True)
    r = run_cli("validate", "--checkpoint", str(tmp_path / "hub"), "--data", "digits")
    assert r.returncode == 2 and "architecture" in r.stderr and "Traceback" not in r.stderr
    cfg["architecture"] = "mixnet_m"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.safetensors \(config\.json: architecture='mixnet_m'.*do not"):
        mixconv.create_model(tmp_path / "hub", pretrained=True)
    cfg["architecture"], cfg["num_classes"] = "mixnet_s", 6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"num_classes=6.*classifier\.weight: checkpoint \(5, 1536\)"):
        mixconv.create_model(tmp_path / "hub", pretrained=True)
    (tmp_path / "hub" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights; expected model.safetensors or pytorch_model.bin"):
        mixconv.create_model(tmp_path / "hub", pretrained=True)
    with pytest.raises(CheckpointError, match="not a registered MixNet variant"):
        save_pretrained(mixconv.create_model("mobilenet_v2_mixconv", num_classes=2), tmp_path / "x")
