"""Recipes, settings validation, the optimizers and the learning-rate schedules."""
from __future__ import annotations

import math

import pytest
import torch

from mixconv.files.config import ConfigError
from mixconv.training.config import TrainConfig, load_recipe, make_config, recipe_names
from mixconv.training.optim import (
    RMSpropTF,
    create_optimizer,
    lr_factor,
    param_groups,
    scaled_lr,
)


def test_shipped_recipes_load():
    assert {"digits", "tf-mixnet", "mindcv-mixnet"} <= set(recipe_names())
    for name in recipe_names():
        assert isinstance(make_config(name), TrainConfig)


def test_tf_recipe_is_the_original():
    c = make_config("tf-mixnet")
    assert (c.opt, c.rmsprop_decay, c.momentum, c.opt_eps) == ("rmsproptf", 0.9, 0.9, 1e-3)
    assert (c.lr, c.lr_base_size, c.warmup_epochs, c.sched, c.decay_epochs, c.decay_rate) == (0.016, 256, 5, "step", 2.4, 0.97)
    assert (c.weight_decay, c.label_smoothing, c.ema_decay, c.bn_momentum) == (1e-5, 0.1, 0.9999, 0.01)
    assert (c.drop_rate, c.drop_path_rate, c.epochs) == (0.2, 0.2, 350)


def test_mindcv_recipe():
    c = make_config("mindcv-mixnet")
    assert (c.opt, c.momentum, c.lr, c.lr_base_size, c.sched, c.min_lr, c.warmup_epochs, c.epochs) == (
        "sgd", 0.9, 0.2, 1024, "cosine", 1e-5, 15, 600)
    assert (c.weight_decay, c.auto_augment, c.randaugment_magnitude, c.re_prob, c.mixup, c.label_smoothing) == (
        2e-5, "randaugment", 9, 0.25, 0.2, 0.1)


def test_digits_recipe_is_the_default():
    c = make_config("digits")
    assert (c.model, c.data, c.img_size, c.hflip) == ("mixnet_s", "digits", 64, 0.0)


def test_overrides_win_over_the_recipe():
    c = make_config("tf-mixnet", {"lr": 0.5, "epochs": 3})
    assert (c.lr, c.epochs, c.opt) == (0.5, 3, "rmsproptf")


@pytest.mark.parametrize("doc, match", [
    ("lr: fast\n", "lr: got 'fast'; expected float"),
    ("learning_rate: 0.1\n", "unknown setting 'learning_rate'"),
    ("opt: adam\n", "opt: got 'adam'; expected one of sgd, rmsproptf, adamw"),
    ("scale: [0.5]\n", "scale: got \\[0.5\\]; expected a list of 2 numbers"),
    ("- 1\n", "expected a mapping of training settings"),
    ("epochs: [1\n", "not valid YAML"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, doc, match):
    path = tmp_path / "r.yaml"
    path.write_text(doc)
    with pytest.raises(ConfigError, match=match) as e:
        make_config(str(path))
    assert "r.yaml" in str(e.value)


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="tf-mixnet"):
        load_recipe("no-such-recipe")


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert len(no_decay["params"]) == 4  # bn weight+bias, linear bias, (conv bias)


def test_rmsprop_tf_puts_epsilon_inside_the_sqrt():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    g1, g2 = torch.tensor([0.5, 0.1]), torch.tensor([-0.2, 0.3])
    sq, buf, ref = torch.ones(2), torch.zeros(2), p.detach().clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        sq = 0.9 * sq + 0.1 * g * g
        buf = 0.9 * buf + 0.1 * g / torch.sqrt(sq + 1e-3)
        ref = ref - buf
    torch.testing.assert_close(p.detach(), ref)
    # torch's RMSprop (eps outside the sqrt, zero-initialised average) takes a different step.
    q = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    torch_opt = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    for g in (g1, g2):
        q.grad = g.clone()
        torch_opt.step()
    assert not torch.allclose(q.detach(), ref)


def test_lr_scales_with_the_global_batch():
    c = make_config("tf-mixnet", {"batch_size": 128})
    assert math.isclose(scaled_lr(c, world_size=4), 0.016 * 512 / 256)


def test_warmup_then_cosine():
    c = make_config(None, {"epochs": 10, "warmup_epochs": 2, "warmup_lr_factor": 0.0, "min_lr": 0.0, "lr": 1.0,
                           "lr_base_size": 64, "sched": "cosine"})
    assert lr_factor(c, 0.0, 1.0) == 0.0
    assert math.isclose(lr_factor(c, 1.0, 1.0), 0.5)
    assert math.isclose(lr_factor(c, 2.0, 1.0), 1.0)
    assert math.isclose(lr_factor(c, 6.0, 1.0), 0.5)
    assert lr_factor(c, 10.0, 1.0) < 1e-9


def test_step_exponential_schedule():
    c = make_config("tf-mixnet")
    assert math.isclose(lr_factor(c, 5.0, 1.0), 1.0)
    assert math.isclose(lr_factor(c, 5.0 + 2.3, 1.0), 1.0)
    assert math.isclose(lr_factor(c, 5.0 + 2.4, 1.0), 0.97)
    assert math.isclose(lr_factor(c, 5.0 + 24.0, 1.0), 0.97 ** 10)


@pytest.mark.parametrize("opt", ["sgd", "rmsproptf", "adamw"])
def test_optimizers_step(opt):
    model = torch.nn.Linear(3, 2)
    c = make_config(None, {"opt": opt, "nesterov": True})
    o = create_optimizer(model, c, 0.1)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    o.step()
    assert not torch.equal(before, model.weight)
