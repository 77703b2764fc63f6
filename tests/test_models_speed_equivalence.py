"""The fast training path equals the reference computation: merged MixConv vs split, NHWC vs NCHW, whole models."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import rel_err

import mixconv
from mixconv.layers import ConvNormAct, MixConv2d
from mixconv.layers.grouped_conv import DEFAULT_IMPL as GROUPED_DEFAULT
from mixconv.layers.grouped_conv import IMPLS as GROUPED_IMPLS
from mixconv.layers.grouped_conv import GroupedConv1x1
from mixconv.layers.mixed_conv import DEFAULT_IMPL, IMPLS

# Every multi-kernel MixConv shape of MixNet-S/M/L (kernel sizes, stride), plus an exponential split and dilation.
LAYER_CASES = [
    ((3, 5, 7), 2, "equal", 1),
    ((3, 5), 1, "equal", 1),
    ((3, 5, 7, 9), 1, "equal", 1),
    ((3, 5, 7, 9), 2, "equal", 1),
    ((3, 5, 7, 9, 11), 2, "equal", 1),
    ((3, 5, 7), 1, "exponential", 2),
]


def _pair(ks, stride, split, dilation, padding, channels=20):
    torch.manual_seed(0)
    split_mod = MixConv2d(channels, ks, stride, dilation, split, padding, impl="split")
    merged = MixConv2d(channels, ks, stride, dilation, split, padding, impl="merged")
    merged.load_state_dict(split_mod.state_dict())
    return split_mod, merged


def _grads(mod, x, gy):
    x = x.detach().clone().requires_grad_()
    y = mod(x)
    y.backward(gy)
    return y, x.grad, [p.grad for p in mod.parameters()]


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("ks,stride,split,dilation", LAYER_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_merged_mixconv_equals_split_outputs_and_gradients(ks, stride, split, dilation, padding, channels_last):
    split_mod, merged = _pair(ks, stride, split, dilation, padding)
    x = torch.randn(2, 20, 13, 14)  # odd and even sizes: TF SAME pads asymmetrically at stride 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        gy = torch.randn_like(split_mod(x))
    y_ref, gx_ref, gw_ref = _grads(split_mod, x, gy)
    y, gx, gw = _grads(merged, x, gy)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(gx, gx_ref) <= 1e-5
    assert len(gw) == len(gw_ref) == len(ks)
    for a, b in zip(gw, gw_ref):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-5


def test_merged_weight_is_zero_padded_per_group_and_differentiable():
    conv = MixConv2d(6, (3, 5, 7), impl="merged")
    w = conv.merged_weight()
    assert w.shape == (6, 1, 7, 7)
    assert torch.equal(w[0:2, :, 2:5, 2:5], conv.convs[0].weight)
    ring = w[0:2].detach().clone()
    ring[:, :, 2:5, 2:5] = 0
    assert not ring.any()  # zeros around the 3x3 kernel
    assert torch.equal(w[4:6], conv.convs[2].weight)
    w.sum().backward()
    assert all(p.grad is not None for p in conv.parameters())


def test_impl_table_and_choice():
    assert all(v in IMPLS for v in DEFAULT_IMPL.values())
    for (ks, stride, channels), impl in DEFAULT_IMPL.items():
        assert MixConv2d(channels, ks, stride).impl == impl
    assert MixConv2d(32, (3, 5)).impl == "merged"  # unlisted shapes
    with pytest.raises(ValueError, match="impl"):
        MixConv2d(32, (3, 5), impl="fast")
    assert all(v in GROUPED_IMPLS for v in GROUPED_DEFAULT.values())
    for (cin, cout, g), impl in GROUPED_DEFAULT.items():
        assert mixconv.grouped_conv1x1(cin, cout, g).impl == impl
    assert mixconv.grouped_conv1x1(480, 80, 2).impl == "grouped"
    with pytest.raises(ValueError, match="impl"):
        mixconv.grouped_conv1x1(16, 96, 2, impl="fast")
    model = mixconv.create_model("mixnet_s")
    impls = {(m.kernel_sizes, m.stride, m.in_channels): m.impl for m in model.modules() if isinstance(m, MixConv2d)}
    assert set(impls.values()) == {"merged"}
    # BN from the input's moments: exactly the expanding 1x1 convs (expand convs and the head conv).
    folded = {n for n, m in model.named_modules() if isinstance(m, ConvNormAct) and m.bn_from_input}
    assert folded == {n for n, m in model.named_modules() if isinstance(m, ConvNormAct) and
                      isinstance(m.conv, torch.nn.Conv2d) and m.conv.kernel_size == (1, 1) and m.conv.out_channels > m.conv.in_channels}
    assert "stages.1.0.expand" in folded and "head" in folded and "stages.1.0.project" not in folded


@pytest.mark.parametrize("groups,impl", [(1, "grouped"), (2, "grouped"), (2, "dense")])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_from_input_equals_conv_then_bn(groups, impl, channels_last, momentum):
    torch.manual_seed(0)
    conv = mixconv.grouped_conv1x1(8, 24, groups, impl=impl)
    fast = ConvNormAct(conv, "swish")
    fast.bn.momentum = momentum
    torch.nn.init.uniform_(fast.bn.weight, 0.5, 1.5)
    torch.nn.init.uniform_(fast.bn.bias, -0.5, 0.5)
    ref = copy.deepcopy(fast)
    ref.bn_from_input = False
    assert fast.bn_from_input
    # A non-centred input (mean 1, std 0.5): the moments identity must not lose the variance to cancellation.
    x = 1.0 + 0.5 * torch.randn(4, 8, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(4, 24, 9, 7)
    for _ in range(2):  # twice: running statistics and num_batches_tracked follow the reference
        ys = []
        for mod in (fast, ref):
            xi = x.detach().clone().requires_grad_()
            mod.zero_grad(set_to_none=True)
            y = mod(xi)
            y.backward(gy)
            ys.append((y, xi.grad, [p.grad for p in mod.parameters()]))
        (y, gx, gw), (y_ref, gx_ref, gw_ref) = ys
        assert rel_err(y, y_ref) <= 1e-5 and rel_err(gx, gx_ref) <= 1e-4
        for a, b in zip(gw, gw_ref):
            assert a.shape == b.shape and rel_err(a, b) <= 1e-4
        for (n, a), (_, b) in zip(fast.bn.named_buffers(), ref.bn.named_buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    fast.eval()  # eval mode: running statistics, the reference path
    with torch.no_grad():
        assert rel_err(fast(x), ref.eval()(x)) <= 1e-5


def test_bn_from_input_rule():
    assert not ConvNormAct(torch.nn.Conv2d(4, 8, 1, bias=True)).bn_from_input  # a bias would get no gradient
    assert not ConvNormAct(torch.nn.Conv2d(8, 4, 1, bias=False)).bn_from_input  # not expanding
    assert not ConvNormAct(torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)).bn_from_input  # not 1x1
    assert not ConvNormAct(torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)).bn_from_input


def test_bn_from_input_is_not_used_for_sync_batchnorm():
    block = ConvNormAct(torch.nn.Conv2d(4, 8, 1, bias=False), "relu")
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(block))
    assert sync[0].bn_from_input and type(sync[0].bn) is torch.nn.SyncBatchNorm
    called = []
    sync[0].forward_bn_from_input = lambda x: called.append(x)
    sync(torch.randn(2, 4, 3, 3))  # SyncBatchNorm's own path (without a process group: plain batch norm)
    assert not called


def _plain(model):
    """The plain implementation: every MixConv split, grouped convs grouped, BN on the conv output, NCHW."""
    plain = copy.deepcopy(model)
    plain.channels_last = False
    for m in plain.modules():
        if isinstance(m, MixConv2d):
            m.impl = "split"
        elif isinstance(m, GroupedConv1x1):
            m.impl = "grouped"
        elif isinstance(m, ConvNormAct):
            m.bn_from_input = False
    return plain


def _loss_grads(model, x, target):
    model.zero_grad(set_to_none=True)
    out = model(x)
    torch.nn.functional.cross_entropy(out, target).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def _global_err(grads, ref):
    num = sum(float((grads[n].double() - ref[n]).square().sum()) for n in ref)
    return (num / sum(float(ref[n].square().sum()) for n in ref)) ** 0.5


def test_default_model_equals_plain_and_gradients_as_accurate():
    torch.manual_seed(0)
    model = mixconv.create_model("mixnet_s", num_classes=10, drop_rate=0.0).train()
    plain, ref64 = _plain(model), _plain(model).double()
    x = torch.randn(4, 3, 64, 64)
    target = torch.tensor([1, 7, 3, 0])
    out, grads = _loss_grads(model, x, target)
    out_plain, grads_plain = _loss_grads(plain, x, target)
    out64, grads64 = _loss_grads(ref64, x.double(), target)
    assert rel_err(out, out_plain) <= 1e-4
    # Gradients are as close to float64 as the plain float32 model's: over all parameters (relative L2) ...
    e_fast, e_plain = _global_err(grads, grads64), _global_err(grads_plain, grads64)
    assert e_fast <= 2 * e_plain + 1e-7, (e_fast, e_plain)
    # ... and per tensor, relative to the tensor's size but at least 1e-3 of the largest gradient (a BN shift
    # followed by a training-mode BN has an exactly-zero true gradient: only rounding noise).
    floor = 1e-3 * max(float(g.abs().max()) for g in grads64.values())
    worse = []
    for n, g64 in grads64.items():
        scale = max(float(g64.abs().max()), floor)
        ef = float((grads[n].double() - g64).abs().max()) / scale
        ep = float((grads_plain[n].double() - g64).abs().max()) / scale
        if ef > 4 * ep + 1e-4:
            worse.append((n, ef, ep))
    assert not worse, f"gradients less accurate than the plain model's: {worse[:5]}"
    # BatchNorm running statistics follow the same path.
    for (n, b), (_, b_plain) in zip(model.named_buffers(), plain.named_buffers()):
        if b.is_floating_point():  # some running means are exactly 0 up to rounding: absolute slack
            torch.testing.assert_close(b, b_plain, rtol=1e-4, atol=1e-6, msg=n)


def test_channels_last_is_internal():
    model = mixconv.create_model("mixnet_s", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert x.is_contiguous()  # the caller's tensor is untouched
    assert feats.is_contiguous(memory_format=torch.channels_last)
