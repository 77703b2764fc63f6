"""timm's model contract on every registered model, a model built from YAML and one found in a search space:
classifier and pooling, pretrained_cfg, intermediates, gradient checkpointing, parameter groups, features
models, torch.fx / torchvision feature extraction, torch.export and TorchScript."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import REPO
from torch import nn

import mixconv
from mixconv.models.param_groups import group_parameters, layer_decay_scales
from mixconv.models.space import PRESETS

YAML_MODEL = str(REPO / "src" / "mixconv" / "configs" / "mixnet_m.yaml")
SEARCHED = PRESETS["small"].to_spec(PRESETS["small"].sample(random.Random(3)))
MODELS = mixconv.list_models() + ["yaml", "searched"]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    source = {"yaml": YAML_MODEL, "searched": SEARCHED}.get(name, name)
    return mixconv.create_model(source, **kwargs)


def trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones make every eval-mode BN an identity)."""
    model.train()
    with torch.no_grad():
        model(X)
    return model.eval()


# -- classifier, pooling and pretrained_cfg --------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_classifier_pooling_and_cfg(name):
    model = trained_bn(build(name, num_classes=7))
    assert model.num_features > 0 and model.head_hidden_size == model.num_features
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    for key in ("input_size", "pool_size", "first_conv", "classifier", "mean", "std", "crop_pct", "interpolation"):
        assert key in cfg, key
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == cfg["input_size"][0]
    head = model.get_submodule(cfg["classifier"])
    assert isinstance(head, nn.Linear) and head.out_features == cfg["num_classes"] == 7
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    with torch.no_grad():
        feats = model.forward_features(X)
        pooled = {"avg": feats.mean((2, 3)), "max": feats.amax((2, 3))}
        pooled["avgmax"] = 0.5 * (pooled["avg"] + pooled["max"])
        pooled["catavgmax"] = torch.cat([pooled["avg"], pooled["max"]], 1)
        for pool, expected in pooled.items():
            model.reset_classifier(0, pool)
            out = model(X)
            assert out.shape == (2, model.head_hidden_size) and model.num_classes == 0
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        model.reset_classifier(5, "catavgmax")  # the classifier takes both poolings: 2 x num_features inputs
        assert model.head_hidden_size == 2 * model.num_features and model(X).shape == (2, 5)
        model.reset_classifier(0, "")
        assert torch.equal(model(X), feats)
        with pytest.raises(ValueError, match="num_classes=0"):  # None keeps the pooling (none): no classifier
            model.reset_classifier(3)
    with pytest.raises(ValueError, match=r"'mean'.*expected one of 'avg', 'max'"):
        model.reset_classifier(3, "mean")


@pytest.mark.parametrize("name", MODELS)
def test_unpooled_map_matches_pool_size(name):
    model = build(name, num_classes=0, global_pool="").eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        out = model(torch.randn(1, *cfg["input_size"]))
    assert out.shape == (1, model.num_features, *cfg["pool_size"])
    assert cfg["pool_size"] == (7, 7)


def test_global_pool_errors_name_the_value():
    with pytest.raises(ValueError, match="'avgpool'"):
        mixconv.create_model("mixnet_s", global_pool="avgpool")
    with pytest.raises(ValueError, match="num_classes=0"):
        mixconv.create_model("mixnet_s", global_pool="")
    with pytest.raises(ValueError, match="features_only"):
        mixconv.create_model("mixnet_s", features_only=True, global_pool="avg")


