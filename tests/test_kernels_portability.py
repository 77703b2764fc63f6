"""Portable CPU paths: the fast training paths under autocast bf16/fp16 on any CPU (AVX2-only forced in a
subprocess), and honest low precision (a LowPrecisionWarning where the CPU has no native bf16/fp16)."""
from __future__ import annotations

import csv
import os
import platform
import re
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import rel_err
from test_models_speed_equivalence import _global_err, _loss_grads, _plain
from training_fixtures import REPO, image_folder, run_cli, tiny_model, tiny_settings  # noqa: F401

import mixconv
from mixconv.kernels import capability
from mixconv.inference.distributed import DistInfo
from mixconv.kernels.capability import LowPrecisionWarning
from mixconv.layers import MixConv2d
from mixconv.training.main import _warn_amp

LOW = [torch.bfloat16, torch.float16]
# oneDNN and ATen limited to AVX2: what an AVX2-only CPU (no avx512_bf16, no AMX) runs, on this x86-64 CPU.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", capability.FORCE_ENV: "avx2"}

# A tiny MixNet with every fast training path: merged MixConvs (stride 1 and 2), a dense grouped 1x1 conv,
# BatchNorm from the input's moments (expanding 1x1 convs) and squeeze-excite.
TINY_FAST_YAML = """\
backbone:
  name: mixnet
  params: {stem_channels: 8, num_features: 32, dropout_rate: 0.0}
  stage_params:
    - expansion_ratio: [3, 3]
      out_channels: [8, 16]
      num_blocks: [1, 1]
      kernel_sizes: [[3, 5], [3, 5, 7]]
      num_exp_groups: [2, 1]
      num_poi_groups: [2, 1]
      stride: [1, 2]
      act_type: [swish, swish]
      se_reduction_ratio: [~, 4]
"""


@pytest.fixture
def tiny_fast(tmp_path) -> str:
    path = tmp_path / "tiny_fast.yaml"
    path.write_text(TINY_FAST_YAML)
    return str(path)


def _mixconv_pair(padding: str, stride: int):
    torch.manual_seed(0)
    split = MixConv2d(12, (3, 5, 7), stride, padding=padding, impl="split").train()
    merged = MixConv2d(12, (3, 5, 7), stride, padding=padding, impl="merged").train()
    merged.load_state_dict(split.state_dict())
    return split, merged


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("padding,stride", [("symmetric", 1), ("same", 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("input_low", [False, True])
def test_autocast_merged_mixconv_equals_split(dtype, padding, stride, channels_last, input_low):
    """Under autocast the merged MixConv computes what the split one does (the same low-precision convs): same
    output dtype and values, input and weight gradients in their tensors' own dtypes."""
    split, merged = _mixconv_pair(padding, stride)
    x = torch.randn(2, 12, 11, 10)
    if input_low:  # a previous layer's autocast output
        x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for mod in (split, merged):
        xi = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y = mod(xi)
        (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append((y, xi.grad, [p.grad for p in mod.parameters()]))
    (y_ref, gx_ref, gw_ref), (y, gx, gw) = outs
    assert y.dtype == y_ref.dtype == dtype and gx.dtype == x.dtype
    assert rel_err(y.float(), y_ref.float()) <= 1e-2 and rel_err(gx.float(), gx_ref.float()) <= 1e-2
    for a, b in zip(gw, gw_ref):
        assert a.dtype == b.dtype == torch.float32 and rel_err(a, b) <= 2e-2


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_training_step_fast_paths_as_accurate_as_plain(tiny_fast, dtype):
    """A whole training step under autocast: every fast path runs, and the gradients are as close to float64
    as those of the plain model (split MixConvs, grouped convs, BN on the conv output) under the same autocast."""
    torch.manual_seed(0)
    model = mixconv.create_model(tiny_fast, num_classes=5).train()
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"MixConv2d", "GroupedConv1x1", "SqueezeExcite"} <= kinds
    assert any(getattr(m, "impl", None) == "merged" for m in model.modules())
    assert any(getattr(m, "bn_from_input", False) for m in model.modules())
    plain, ref64 = _plain(model), _plain(model).double()
    x = torch.randn(8, 3, 16, 16)
    target = torch.arange(8) % 5
    _, grads64 = _loss_grads(ref64, x.double(), target)
    errs = []
    for m in (model, plain):
        with torch.autocast("cpu", dtype=dtype):
            out, grads = _loss_grads(m, x, target)
        assert out.dtype == dtype and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads.values())
        errs.append(_global_err(grads, grads64))
    assert errs[1] < 0.2  # low precision, but a gradient
    assert errs[0] <= 2 * errs[1] + 1e-3, errs


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("impl", ["split", "merged"])
def test_emulated_autocast_runs_the_depthwise_convs_in_float32(monkeypatch, dtype, impl):
    """Without native support for the autocast dtype, MixConv computes in float32 and returns the autocast
    dtype (ATen's low-precision depthwise fallback loops over channels); with it, in the autocast dtype."""
    torch.manual_seed(0)
    mod = MixConv2d(12, (3, 5, 7), 2, padding="same", impl=impl).train()
    x = torch.randn(2, 12, 11, 10)
    with torch.no_grad():
        ref32 = mod(x)
    for force, expect_float32 in (("avx2", True), ("native", False)):
        monkeypatch.setenv(capability.FORCE_ENV, force)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y = mod(xi)
        assert y.dtype == dtype
        assert torch.equal(y, ref32.to(dtype)) == expect_float32
        y.float().sum().backward()
        assert xi.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in mod.parameters())
        mod.zero_grad()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the AVX2 limit is x86-64's")
@pytest.mark.parametrize("force", ["native", "avx2"])
def test_avx2_only_cpu_in_a_subprocess(force):
    """oneDNN and ATen limited to AVX2 (no native bf16) in a subprocess: the autocast tests above pass there,
    with the low-precision convs really emulated (forced "native": the merged MixConv's backward raised
    'expected scalar type BFloat16' there before) and with the float32 fallback (the capability's answer)."""
    env = {**os.environ, **AVX2_ENV, capability.FORCE_ENV: force,
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported())"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["AVX2", "False"], r.stdout + r.stderr
    tests = [f"{__file__}::test_autocast_merged_mixconv_equals_split",
             f"{__file__}::test_autocast_training_step_fast_paths_as_accurate_as_plain"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                       capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\b18 passed", r.stdout), r.stdout[-500:]


# --- honest low precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_optimize_for_inference_warns_without_native_support(tiny_fast, monkeypatch, dtype):
    model = mixconv.create_model(tiny_fast, num_classes=3)
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    with pytest.warns(LowPrecisionWarning, match="no native") as record:
        mixconv.optimize_for_inference(model, dtype=dtype)
    assert record[0].filename == __file__  # points at the caller's line
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowPrecisionWarning)
        mixconv.optimize_for_inference(model, dtype=dtype)
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowPrecisionWarning)
        mixconv.optimize_for_inference(model)  # float32: nothing to warn about


