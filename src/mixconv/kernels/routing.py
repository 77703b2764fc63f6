"""When a ``MixConv2d`` runs the Triton kernels (no Triton import here: layers consult this on every call)."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Iterator

import torch

_FORCE = {"cpu": False}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton is installed (it comes with the CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


@contextlib.contextmanager
def force_interpreter(enabled: bool = True) -> Iterator[None]:
    """Route ``impl="triton"`` MixConvs on CPU tensors to the kernels too (tests under ``TRITON_INTERPRET=1``)."""
    old = _FORCE["cpu"]
    _FORCE["cpu"] = enabled
    try:
        yield
    finally:
        _FORCE["cpu"] = old


def wants_triton(x: torch.Tensor) -> bool:
    """Whether a MixConv whose impl is ``triton`` runs the kernels on ``x``: CUDA tensors, or CPU tensors while
    :func:`force_interpreter` is on."""
    if x.is_cuda:
        return triton_available()
    return x.device.type == "cpu" and _FORCE["cpu"]


