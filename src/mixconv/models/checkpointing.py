"""Gradient checkpointing of a model's blocks that leaves BatchNorm's running statistics as without it."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _norm_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@contextlib.contextmanager
def _keep_norm_stats(module: nn.Module) -> Iterator[None]:
    """Restore the module's BatchNorm running statistics after the block is recomputed.

    Why: the backward recomputes the block's forward, and a BatchNorm in training mode would update its running
    statistics a second time with the same batch (timm's checkpointing does), so a checkpointed run would end
    with other statistics than a plain one.
    """
    saved = [b.clone() for b in _norm_buffers(module)] if module.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(_norm_buffers(module) if saved else [], saved):
                buf.copy_(value)


def checkpoint_blocks(blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The blocks in turn, keeping only each block's input for the backward, which recomputes its activations.

    Outputs and gradients equal the plain run's (dropout and drop-path replay the same random draws), and so do
    BatchNorm's running statistics. Without gradients (inference) the blocks simply run.
    """
    plain = not torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy)
    for block in blocks:
        if plain:
            x = block(x)
            continue
        x = checkpoint(block, x, use_reentrant=False,
                       context_fn=lambda b=block: (contextlib.nullcontext(), _keep_norm_stats(b)))
    return x
