"""mixconv convert: timm checkpoint -> mixconv checkpoint -> timm state dict, round trip and errors."""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_bn, rel_err
from safetensors.torch import load_file, save_file

import mixconv
from mixconv.cli import main
from mixconv.convert.checkpoint import convert_checkpoint
from mixconv.factory.checkpoint import infer_timm_variant, model_from_checkpoint
from mixconv.files.inputs import CheckpointError
from mixconv.files.integrity import file_sha256
from mixconv.files.weights import read_checkpoint

timm = pytest.importorskip("timm", reason="timm is the reference implementation (dev extra)")


def _timm(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(timm.create_model(name, **kwargs), torch.randn(2, kwargs.get("in_chans", 3), 64, 64))


@pytest.mark.parametrize("name,suffix", [("mixnet_m", ".pth"), ("tf_mixnet_s", ".safetensors")])
def test_round_trip_timm_mixconv_timm(name, suffix, tmp_path):
    ref = _timm(name, num_classes=10).eval()
    tmp = tmp_path / f"download{suffix}"
    sd = ref.state_dict()
    torch.save(sd, tmp) if suffix == ".pth" else save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
    # timm's (torch.hub's) file naming, name-<sha256 prefix>, tells mixnet_s from tf_mixnet_s; the hash is checked
    src = tmp.rename(tmp_path / f"{name}-{file_sha256(tmp)[:8]}{suffix}")
    mid = tmp_path / "mixconv.safetensors"
    res = convert_checkpoint(src, mid)
    assert res.direction == "timm->mixconv" and res.model_name == name and res.num_classes == 10
    _, meta = read_checkpoint(mid)
    assert meta["model_name"] == name and meta["config"].lstrip().startswith(("model", "backbone"))
    # The mixconv checkpoint alone rebuilds the model, and it computes timm's function.
    model = model_from_checkpoint(mid).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-4
    for out_suffix in (".pth", ".safetensors"):
        back = tmp_path / f"back{out_suffix}"
        assert convert_checkpoint(mid, back).direction == "mixconv->timm"
        back_sd = torch.load(back, weights_only=True) if out_suffix == ".pth" else load_file(back)
        fresh = timm.create_model(name, num_classes=10)
        fresh.load_state_dict(back_sd, strict=True)
        assert back_sd.keys() == sd.keys() and all(torch.equal(back_sd[k], sd[k]) for k in sd)


def test_infer_variant_from_shapes():
    assert infer_timm_variant(timm.create_model("mixnet_xl").state_dict()) == "mixnet_xl"  # no TF twin
    sd = timm.create_model("mixnet_s").state_dict()
    with pytest.raises(CheckpointError, match="mixnet_s, tf_mixnet_s.*--model"):
        infer_timm_variant(sd, "weights.pth")
    assert infer_timm_variant(sd, "tf_mixnet_s_ported.pth") == "tf_mixnet_s"
    del sd["conv_head.weight"]
    with pytest.raises(CheckpointError, match="match no registered MixNet"):
        infer_timm_variant(sd)


def test_cli_convert(tmp_path, capsys):
    ref = _timm("mixnet_s", in_chans=1, num_classes=4)
    src = tmp_path / "weights.pth"
    torch.save({"state_dict": ref.state_dict()}, src)  # nested, ambiguous name: --model decides
    mid = tmp_path / "m.safetensors"
    assert main(["convert", str(src), str(mid)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["convert", str(src), str(mid), "--model", "mixnet_s"]) == 0
    assert "timm->mixconv: mixnet_s (4 classes, 1 input channels" in capsys.readouterr().out
    assert main(["convert", str(mid), str(tmp_path / "t.pth")]) == 0
    fresh = timm.create_model("mixnet_s", in_chans=1, num_classes=4)
    fresh.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    assert main(["convert", str(mid), str(tmp_path / "t.txt")]) == 2
    assert "expected a .pth" in capsys.readouterr().err


def test_mobilenet_checkpoint_rebuilds_but_has_no_timm_form(tmp_path):
    from mixconv.files.weights import save_model_checkpoint

    model = mixconv.create_model("mobilenet_v1_mixconv", num_classes=3)
    path = save_model_checkpoint(model, tmp_path / "mb.safetensors")
    again = model_from_checkpoint(path)
    assert type(again) is type(model) and all(torch.equal(a, b) for a, b in
                                              zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="not a MixNet"):
        convert_checkpoint(path, tmp_path / "x.pth")
