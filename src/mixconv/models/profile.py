"""Size of a model: parameters and multiply-accumulates (``torch.utils.flop_counter``)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image through ``model`` (convolutions and linear layers).

    ``FlopCounterMode`` counts 2 FLOPs per MAC; the count is of the architecture's logical operations.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
