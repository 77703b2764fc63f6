"""mixify: MixConv as a drop-in for depthwise convs, preserving the function exactly; MixConv-MobileNets."""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_bn, rel_err
from torch import nn

import mixconv
from mixconv.surgery.mixify import mixconv_from_depthwise

torchvision = pytest.importorskip("torchvision")


def _depthwise(model: nn.Module) -> list[nn.Conv2d]:
    """Depthwise convs outside MixConv2d modules."""
    inner = {id(c) for m in model.modules() if isinstance(m, mixconv.MixConv2d) for c in m.convs}
    return [m for m in model.modules()
            if type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels > 1 and id(m) not in inner]


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
def test_mixify_preserves_torchvision_models(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    x = torch.randn(2, 3, 64, 64)
    randomize_bn(model, x)
    n_dw = len(_depthwise(model))
    kernels = sorted({m.kernel_size[0] for m in _depthwise(model)})
    with torch.no_grad():
        ref = model(x)
    mixconv.mixify(model, kernel_sizes=(3, 5, 7))
    mixes = [m for m in model.modules() if isinstance(m, mixconv.MixConv2d)]
    assert not _depthwise(model) and len(mixes) == n_dw
    if 5 in kernels:  # mobilenet_v3_large has 5x5 depthwise convs: 3/5/7 becomes 5/5/7
        assert any(m.kernel_sizes == (5, 5, 7) for m in mixes)
    assert all(m.kernel_sizes in ((3, 5, 7), (5, 5, 7)) for m in mixes)
    with torch.no_grad():
        out = model(x)
    err = rel_err(out, ref)
    print(f"{arch}: {n_dw} depthwise convs mixified, max relative error {err:.2e}")
    assert err <= 1e-5
    # Ready for fine-tuning: the new (zero) taps get gradients.
    model.train()
    model(x).sum().backward()
    assert all(c.weight.grad is not None for m in mixes for c in m.convs)


@pytest.mark.parametrize("stride,dilation,padding,bias", [(1, 1, 2, True), (2, 1, 2, False), (1, 2, 4, False),
                                                          (2, 1, 0, True), (1, 1, "same", False)])
@pytest.mark.parametrize("split", ["equal", "exponential"])
def test_mixconv_from_depthwise_exact(stride, dilation, padding, bias, split):
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 12, 5, stride, padding, dilation, groups=12, bias=bias)
    mix = mixconv_from_depthwise(conv, (3, 5, 7, 9), split)
    assert mix.kernel_sizes == (5, 5, 7, 9)
    x = torch.randn(2, 12, 17, 16)
    with torch.no_grad():
        assert rel_err(mix(x), conv(x)) <= 1e-6


def test_mixify_leaves_other_convs_and_mixconvs_alone():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1),                                  # dense
        nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"),  # not exactly representable
        nn.Conv2d(8, 8, 4, padding=1, groups=8),                        # even kernel
        mixconv.MixConv2d(8, (3, 5)),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),                        # converted
    )
    mixconv.mixify(model, (3, 5))
    assert [type(m).__name__ for m in model] == ["Conv2d", "Conv2d", "Conv2d", "MixConv2d", "MixConv2d"]
    assert all(type(c) is nn.Conv2d for c in model[3].convs)
    with pytest.raises(ValueError, match="odd"):
        mixconv.mixify(model, (3, 4))


def test_mixify_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = mixconv.mixify(model, (3, 5, 7, 9))(x)
    assert any(isinstance(m, mixconv.MixConv2d) for m in model.modules())
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name,ref_arch,params", [("mobilenet_v1_mixconv", None, 4_390_696),
                                                   ("mobilenet_v2_mixconv", "mobilenet_v2", 3_733_224)])
def test_mixconv_mobilenets(name, ref_arch, params):
    model = mixconv.create_model(name, num_classes=1000)
    n = sum(p.numel() for p in model.parameters())
    assert n == params
    mixes = [m for m in model.modules() if isinstance(m, mixconv.MixConv2d)]
    assert mixes and all(m.kernel_sizes == (3, 5, 7, 9) for m in mixes)
    if ref_arch:  # the same network as torchvision's, mixified with the paper's kernels
        ref = mixconv.mixify(getattr(torchvision.models, ref_arch)(weights=None), (3, 5, 7, 9))
        assert sum(p.numel() for p in ref.parameters()) == n
    small = mixconv.create_model(name, num_classes=5, in_chans=1)
    out = small(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 5)
    out.sum().backward()
    with pytest.raises(ValueError, match="drop_path_rate"):  # MixNet-only
        mixconv.create_model(name, drop_path_rate=0.1)


def test_info_lists_mobilenets(capsys):
    from mixconv.cli import main

    assert "mobilenet_v2_mixconv" in mixconv.list_models() and "mobilenet_v1_mixconv" in mixconv.list_models()
    assert main(["info", "--model", "mobilenet_v1_mixconv", "--format", "json"]) == 0
    assert '"params": 4390696' in capsys.readouterr().out
    assert main(["info", "--model", "mobilenet_v2_mixconv"]) == 0
    assert "3,733,224" in capsys.readouterr().out
