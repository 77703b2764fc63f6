"""Hash-checked weights: torch.hub-style file names, the tensors_sha256 of mixconv checkpoints, `mixconv verify`."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from test_files_damaged_inputs import _tiny_model, _tiny_onnx
from training_fixtures import run_cli

import mixconv
from mixconv.files.inputs import CheckpointError
from mixconv.files.integrity import (
    HASH_FIELD,
    file_sha256,
    hub_hash_prefix,
    tensors_sha256,
)
from mixconv.files.verify import verify_file
from mixconv.files.weights import read_checkpoint, save_checkpoint
from mixconv.training.state import load_state, save_state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("integrity")
    return tmp, _tiny_model(tmp)


def _flip(path: Path, offset: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    out.write_bytes(bytes(data))
    return out


def test_tensors_sha256_is_the_documented_digest():
    sd = {"b": torch.arange(3, dtype=torch.int64), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    h = hashlib.sha256()
    for name in ("a", "b"):
        t = sd[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        raw = t.view(torch.uint8) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
        h.update(raw.numpy().tobytes())
    assert tensors_sha256(sd) == h.hexdigest()
    assert tensors_sha256({"a": sd["a"], "b": sd["b"].t()}) == h.hexdigest()  # layout-independent
    assert tensors_sha256({"a": sd["a"].float(), "b": sd["b"]}) != h.hexdigest()  # dtype counts


def test_hub_hash_prefix_follows_torch_hub_names():
    assert hub_hash_prefix("mixnet_s-a907afbc.pth") == "a907afbc"
    assert hub_hash_prefix("tf_mixnet_l-6c92e0c8.pt") == "6c92e0c8"
    assert hub_hash_prefix("dir-0123abcd/w.pth") is None
    for name in ("mixnet_s.pth", "mixnet_s-a907afb.pth", "mixnet_s-a907afbz.pth", "x-a907afbc.safetensors",
                 "mixnet_s-A907AFBC.pth"):
        assert hub_hash_prefix(name) is None, name


def test_hub_named_timm_file_is_checked(tiny, tmp_path):
    tmp, model = tiny
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    digest = file_sha256(raw)
    named = shutil.copy(raw, tmp_path / f"tiny-{digest[:10]}.pth")
    assert read_checkpoint(named)[0].keys() == model.state_dict().keys()
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    bad = shutil.copy(raw, tmp_path / f"tiny-{wrong}.pth")
    with pytest.raises(CheckpointError, match=f"tiny-{wrong}.pth: corrupted: .*starting with {wrong}.*{digest}"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="corrupted"):
        mixconv.create_model(tmp / "tiny.yaml", num_classes=3, pretrained=bad)
    # a truncated download under its hub name is refused by its hash, before it is parsed
    cut = tmp_path / "cut"
    cut.mkdir()
    truncated = cut / Path(named).name
    truncated.write_bytes(Path(named).read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupted"):
        read_checkpoint(truncated)
    r = run_cli("convert", str(bad), str(tmp_path / "out.safetensors"))
    assert r.returncode == 2 and "corrupted" in r.stderr and "Traceback" not in r.stderr


def test_mixconv_checkpoint_records_and_checks_its_hash(tiny, tmp_path):
    _, model = tiny
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        recorded = f.metadata()[HASH_FIELD]
    assert recorded == tensors_sha256(model.state_dict())
    data_end = path.stat().st_size
    bad = _flip(path, data_end - 20, tmp_path / "bad.safetensors")  # a bit in the last tensor's data
    with pytest.raises(CheckpointError, match=f"bad.safetensors: corrupted: the header field {HASH_FIELD}"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="corrupted"):
        mixconv.model_from_checkpoint(bad)
    r = run_cli("validate", "--checkpoint", str(bad), "--data", "digits")
    assert r.returncode == 2 and "corrupted" in r.stderr and "bad.safetensors" in r.stderr


def test_checkpoints_without_the_hash_still_load(tiny, tmp_path):
    _, model = tiny
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    sd, meta = read_checkpoint(path)
    old_meta = {k: v for k, v in meta.items() if k != HASH_FIELD}
    old = tmp_path / "old.safetensors"
    save_file(sd, old, metadata=old_meta)  # as written before the field existed
    net = mixconv.model_from_checkpoint(old)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    report = verify_file(old)
    assert report.ok and not report.checks and report.status.startswith("OK (readable; no recorded hash")


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_flipped_bit_never_loads_as_different_weights(offset, bit, tiny, tmp_path_factory):
    """Anywhere in a mixconv checkpoint, one flipped bit is refused or leaves the tensors unchanged."""
    tmp, model = tiny
    path = tmp / "flip-source.safetensors"
    if not path.exists():
        save_checkpoint(model, path)
    data = bytearray(path.read_bytes())
    data[int(offset * len(data))] ^= 1 << bit
    out = tmp_path_factory.mktemp("flip") / "m.safetensors"
    out.write_bytes(bytes(data))
    try:
        sd, _ = read_checkpoint(out)
    except CheckpointError as e:
        assert "m.safetensors" in str(e)
        return
    ref = model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def _state(model: torch.nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {"epoch": 1, "best_top1": 1.0, "best_epoch": 1, "history": [], "model": model.state_dict(),
            "ema": None, "optimizer": opt.state_dict(), "scheduler": {}, "scaler": None, "rng": {}}


def test_training_state_records_and_checks_its_hash(tiny, tmp_path):
    _, model = tiny
    path = save_state(tmp_path / "last.state.pt", _state(model))
    state = load_state(path)
    assert state[HASH_FIELD] and torch.equal(state["model"]["stem.conv.weight"], model.state_dict()["stem.conv.weight"])
    # rewrite with one weight changed but the old hash: what a flipped bit in the data would do
    state["model"]["stem.conv.weight"] = state["model"]["stem.conv.weight"] + 1
    torch.save(state, tmp_path / "bad.state.pt")
    with pytest.raises(CheckpointError, match="bad.state.pt: corrupted"):
        load_state(tmp_path / "bad.state.pt")
    old = {k: v for k, v in load_state(path).items() if k != HASH_FIELD}
    torch.save(old, tmp_path / "old.state.pt")
    assert load_state(tmp_path / "old.state.pt")["epoch"] == 1  # states written before the hash: unchecked
    del old["optimizer"]
    torch.save(old, tmp_path / "partial.state.pt")
    with pytest.raises(CheckpointError, match="damaged training state: no optimizer"):
        load_state(tmp_path / "partial.state.pt")


def test_verify_command(tiny, tmp_path):
    _, model = tiny
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    hub = shutil.copy(raw, tmp_path / f"tiny-{file_sha256(raw)[:8]}.pth")
    state = save_state(tmp_path / "last.state.pt", _state(model))
    onnx_file = _tiny_onnx(tmp_path / "t.onnx")
    n = len(model.state_dict())
    r = run_cli("verify", str(ckpt), str(hub), str(raw), str(state), str(onnx_file))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("status:   OK") == 5 and "mixconv checkpoint (mixconv/1, safetensors)" in r.stdout
    assert f"tensors:  {n} (" in r.stdout and "mixconv training state" in r.stdout and "ONNX (opset 18" in r.stdout
    assert r.stdout.count("computed: ") == 3  # the checkpoint's header hash, the hub name, the state's hash
    bad = _flip(ckpt, ckpt.stat().st_size - 20, tmp_path / "bad.safetensors")
    r = run_cli("verify", str(bad), "--format", "json")
    assert r.returncode == 1
    (report,) = json.loads(r.stdout)
    assert report["status"] == "CORRUPTED" and report["tensors"] == n
    (check,) = report["checks"]
    assert check["recorded"] == tensors_sha256(model.state_dict()) and check["computed"] != check["recorded"]
    assert report["elements"] == sum(t.numel() for t in model.state_dict().values())
    wrong = shutil.copy(raw, tmp_path / "tiny-deadbeef0.pth")
    r = run_cli("verify", str(wrong))
    assert r.returncode == 1 and "status:   CORRUPTED" in r.stdout and "MISMATCH" in r.stdout
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    for unreadable in (tmp_path / "junk.onnx", tmp_path, tmp_path / "missing.pth"):
        r = run_cli("verify", str(unreadable))
        assert r.returncode == 2 and "mixconv verify: error:" in r.stderr and str(unreadable) in r.stderr
