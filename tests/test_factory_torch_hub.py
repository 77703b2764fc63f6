"""torch.hub: hubconf.py exposes every registered model, with local weights by path."""
from __future__ import annotations

import pytest
import torch
from helpers import REPO, load_repo_module

import mixconv


def test_hub_lists_every_registered_model():
    # torch.hub.list only reads GitHub repos; this is its rule on the module torch.hub.load imports.
    hub = load_repo_module("hubconf.py")
    entries = [f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_")]
    assert sorted(entries) == mixconv.list_models()


def test_hub_load_with_local_weights(tmp_path):
    torch.manual_seed(0)
    ref = mixconv.create_model("mixnet_s", num_classes=5).eval()
    path = mixconv.save_checkpoint(ref, tmp_path / "w.safetensors")
    model = torch.hub.load(str(REPO), "mixnet_s", source="local", pretrained=str(path), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    fresh = torch.hub.load(str(REPO), "mobilenet_v2_mixconv", source="local", num_classes=3)
    assert fresh(x).shape == (1, 3)
    with pytest.raises(ValueError, match="local checkpoint path"):
        torch.hub.load(str(REPO), "mixnet_s", source="local", pretrained=True)
