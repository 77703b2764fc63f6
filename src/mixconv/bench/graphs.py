"""CUDA graphs for small-batch inference: a model's forward captured once per batch-size bucket and replayed.

At small batches a MixNet's GPU time is mostly kernel-launch overhead (a few hundred small kernels); replaying a
captured graph launches them all at once. A batch is padded up to the next captured bucket (1, 2, 4, ... up to
``max_batch``) and the output sliced back, so only a few graphs are kept.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def bucket(n: int, max_batch: int) -> int:
    """The smallest power of two >= ``n`` (``max_batch`` at most; larger batches are run in chunks)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    b = 1
    while b < n:
        b *= 2
    return min(b, max_batch)


class GraphedInference:
    """``model(x)`` in eval mode under ``torch.inference_mode`` (and autocast to ``dtype`` unless float32),
    replayed from CUDA graphs captured per batch bucket. The returned tensor is a fresh copy.

    ``capture=False`` runs the same bucketing and padding eagerly (for CPU tests and debugging).
    """

    def __init__(self, model: nn.Module, *, dtype: torch.dtype = torch.float32, max_batch: int = 256,
                 capture: bool = True, warmup: int = 3) -> None:
        self.model = model.eval()
        self.dtype, self.max_batch, self.capture, self.warmup = dtype, max_batch, capture, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, torch.Tensor, torch.Tensor]] = {}

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast(x.device):
            return self.model(x)

    def _entry(self, x: torch.Tensor, b: int) -> tuple[torch.cuda.CUDAGraph | None, torch.Tensor, torch.Tensor]:
        key = (b, *x.shape[1:], x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self.graphs:
            static_in = torch.zeros((b, *x.shape[1:]), dtype=x.dtype, device=x.device)
            if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
                static_in = static_in.contiguous(memory_format=torch.channels_last)
            if not self.capture:
                self.graphs[key] = (None, static_in, static_in)
            else:
                if x.device.type != "cuda":
                    raise ValueError(f"CUDA graphs need CUDA tensors, got {x.device}; pass capture=False")
                side = torch.cuda.Stream(x.device)
                side.wait_stream(torch.cuda.current_stream(x.device))
                with torch.cuda.stream(side):  # warm up (cudnn/triton autotuning, lazy init) outside the capture
                    for _ in range(self.warmup):
                        self._forward(static_in)
                torch.cuda.current_stream(x.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._forward(static_in)
                self.graphs[key] = (graph, static_in, static_out)
        return self.graphs[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._run_chunk(chunk) for chunk in x.split(self.max_batch)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        graph, static_in, static_out = self._entry(x, bucket(n, self.max_batch))
        static_in[:n].copy_(x)
        if n < static_in.shape[0]:
            static_in[n:].zero_()  # padding rows (BN is in eval mode: rows do not interact)
        if graph is None:
            static_out = self._forward(static_in)
        else:
            graph.replay()
        return static_out[:n].clone()

