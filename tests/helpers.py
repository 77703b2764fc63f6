"""Shared test helpers."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

import mixconv

REPO = Path(__file__).resolve().parents[1]

# The MixNet variants (the registry also holds non-MixNet models such as the MixConv-MobileNets).
ALL_MODELS = mixconv.list_models("*mixnet*")


def randomize_bn(
    model: torch.nn.Module, x: torch.Tensor, seed: int = 0, scale: tuple[float, float] = (0.5, 1.5), perturb: bool = True
) -> torch.nn.Module:
    """Random BN affine parameters (weights uniform in ``scale``) and running statistics, calibrated on ``x`` so
    the network stays well conditioned (like a trained one), then, with ``perturb``, changed so the statistics
    are not the batch's own."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) * (scale[1] - scale[0]) + scale[0])
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
        if not perturb:
            continue
        bn.running_mean.add_(torch.randn(bn.num_features, generator=g) * 0.1 * bn.running_var.sqrt())
        bn.running_var.mul_(torch.rand(bn.num_features, generator=g) * 0.45 + 0.8)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def load_repo_module(relative_path: str) -> ModuleType:
    """Import a file of the repository that is not part of the package (hubconf.py, benchmarks/*.py)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