def test_emulated_precision_only_for_low_precision_on_cpu(monkeypatch):
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    assert "no native bfloat16" in capability.emulated_precision(torch.bfloat16)
    assert "no native float16" in capability.emulated_precision(torch.float16, "cpu")
    assert capability.emulated_precision(torch.float32) is None
    assert capability.emulated_precision(torch.bfloat16, "cuda") is None  # a GPU question, not this CPU's
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    assert capability.emulated_precision(torch.bfloat16) is None and capability.has_native_fp16()


def test_train_amp_warns_and_logs_without_native_bf16(tiny_model, image_folder, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    with pytest.warns(LowPrecisionWarning, match="--amp bf16: this CPU has no native bfloat16"):
        summary = mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), tmp_path / "bf16", epochs=1,
                                                      amp="bf16"))
    assert summary["final_top1"] is not None
    assert "warning: --amp bf16: this CPU has no native bfloat16" in capfd.readouterr().err
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowPrecisionWarning)
        _warn_amp("bf16", DistInfo())
        _warn_amp("fp16", DistInfo())
    assert "warning" not in capfd.readouterr().err


def test_validate_amp_warns_without_native_support(tiny_model, image_folder, tmp_path, monkeypatch):
    """``validate --amp`` says so where the autocast dtype is emulated, through the same check as train."""
    s = tiny_settings(tiny_model, str(image_folder), tmp_path / "run", epochs=1)
    ckpt = mixconv.train(None, **s)["best_checkpoint"]
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    with pytest.warns(LowPrecisionWarning, match="--amp bf16: this CPU has no native bfloat16"):
        assert mixconv.evaluate(ckpt, device="cpu", amp="bf16")["images"] > 0
    r = run_cli("validate", "--checkpoint", ckpt, "--amp", "fp16", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "--amp fp16: this CPU has no native float16" in r.stderr
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowPrecisionWarning)
        mixconv.evaluate(ckpt, device="cpu", amp="bf16")


def test_train_cli_fp16_on_cpu_runs_with_a_warning_line(tiny_model, image_folder, tmp_path, monkeypatch):
    """fp16 autocast (with a GradScaler) trains on a CPU too; without native fp16 the CLI says it is emulated."""
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    s = tiny_settings(tiny_model, str(image_folder), tmp_path / "fp16", epochs=1, amp="fp16")
    r = run_cli("train", *[a for k, v in s.items() if not isinstance(v, (tuple, list, bool))
                           for a in ("--" + k.replace("_", "-"), str(v))])
    assert r.returncode == 0, r.stderr
    assert "warning: --amp fp16: this CPU has no native float16" in r.stderr
    assert r.stderr.count("no native float16") == 1, r.stderr  # one line, not the line and a Python warning


def test_benchmark_header_and_rows_record_the_cpu(tiny_fast, tmp_path, monkeypatch, capsys):
    from mixconv.cli import main

    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    out = tmp_path / "r.csv"
    with warnings.catch_warnings():  # the CLI prints its note instead of a second, Python warning
        warnings.simplefilter("error", LowPrecisionWarning)
        assert main(["benchmark", "--model", tiny_fast, "--optimize", "--dtype", "bfloat16", "--batch-size", "1",
                     "--img-size", "32", "--rounds", "1", "--warmup", "0", "--results-file", str(out)]) == 0
    printed = capsys.readouterr().out
    describe = capability.cpu_info().describe()
    assert f"cpu: {describe}" in printed and "torch capability AVX2, native bf16 no" in describe
    assert "note: --dtype bfloat16: this CPU has no native bfloat16" in printed
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["cpu"] == describe for r in rows)
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    assert main(["benchmark", "--model", tiny_fast, "--batch-size", "1", "--img-size", "32", "--rounds", "1",
                 "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    assert "native bf16 yes" in printed and "note:" not in printed
