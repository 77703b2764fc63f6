"""Checks of the Triton MixConv kernels against the reference MixConv2d and autograd.

Not collected by the plain test run (the name is not test_*.py): ``tests/test_kernels_triton.py`` runs this file
in a subprocess with ``TRITON_INTERPRET=1`` set before triton is imported (the kernels then run on CPU tensors),
and, on a machine with CUDA, once more on the GPU. By hand:
``TRITON_INTERPRET=1 python -m pytest -q tests/kernel_checks/kernel_cases.py``.

Errors are relative to the reference's largest magnitude: ``max|a - b| / max|b|``; the reference runs in
float64 on the same (rounded) inputs, so the numbers measure the kernels alone.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

from mixconv.kernels import (
    force_interpreter,
    ops,  # noqa: E402
)
from mixconv.kernels.triton_mixconv import interpreter_active  # noqa: E402
from mixconv.layers import ConvNormAct, MixConv2d  # noqa: E402
from mixconv.surgery.fuse import FusedMixConvBNAct, fuse_mixconv_bn_act  # noqa: E402
from mixconv.surgery.triton import use_triton  # noqa: E402

if interpreter_active():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("needs TRITON_INTERPRET=1 set before triton's first import, or CUDA "
                "(tests/test_kernels_triton.py runs this file so)", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
ERRORS: dict[str, float] = {}  # the largest error seen per dtype, printed at the end (-s)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.double()
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _check(name: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    err = rel_err(a, b)
    key = str(dtype).removeprefix("torch.")
    ERRORS[key] = max(ERRORS.get(key, 0.0), err)
    assert err <= TOL[dtype], f"{name}: relative error {err:.3g} > {TOL[dtype]} ({dtype})"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nlargest relative errors:", {k: f"{v:.2e}" for k, v in ERRORS.items()})


def _inputs(m: MixConv2d, n: int, size: tuple[int, int], dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m.in_channels, *size, generator=g).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    w = m.merged_weight().detach().to(dtype)
    return x, w


def _taps(m: MixConv2d) -> torch.Tensor:
    """1 on the merged kernel's taps that belong to a group's own kernel, 0 on the zero padding around it."""
    return torch.cat([nn.functional.pad(torch.ones_like(c.weight), [(m.max_kernel - c.weight.shape[-1]) // 2] * 4)
                      for c in m.convs]).double()


def _reference(m: MixConv2d, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor):
    """Output and (x, merged weight) gradients of the reference split MixConv in float64."""
    ref = MixConv2d(m.in_channels, m.kernel_sizes, m.stride, m.dilation, m.split, m.padding).double()
    start = 0
    with torch.no_grad():
        for conv, size in zip(ref.convs, m.split_sizes):
            k = conv.weight.shape[-1]
            p = (m.max_kernel - k) // 2
            conv.weight.copy_(w[start:start + size, :, p:p + k, p:p + k].double())
            start += size
    xr = x.detach().double().requires_grad_()
    out = ref.forward_split(xr)
    out.backward(grad.double())
    # The per-group gradients zero-padded like the op's merged-weight gradient.
    gw = torch.cat([nn.functional.pad(c.weight.grad, [(m.max_kernel - c.weight.shape[-1]) // 2] * 4)
                    for c in ref.convs])
    return out.detach(), xr.grad, gw


# Every kernel-size set MixNet-S/M/L use, both paddings, strides 1 and 2, dilation 2, odd sizes and channels.
CASES = [
    # kernel sizes, stride, dilation, padding, channels, batch, (H, W), split
    ((3,), 1, 1, "symmetric", 4, 1, (8, 8), "equal"),
    ((3, 5), 1, 1, "same", 7, 1, (9, 7), "equal"),
    ((3, 5, 7), 2, 1, "same", 8, 2, (9, 11), "equal"),
    ((3, 5, 7, 9), 2, 1, "symmetric", 9, 1, (10, 9), "equal"),
    ((3, 5, 7, 9, 11), 2, 1, "same", 10, 1, (11, 9), "equal"),
    ((3, 5, 7, 9), 1, 1, "same", 8, 1, (7, 7), "equal"),
    ((3, 5), 1, 2, "symmetric", 6, 1, (9, 9), "equal"),
    ((3, 5, 7), 2, 2, "same", 7, 1, (10, 11), "exponential"),
]


def _run_case(ks, stride, dil, padding, c, n, size, split, dtype, seed=0):
    m = MixConv2d(c, ks, stride, dil, split, padding)
    x, w = _inputs(m, n, size, dtype, seed)
    xd = x.to(DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    wd = w.to(DEVICE).requires_grad_()
    out, _ = ops.mixconv2d(xd, wd, None, None, list(ks), list(m.split_sizes), stride, dil, padding, "identity", False)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out.backward(grad.to(DEVICE))
    ref, gx, gw = _reference(m, x, w, grad)
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    tag = f"{ks} s{stride} d{dil} {padding}"
    _check(f"{tag} output", out.cpu(), ref, dtype)
    _check(f"{tag} grad x", xd.grad.cpu(), gx, dtype)
    _check(f"{tag} grad w", wd.grad.cpu(), gw, dtype)
    # The zero taps around a small group's kernel get no gradient.
    assert torch.all(wd.grad.cpu()[_taps(m) == 0] == 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-s{c[1]}-d{c[2]}-{c[3]}")
def test_fp32_matches_reference(case):
    _run_case(*case, torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.bfloat16, CASES[2]), (torch.float16, CASES[5])],
                         ids=["bfloat16", "float16"])
def test_half_precision_matches_reference(dtype, case):
    _run_case(*case, dtype)


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_epilogue_and_se_sums(act):
    """scale, bias and activation fused, plus the squeeze-excite sums; gradients of everything."""
    ks, c = (3, 5, 7), 6
    m = MixConv2d(c, ks, 1, 1, padding="same")
    x, w = _inputs(m, 2, (7, 9), torch.float32)
    g = torch.Generator().manual_seed(5)
    scale, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    leaves = [t.to(DEVICE).requires_grad_() for t in (x.contiguous(memory_format=torch.channels_last), w, scale, bias)]
    out, sums = ops.mixconv2d(*leaves, list(ks), list(m.split_sizes), 1, 1, "same", act, True)
    go = torch.randn(out.shape, generator=g)
    gs = torch.randn(sums.shape, generator=g)
    torch.autograd.backward([out, sums], [go.to(DEVICE), gs.to(DEVICE)])
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    ref = ops.reference(*ref_leaves, 1, 1, "same", act)
    torch.autograd.backward([ref, ref.sum((2, 3))], [go.double(), gs.double()])
    ref_leaves[1].grad *= _taps(m)  # the op computes the groups' own taps only
    _check(f"{act} output", out.cpu(), ref, torch.float32)
    _check(f"{act} sums", sums.cpu(), ref.sum((2, 3)), torch.float32)
    for name, a, b in zip(("x", "w", "scale", "bias"), leaves, ref_leaves):
        _check(f"{act} grad {name}", a.grad.cpu(), b.grad, torch.float32)


def _tiny_block(impl: str = "triton") -> nn.Module:
    torch.manual_seed(0)
    block = nn.Sequential(ConvNormAct(MixConv2d(6, (3, 5), 2, padding="same", impl=impl), "swish"),
                          ConvNormAct(MixConv2d(6, (3, 5, 7), 1, bias=True, impl=impl), "relu"))
    return block.to(DEVICE).to(memory_format=torch.channels_last)


def test_module_routes_to_kernels_and_matches():
    """MixConv2d(impl="triton") runs the op (train and eval) with the reference's outputs and parameter grads;
    outside force_interpreter a CPU tensor takes the merged/split path."""
    model = _tiny_block()
    ref = _tiny_block("split")
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 6, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with force_interpreter():
        for mode in (True, False):
            model.train(mode), ref.train(mode)
            out = model(x)
            _check(f"module train={mode}", out.detach().cpu(), ref(x).detach().cpu(), torch.float32)
        # Gradients with the BatchNorms in eval mode: a conv bias before a training-mode BatchNorm has a
        # gradient of zero up to rounding noise, nothing to compare.
        model(x).square().sum().backward()
        ref(x).square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            _check(f"module grad {name}", p.grad.cpu(), q.grad.cpu(), torch.float32)
    if DEVICE == "cpu":  # not forced: the kernels are never used on CPU tensors
        with torch.autograd.profiler.profile() as prof:
            model.eval()(x)
        assert not any("mixconv::mixconv2d" in e.name for e in prof.function_events)
    with force_interpreter(), torch.autograd.profiler.profile() as prof:
        model.eval()(x)
    assert sum("mixconv::mixconv2d" in e.name for e in prof.function_events) >= 2


def test_autocast_bf16_module():
    model = _tiny_block().eval()
    ref = _tiny_block("split").eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(1, 6, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with force_interpreter(), torch.autocast(DEVICE, dtype=torch.bfloat16), torch.no_grad():
        out = model(x)
        expected = ref(x)
    assert out.dtype == torch.bfloat16
    _check("autocast bf16 block", out.float().cpu(), expected.float().cpu(), torch.bfloat16)


def test_fused_bn_act_matches_unfused():
    model = _tiny_block().eval()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    x = torch.randn(1, 6, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = use_triton(model, False)(x)
        keys = list(model.state_dict())
        fused = fuse_mixconv_bn_act(use_triton(model))
        assert sum(isinstance(m, FusedMixConvBNAct) for m in fused.modules()) == 2
        assert list(fused.state_dict()) == keys
        with force_interpreter(), torch.autograd.profiler.profile() as prof:
            out = fused(x)
    names = [e.name for e in prof.function_events]
    assert sum("mixconv::mixconv2d" in n for n in names) == 2 and not any("batch_norm" in n for n in names)
    _check("fused conv-bn-act", out.cpu(), expected.cpu(), torch.float32)


def test_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration, AOT dispatch."""
    ks, c = (3, 5), 4
    m = MixConv2d(c, ks)
    x, w = _inputs(m, 1, (5, 6), torch.float32)
    x = x.to(DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = w.to(DEVICE).requires_grad_()
    scale = torch.rand(c, device=DEVICE, requires_grad=True)
    bias = torch.randn(c, device=DEVICE, requires_grad=True)
    op = torch.ops.mixconv.mixconv2d.default
    for args in ((x, w, None, None, list(ks), [2, 2], 1, 1, "symmetric", "identity", False),
                 (x, w, scale, bias, list(ks), [2, 2], 2, 1, "same", "silu", True)):
        torch.library.opcheck(op, args)


def test_compiled_model_has_no_graph_breaks():
    """torch.compile keeps the op in one graph (fake impl + registered autograd), forward and backward."""
    model = _tiny_block().train()
    x = torch.randn(2, 6, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with force_interpreter():
        explain = torch._dynamo.explain(model)(x)
        assert explain.graph_break_count == 0 and explain.graph_count == 1
        eager_out = model(x)
        eager_out.sum().backward()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        out.sum().backward()
    _check("compiled output", out.detach().cpu(), eager_out.detach().cpu(), torch.float32)
    for p, g in zip(model.parameters(), eager_grads):
        _check("compiled grad", p.grad.cpu(), g.cpu(), torch.float32)
