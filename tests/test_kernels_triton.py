"""The Triton MixConv kernels: ``tests/kernel_checks/kernel_cases.py`` run under Triton's interpreter on CPU (a
subprocess with ``TRITON_INTERPRET=1`` set before triton is imported; this process imported triton already),
and on CUDA where there is one; plus the CPU routing rules, which need no Triton."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO

from mixconv.kernels import force_interpreter, triton_available, wants_triton
from mixconv.layers import MixConv2d
from mixconv.layers.mixed_conv import CUDA_DEFAULT_IMPL
from mixconv.surgery.triton import use_triton

CASES = REPO / "tests" / "kernel_checks" / "kernel_cases.py"


def _run_cases(env: dict[str, str]) -> str:
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-s", "-p", "no:cacheprovider", str(CASES)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out, out[-3000:]  # every case ran
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"kernel cases: {time.perf_counter() - t0:.1f} s wall, "
          f"{cpu.ru_utime + cpu.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.1f} s CPU")
    print(out[out.find("largest relative errors"):].splitlines()[0] if "largest relative" in out else "")
    return out


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_kernels_under_interpreter():
    out = _run_cases({**os.environ, "TRITON_INTERPRET": "1"})
    assert "largest relative errors" in out


@pytest.mark.skipif(not (triton_available() and torch.cuda.is_available()), reason="needs CUDA and triton")
def test_kernels_on_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    _run_cases(env)


def test_cpu_never_routes_to_triton_unless_forced():
    x = torch.randn(1, 6, 8, 8)
    assert not wants_triton(x)
    with force_interpreter():
        assert wants_triton(x)
    assert not wants_triton(x)
    assert CUDA_DEFAULT_IMPL == {}  # nothing measured on a GPU yet: the kernels stay opt-in


@pytest.mark.parametrize("train", [True, False])
def test_triton_impl_on_cpu_falls_back_to_reference(train):
    """``impl="triton"`` on a CPU tensor computes what the table's impl does (and never imports triton's op)."""
    torch.manual_seed(0)
    m = MixConv2d(12, (3, 5, 7), 2, padding="same", impl="triton").train(train)
    ref = MixConv2d(12, (3, 5, 7), 2, padding="same", impl="split").train(train)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 12, 9, 9, requires_grad=True)
    out = m(x)
    torch.testing.assert_close(out, ref(x))
    out.sum().backward()
    assert x.grad is not None


def test_use_triton_toggles_every_mixconv():
    import mixconv

    model = mixconv.create_model("mixnet_s")
    convs = [m for m in model.modules() if isinstance(m, MixConv2d)]
    keys = list(model.state_dict())
    use_triton(model)
    assert convs and all(m.impl == "triton" for m in convs)
    use_triton(model, False)
    assert all(m.impl in ("merged", "split") for m in convs)
    assert list(model.state_dict()) == keys


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="triton"):
        MixConv2d(8, (3, 5), impl="cuda")
