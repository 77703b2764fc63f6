"""Loading timm and mixconv checkpoints: parity with timm, safety, and clear mismatch errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from helpers import ALL_MODELS, randomize_bn, rel_err
from safetensors.torch import save_file

import mixconv
from mixconv.files.inputs import CheckpointError
from mixconv.files.weights import mixconv_to_timm, read_checkpoint, save_checkpoint

timm = pytest.importorskip("timm", reason="timm is the reference implementation (dev extra)")


def make_timm(name: str, size: int = 64, **kwargs) -> torch.nn.Module:
    """A timm model with random weights and random BN statistics calibrated at the test's input size."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    return randomize_bn(model, torch.randn(2, kwargs.get("in_chans", 3), size, size))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_timm_parity(name, tmp_path):
    ref = make_timm(name, size=224)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    model = mixconv.create_model(name, pretrained=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        err = rel_err(model(x), ref(x))
    print(f"{name}: max relative error vs timm {err:.2e}")
    assert err <= 1e-4
    # ... and our weights go back to timm's names, tensors unchanged.
    back = mixconv_to_timm(model.state_dict(), model)
    sd = ref.state_dict()
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_nested_safetensors_and_ddp_prefixes(tmp_path):
    ref = make_timm("mixnet_s")
    sd = ref.state_dict()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
    for key in ("state_dict", "model", "state_dict_ema"):
        torch.save({key: {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / f"{key}.pth")
        model = mixconv.create_model("mixnet_s", pretrained=tmp_path / f"{key}.pth").eval()
        with torch.no_grad():
            assert rel_err(model(x), expected) <= 1e-4
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    model = mixconv.create_model("mixnet_s", pretrained=tmp_path / "w.safetensors").eval()
    with torch.no_grad():
        assert rel_err(model(x), expected) <= 1e-4


def test_mixconv_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(mixconv.create_model("mixnet_s", num_classes=10), torch.randn(2, 3, 64, 64))
    path = save_checkpoint(model, tmp_path / "ckpt.safetensors", extra={"classes": list("0123456789")})
    sd, meta = read_checkpoint(path)
    assert meta["format"].startswith("mixconv") and "stage_params" in meta["config"]
    assert all(t.is_contiguous() for t in sd.values())
    again = mixconv.create_model("mixnet_s", num_classes=10, pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_transfer_learning_new_head(tmp_path):
    ref = make_timm("mixnet_s")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = mixconv.create_model("mixnet_s", num_classes=10, pretrained=tmp_path / "w.pth").eval()
    assert model.classifier.out_features == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        assert rel_err(ours, ref.forward_head(ref.forward_features(x), pre_logits=True)) <= 1e-4


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adaptation_matches_timm(in_chans, tmp_path):
    ref3 = make_timm("mixnet_s")
    torch.save(ref3.state_dict(), tmp_path / "w.pth")
    ref = timm.create_model("mixnet_s", in_chans=in_chans, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth"))).eval()
    model = mixconv.create_model("mixnet_s", in_chans=in_chans, pretrained=tmp_path / "w.pth").eval()
    x = torch.randn(1, in_chans, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-4


def test_features_only_loads_pretrained(tmp_path):
    ref = make_timm("mixnet_s", features_only=False)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    feats = mixconv.create_model("mixnet_s", features_only=True, pretrained=tmp_path / "w.pth").eval()
    ref_feats = timm.create_model("mixnet_s", features_only=True)
    ref_feats.load_state_dict({k: v for k, v in ref.state_dict().items() if k in ref_feats.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(feats(x), ref_feats.eval()(x)):
            assert rel_err(a, b) <= 1e-4


def test_wrong_variant_lists_mismatches(tmp_path):
    torch.save(make_timm("mixnet_s").state_dict(), tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="blocks but the model has"):
        mixconv.create_model("mixnet_m", pretrained=tmp_path / "s.pth")
    sd = mixconv.create_model("mixnet_s").state_dict()
    sd.pop("stem.bn.running_mean")
    sd["extra.weight"] = torch.zeros(1)
    sd["stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        mixconv.create_model("mixnet_s", pretrained=tmp_path / "bad.pth")
    msg = str(info.value)
    assert "bad.pth" in msg and "missing keys: stem.bn.running_mean" in msg
    assert "unexpected keys: extra.weight" in msg and "mis-shaped keys: stem.conv.weight" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        mixconv.create_model("mixnet_s", pretrained=path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        mixconv.create_model("mixnet_s", pretrained=tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        mixconv.create_model("mixnet_s", pretrained=tmp_path / "junk.safetensors")
