"""MixConv2d and the other layers against direct reference computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mixconv import MixConv2d, split_channels
from mixconv.layers import (
    DropPath,
    SqueezeExcite,
    create_act,
    grouped_conv1x1,
    pad_same,
)


def reference_mixconv(x: torch.Tensor, m: MixConv2d) -> torch.Tensor:
    """Per-group F.conv2d with the same weights, written independently of the module's forward."""
    outs, start = [], 0
    for conv, c, k in zip(m.convs, m.split_sizes, m.kernel_sizes):
        xi = x[:, start:start + c]
        start += c
        d = m.dilation
        if m.padding == "same":
            # TF SAME: total = max((ceil(n/s)-1)*s + (k-1)*d + 1 - n, 0), extra pixel at bottom/right.
            h, w = xi.shape[-2:]
            ph = max((-(-h // m.stride) - 1) * m.stride + (k - 1) * d + 1 - h, 0)
            pw = max((-(-w // m.stride) - 1) * m.stride + (k - 1) * d + 1 - w, 0)
            xi = F.pad(xi, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            pad = 0
        else:
            pad = d * (k - 1) // 2
        outs.append(F.conv2d(xi, conv.weight, conv.bias, m.stride, pad, d, groups=c))
    return torch.cat(outs, 1)


def test_split_examples():
    assert split_channels(10, 3, "equal") == (4, 3, 3)
    assert split_channels(32, 4, "exponential") == (16, 8, 4, 4)
    assert split_channels(32, 1, "exponential") == (32,)
    assert split_channels(10, 3, "exponential") == (5, 2, 3)
    assert split_channels(4, 4, "exponential") == (1, 1, 1, 1)


@given(channels=st.integers(1, 300), groups=st.integers(1, 6), split=st.sampled_from(["equal", "exponential"]))
def test_split_properties(channels, groups, split):
    if groups > channels:
        with pytest.raises(ValueError, match="at most one group per channel"):
            split_channels(channels, groups, split)
        return
    sizes = split_channels(channels, groups, split)
    assert len(sizes) == groups and sum(sizes) == channels and min(sizes) >= 1
    if split == "equal":
        assert max(sizes) - min(sizes) <= channels % groups and sizes[0] == max(sizes)


@pytest.mark.parametrize("split", ["equal", "exponential"])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("size", [15, 16])
def test_mixconv_matches_reference(split, padding, stride, dilation, size):
    torch.manual_seed(0)
    m = MixConv2d(24, (3, 5, 7, 9), stride=stride, dilation=dilation, split=split, padding=padding, bias=True)
    x = torch.randn(2, 24, size, size, requires_grad=True)
    y = m(x)
    ref = reference_mixconv(x, m)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    # Gradients too: the same function, so the same input and weight gradients.
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, m.convs[-1].weight), g)
    rx, rw = torch.autograd.grad(ref, (x, m.convs[-1].weight), g)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)


def test_mixconv_output_size_and_attributes():
    m = MixConv2d(10, [3, 5, 7], stride=2)
    assert m.kernel_sizes == (3, 5, 7) and m.split_sizes == (4, 3, 3)
    assert [c.weight.shape[0] for c in m.convs] == [4, 3, 3]
    assert m(torch.randn(1, 10, 17, 17)).shape == (1, 10, 9, 9)
    same = MixConv2d(10, [3, 5, 7], stride=2, padding="same")
    assert same(torch.randn(1, 10, 16, 16)).shape == (1, 10, 8, 8)


def test_same_padding_is_asymmetric_at_stride_2():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    padded = pad_same(x, 3, 2, 1)
    # TF pads only bottom/right by one for an even input at stride 2.
    assert padded.shape == (1, 1, 5, 5)
    assert torch.equal(padded[..., :4, :4], x) and padded[..., 4, :].abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=2, kernel_sizes=(3, 5, 7)), "at most one group per channel"),
        (dict(channels=8, kernel_sizes=(3, 4)), "odd positive"),
        (dict(channels=8, kernel_sizes=(0,)), "odd positive"),
        (dict(channels=8, kernel_sizes=(-3,)), "odd positive"),
        (dict(channels=8, kernel_sizes=()), "at least one kernel"),
        (dict(channels=8, kernel_sizes=(3,), split="random"), "equal, exponential"),
        (dict(channels=8, kernel_sizes=(3,), padding="valid"), "symmetric, same"),
        (dict(channels=8, kernel_sizes=(3,), stride=0), "stride"),
        (dict(channels=0, kernel_sizes=(3,)), "positive int"),
    ],
)
def test_mixconv_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixConv2d(**kwargs)


def test_grouped_conv1x1_equals_per_group_convs():
    torch.manual_seed(0)
    conv = grouped_conv1x1(8, 12, groups=2)
    x = torch.randn(2, 8, 5, 5)
    w0, w1 = conv.weight.chunk(2, 0)
    ref = torch.cat([F.conv2d(x[:, :4], w0), F.conv2d(x[:, 4:], w1)], 1)
    torch.testing.assert_close(conv(x), ref)
    with pytest.raises(ValueError, match="divisible by groups"):
        grouped_conv1x1(9, 12, groups=2)


def test_squeeze_excite_reference():
    torch.manual_seed(0)
    se = SqueezeExcite(16, 4, act="swish")
    x = torch.randn(2, 16, 6, 6)
    s = x.mean((2, 3), keepdim=True)
    s = F.conv2d(F.silu(F.conv2d(s, se.conv_reduce.weight, se.conv_reduce.bias)), se.conv_expand.weight, se.conv_expand.bias)
    torch.testing.assert_close(se(x), x * torch.sigmoid(s))


@pytest.mark.parametrize("name,fn", [("relu", F.relu), ("swish", F.silu), ("silu", F.silu), ("hswish", F.hardswish),
                                     ("sigmoid", torch.sigmoid), ("gelu", F.gelu)])
def test_activations_by_name(name, fn):
    x = torch.randn(50)
    torch.testing.assert_close(create_act(name)(x.clone()), fn(x))


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        create_act("mish")


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    torch.manual_seed(0)
    dp = DropPath(0.25)
    x = torch.ones(20000, 1, 1, 1)
    y = dp(x)
    assert torch.isin(y, torch.tensor([0.0, 1 / 0.75])).all()
    assert abs(y.mean().item() - 1.0) < 0.03
    dp.eval()
    assert torch.equal(dp(x), x)
