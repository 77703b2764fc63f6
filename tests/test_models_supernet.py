"""The search space as typed data and the weight-sharing supernet: sampled specs build, count and round-trip;
a subnet with the supernet's weights computes what the supernet's path computes."""
from __future__ import annotations

import random

import pytest
import torch

import mixconv
from mixconv.files.config import load_config, save_config
from mixconv.models.profile import count_params
from mixconv.models.space import PRESETS, LayerChoice, LayerSlot, SearchSpace, mixnet_s_choices
from mixconv.models.supernet import Supernet
from mixconv.models.variants import MIXNET_S

SPACES = ("tiny", "small", "mixnet-s")


@pytest.mark.parametrize("name", SPACES)
def test_samples_are_valid_specs_that_build_and_round_trip(name, tmp_path):
    space = PRESETS[name]
    rng = random.Random(0)
    supernet = Supernet(space, num_classes=10)
    for k in range(6):
        arch = space.sample(rng)
        spec = space.to_spec(arch)
        model = mixconv.create_model(spec, num_classes=10)
        # the parameter count of the built model equals the subnet's (the supernet's slices) and the YAML's
        assert count_params(model) == count_params(supernet.subnet(arch))
        path = save_config(spec, tmp_path / f"{k}.yaml")
        assert load_config(path) == spec
        assert count_params(mixconv.create_model(str(path), num_classes=10)) == count_params(model)
        kept = [c for c in arch if c.keep]
        assert sum(len(stage) for stage in spec.stages) == len(kept)
        for row, c in zip((r for stage in spec.stages for r in stage), kept):
            assert row.kernel_sizes == tuple(range(3, 2 * c.kernel_groups + 2, 2))
            assert row.act == c.act and (row.se_reduction is not None) == c.se and row.poi_groups == c.groups


def test_mixnet_s_choices_are_close_to_mixnet_s():
    """MixNet-S in the paper's space: same kernels, expansions and activations per block (the space ties the two
    1x1 convs' groups and fixes the SE ratio, which MixNet-S varies in two rows)."""
    spec = PRESETS["mixnet-s"].to_spec(mixnet_s_choices())
    ours = [r for s in spec.stages for r in s]
    ref = [r for s in MIXNET_S.stages for r in s for _ in range(r.num_blocks)]
    assert [(r.kernel_sizes, r.expansion, r.act, r.out_channels, r.stride) for r in ours] == \
        [(r.kernel_sizes, r.expansion, r.act, r.out_channels, r.stride) for r in ref]


@pytest.mark.parametrize("name", ("tiny", "small"))
def test_subnet_equals_supernet_path(name):
    """A candidate taking its weights from the supernet equals a standalone model built from its spec with those
    weights copied in (outputs within 1e-5), BatchNorm statistics included."""
    space = PRESETS[name]
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=12)
    x = torch.randn(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in supernet.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # so the copy matters
        n = bn.num_features
        bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
    supernet.eval()
    rng = random.Random(1)
    for arch in [space.largest()] + [space.sample(rng) for _ in range(8)]:
        sub = supernet.subnet(arch).eval()
        with torch.no_grad():
            ref, got = supernet(x, arch), sub(x)
        assert torch.allclose(ref, got, atol=1e-5, rtol=0), (arch, (ref - got).abs().max())


def test_supernet_trains_one_path_a_step_reproducibly():
    space = PRESETS["tiny"]
    a, b = Supernet(space, 5, path_seed=3), Supernet(space, 5, path_seed=3)
    paths_a = []
    for _ in range(4):
        paths_a.append(a.sample_path())
        a.train()(torch.randn(2, 3, 32, 32))
    assert int(a.path_step) == 4 and len(set(paths_a)) > 1
    assert [b.sample_path() for _ in range(1)] == paths_a[:1]
    b.path_step.fill_(2)  # a resumed run (the step is a saved buffer) replays the same paths
    assert b.sample_path() == paths_a[2]
    # only the sampled path's parameters get gradients
    net = Supernet(space, 5).train()
    arch = list(space.largest())
    arch[2] = LayerChoice(1, 3, "relu", False, 1, keep=False)
    net(torch.randn(2, 3, 32, 32), tuple(arch)).sum().backward()
    assert net.blocks[2].dw.weight.grad is None and net.blocks[1].dw.weight.grad is not None


def test_space_checks_choices():
    space = PRESETS["tiny"]
    bad = list(space.largest())
    bad[0] = LayerChoice(5, 1, "relu", False, 1)  # slot 0 offers 1 or 2 groups
    with pytest.raises(ValueError, match=r"layers\[0\]\.kernel_groups"):
        space.check(tuple(bad))
    with pytest.raises(ValueError, match="skippable"):
        SearchSpace(layers=(LayerSlot(16), LayerSlot(24, skippable=True)))
    with pytest.raises(ValueError, match="kernel_groups"):
        LayerSlot(16, kernel_groups=(1, 6))
