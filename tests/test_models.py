"""Every registered model: sizes, forward/backward, export, features and the model contract."""
from __future__ import annotations

import pytest
import torch
from helpers import ALL_MODELS

import mixconv
from mixconv.models.builder import make_divisible, scale_repeats_timm

EXPECTED_PARAMS = {
    "mixnet_s": 4_134_606, "mixnet_m": 5_014_382, "mixnet_l": 7_329_252, "mixnet_xl": 11_896_768,
    "mixnet_xxl": 23_961_752, "tf_mixnet_s": 4_134_606, "tf_mixnet_m": 5_014_382, "tf_mixnet_l": 7_329_252,
}
EXPECTED_FEATURES = {"mixnet_s": [16, 24, 40, 120, 200], "mixnet_m": [24, 32, 40, 120, 200]}


def test_registry_lists_all_variants():
    assert sorted(EXPECTED_PARAMS) == ALL_MODELS
    assert mixconv.list_models("tf_*") == ["tf_mixnet_l", "tf_mixnet_m", "tf_mixnet_s"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_count(name):
    model = mixconv.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_every_param_gets_grad(name):
    torch.manual_seed(0)
    model = mixconv.create_model(name, num_classes=7)  # no drop-path: a dropped block gets no gradient
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only_shapes_and_strides(name):
    features = mixconv.create_model(name, features_only=True).eval()
    assert features.reductions() == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == features.channels()
    assert [(m.shape[2], m.shape[3]) for m in maps] == [(64 // r, 96 // r) for r in features.reductions()]
    if name in EXPECTED_FEATURES:
        assert features.channels() == EXPECTED_FEATURES[name]
    classifier = mixconv.create_model(name)
    assert [f["num_chs"] for f in classifier.feature_info] == features.channels()


def test_features_out_indices_and_classifier_weights():
    torch.manual_seed(0)
    classifier = mixconv.create_model("mixnet_s").eval()
    features = mixconv.create_model("mixnet_s", features_only=True, out_indices=(1, 3)).eval()
    assert features.channels() == [24, 120] and features.reductions() == [4, 16]
    assert len(features.stages) == 4  # stages after the last requested one are not built
    features.load_state_dict({k: v for k, v in classifier.state_dict().items() if k in features.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f1, f3 = features(x)
        trunk = classifier.stages[:4](classifier.stem(x))
    torch.testing.assert_close(f3, trunk)
    with pytest.raises(ValueError, match="out_indices"):
        mixconv.create_model("mixnet_s", features_only=True, out_indices=(5,))


def test_model_contract():
    torch.manual_seed(0)
    model = mixconv.create_model("mixnet_s").eval()
    assert model.num_features == 1536
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1536, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 1536)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        torch.testing.assert_close(model.classifier(pre), model(x))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 1536)


def test_in_chans_and_drop_rate_options():
    model = mixconv.create_model("mixnet_s", in_chans=1, num_classes=3, drop_rate=0.5)
    assert model.stem.conv.weight.shape[1] == 1 and model.drop.p == 0.5
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert mixconv.create_model("mixnet_s").drop.p == 0.2  # the variant's default


def test_drop_path_ramp():
    model = mixconv.create_model("mixnet_s", drop_path_rate=0.2)
    blocks = [b for stage in model.stages for b in stage]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    # Linear ramp from 0 over block index; blocks without a residual have none.
    for i, (b, r) in enumerate(zip(blocks, rates)):
        assert r == pytest.approx(0.2 * i / len(blocks)) if b.has_skip and i else r == 0.0


def test_metadata():
    meta = mixconv.get_model_def("mixnet_s").meta
    assert meta.input_size == (3, 224, 224) and meta.crop_pct == 0.875 and meta.interpolation == "bicubic"
    assert meta.top1 == 75.99 and meta.top5 == 92.79
    assert mixconv.get_model_def("mixnet_xxl").meta.top1 is None


def test_unknown_model_suggests_names():
    with pytest.raises(mixconv.UnknownModelError, match="did you mean mixnet_s"):
        mixconv.create_model("mixnet_ss")


def test_rounding_rules():
    assert make_divisible(16 * 1.3) == 24 and make_divisible(24 * 1.3) == 32 and make_divisible(200 * 1.3) == 264
    assert make_divisible(10) == 16  # the 10% rule: never round down by more than 10%
    assert scale_repeats_timm([1, 3], 1.2) == [1, 4] and scale_repeats_timm([1, 3], 1.3) == [1, 4]
    assert scale_repeats_timm([1, 2], 1.3) == [1, 3]


def test_spec_validation():
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        mixconv.BlockRow(kernel_sizes=(3,), out_channels=0)
    with pytest.raises(ValueError, match="unknown activation"):
        mixconv.BlockRow(kernel_sizes=(3,), out_channels=8, act="tanhh")