# -- intermediates -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_equal_stage_outputs(name):
    model = trained_bn(build(name, num_classes=0))
    features = build(name, features_only=True).eval()
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k in features.state_dict()})
    n = len(model.feature_info)
    with torch.no_grad():
        final, inter = model.forward_intermediates(X)
        assert torch.equal(final, model.forward_features(X))
        maps = features(X)  # the features model's own loop over the same stages
        assert len(inter) == len(maps) == n
        for a, b in zip(inter, maps):
            assert torch.equal(a, b)
        for info, m in zip(model.feature_info, inter):
            assert m.shape[1] == info["num_chs"] and m.shape[2] == -(-64 // info["reduction"])
        last_two = model.forward_intermediates(X, indices=2, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last_two, inter[-2:])] == [True, True]
        early = model.forward_intermediates(X, indices=[0, -n + 1], stop_early=True, intermediates_only=True)
        assert len(early) == 2 and torch.equal(early[1], inter[1])
    for bad in (n, -n - 1, 0):
        with pytest.raises(ValueError, match=f"{bad}"):
            model.forward_intermediates(X, indices=[bad] if bad else bad)
    with pytest.raises(ValueError, match="intermediates_only"):
        model.forward_intermediates(X, indices=[1], stop_early=True)
    with pytest.raises(ValueError, match="NHWC"):
        model.forward_intermediates(X, output_fmt="NHWC")
    kept = model.prune_intermediate_layers(indices=[1, 2])
    assert kept == [1, 2] and len(model.feature_info) == 3 and model.num_features == inter[2].shape[1]
    red = model.feature_info[-1]["reduction"]
    assert model.pretrained_cfg["pool_size"] == (-(-224 // red),) * 2  # the map forward now returns
    with torch.no_grad():
        assert torch.equal(model(X), inter[2])  # no head conv, no pooling, no classifier
        assert all(torch.equal(a, b) for a, b in zip(model.forward_intermediates(X, [1, 2])[1], inter[1:3]))


# -- gradient checkpointing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_keeps_outputs_gradients_and_bn_stats(name):
    kwargs = {"drop_path_rate": 0.2} if "mobilenet" not in name else {}
    plain = build(name, num_classes=5, drop_rate=0.3, **kwargs).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout and drop-path draws
        out = model(X)
        out.square().mean().backward()
        results.append(out)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=n)
    for (n, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), f"{n} differs: the recomputed forward updated BatchNorm statistics again"
    ckpt.set_grad_checkpointing(False)
    assert not ckpt.grad_checkpointing


# -- parameter groups --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_covers_every_parameter_once(name):
    model = build(name, num_classes=5)
    names = [n for n, _ in model.named_parameters()]
    fine, coarse = group_parameters(model), group_parameters(model, coarse=True)
    for groups in (fine, coarse):
        flat = [n for g in groups for n in g]
        assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
        assert all(n.startswith("stem.") for n in groups[0])  # input first
        assert groups[-1] == ["classifier.weight", "classifier.bias"]  # classifier last
    blocks = sum(len(s) for s in model.stage_modules())
    assert len(fine) == blocks + 2 and len(coarse) == len(model.feature_info) + 2  # + stem, + classifier
    if hasattr(model, "head") or "v2" in name:  # the head conv trains with the last block
        assert any(n.startswith(("head.", "features.17.")) for n in fine[-2])
    scales = layer_decay_scales(len(fine), 0.8)
    assert scales[0] == min(scales) and scales[-1] == 1.0


@pytest.mark.parametrize("name", ["mixnet_s", "mobilenet_v2_mixconv"])
def test_layer_decay_equals_timms_optimizer_factory(name):
    """timm's own layer decay (its train script's) reads group_matcher: the same scale for every parameter."""
    from timm.optim import create_optimizer_v2

    from mixconv.training.optim import param_groups

    model = mixconv.create_model(name, num_classes=10)
    theirs = {id(p): g["lr_scale"] for g in create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.75).param_groups
              for p in g["params"]}
    ours = {id(p): g["lr_scale"] for g in param_groups(model, 1e-4, 0.75) for p in g["params"]}
    assert ours.keys() == theirs.keys()
    assert all(ours[k] == pytest.approx(theirs[k]) for k in ours)


def test_layer_decay_param_groups_give_the_stem_the_smallest_rate():
    from mixconv.training.config import make_config
    from mixconv.training.optim import create_optimizer

    model = mixconv.create_model("mixnet_s", num_classes=10)
    cfg = make_config("digits", {"layer_decay": 0.8, "opt": "sgd"})
    opt = create_optimizer(model, cfg, 0.1)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(rate) == sum(1 for _ in model.parameters())
    stem, cls = rate[id(model.stem.conv.weight)], rate[id(model.classifier.weight)]
    assert cls == pytest.approx(0.1) and stem == min(rate.values()) < cls
    n = len(group_parameters(model))
    assert stem == pytest.approx(0.1 * 0.8 ** (n - 1))
    assert rate[id(model.stem.bn.weight)] == stem  # norms: same rate, no weight decay
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.stem.bn.weight)] == 0.0 and decay[id(model.stem.conv.weight)] == cfg.weight_decay
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            layer_decay_scales(5, bad)
        with pytest.raises(Exception, match=r"layer_decay.*\(0, 1\]"):
            make_config("digits", {"layer_decay": bad})


# -- features models ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_features_only_and_feature_info(name):
    classifier = build(name)
    info = classifier.feature_info
    n = len(info)
    assert info.channels() == [d["num_chs"] for d in info] and info.reduction() == [2, 4, 8, 16, 32][-n:]
    assert info.module_name() == [d["module"] for d in info]
    for d in info:
        assert isinstance(classifier.get_submodule(d["module"]), nn.Module)
    features = build(name, features_only=True, out_indices=(-3, -1), feature_cls="getter").eval()
    fi = features.feature_info
    assert fi.out_indices == (n - 3, n - 1) and len(fi) == n
    assert fi.channels() == features.channels() == [info.channels(n - 3), info.channels(n - 1)]
    assert fi.reduction() == features.reductions()
    assert fi.get_dicts(keys=["num_chs"]) == [{"num_chs": c} for c in fi.channels()]
    assert fi[0] == info[0] and fi.from_other((0,)).channels() == [info[0]["num_chs"]]
    with torch.no_grad():
        maps = features(X)
    assert [m.shape[1] for m in maps] == fi.channels()
    assert "classifier" not in features.pretrained_cfg
    with pytest.raises(ValueError, match="'dict'"):
        build(name, features_only=True, feature_cls="dict")
    with pytest.raises(ValueError, match="out_indices"):
        build(name, features_only=True, out_indices=(n,))


# -- graph capture -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_and_feature_extractor_match_eager(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = trained_bn(build(name, num_classes=10))
    with torch.no_grad():
        ref = model(X)
        traced = torch.fx.symbolic_trace(model)
        assert torch.equal(traced(X), ref)
        torch.testing.assert_close(torch.jit.script(traced)(X), ref, rtol=1e-5, atol=1e-5)  # FX, then TorchScript
        nodes = {info["module"]: f"stage{i}" for i, info in enumerate(model.feature_info)}
        nodes[list(nodes)[-1]] = "last"
        extractor = create_feature_extractor(model, return_nodes=nodes)
        out = extractor(X)
        _, inter = model.forward_intermediates(X)
    assert torch.equal(out["last"], inter[-1]) and torch.equal(out["stage0"], inter[0])
    model.train()  # training mode traces too (the reference computation of the fused training paths)
    train_graph = torch.fx.symbolic_trace(model)
    torch.manual_seed(2)
    eager = model(X)
    torch.manual_seed(2)
    torch.testing.assert_close(train_graph(X), eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_and_torchscript_match_eager(name):
    model = trained_bn(build(name, num_classes=10))
    with torch.no_grad():
        ref = model(X)
        exported = torch.export.export(model, (X,))
        torch.testing.assert_close(exported.module()(X), ref, rtol=1e-5, atol=1e-5)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(X), ref, rtol=1e-5, atol=1e-5)
        features = build(name, features_only=True).eval()
        scripted_features = torch.jit.script(features)
        for a, b in zip(scripted_features(X), features(X)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channels_and_reductions_of_features_models_keep_working():
    features = mixconv.create_model("mixnet_s", features_only=True, out_indices=(1, 3))
    assert features.channels() == [24, 120] and features.reductions() == [4, 16]
    v2 = mixconv.create_model("mobilenet_v2_mixconv", features_only=True)
    assert v2.channels() == [16, 24, 32, 96, 320] and v2.reductions() == [2, 4, 8, 16, 32]
    # a classifier's weights load into its features model (the names are the classifier's)
    clf = mixconv.create_model("mobilenet_v2_mixconv")
    missing = set(v2.state_dict()) - set(clf.state_dict())
    assert not missing


def test_global_pool_survives_checkpoints_and_hub_folders(tmp_path):
    import json

    from mixconv.convert.hub import save_pretrained
    from mixconv.factory.checkpoint import model_from_checkpoint, model_from_training_checkpoint
    from mixconv.files.inputs import CheckpointError

    model = trained_bn(mixconv.create_model("mixnet_s", num_classes=4, global_pool="max"))
    path = mixconv.save_checkpoint(model, tmp_path / "m.safetensors")
    hub = tmp_path / "hub"
    save_pretrained(model, hub)
    rebuilt = [model_from_checkpoint(path), model_from_training_checkpoint(path)[0],
               mixconv.create_model(str(hub), pretrained=True)]
    with torch.no_grad():
        ref = model(X)
        for other in rebuilt:
            assert other.global_pool.pool_type == "max"
            torch.testing.assert_close(other.eval()(X), ref)
    cfg = json.loads((hub / "config.json").read_text())
    assert cfg["model_args"]["global_pool"] == "max"
    cfg["model_args"]["global_pool"] = "mean"
    (hub / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model_args.global_pool' is 'mean'"):
        mixconv.create_model(str(hub))
