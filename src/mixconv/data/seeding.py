"""Seeds derived from integers, so that randomness depends on *what* is drawn (epoch, sample, stream), not on
which process or data-loader worker draws it, nor on whether the run was stopped and resumed before."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (deterministic across processes, unlike ``hash`` of strings)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = ((x ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


@contextlib.contextmanager
def seeded(*parts: int) -> Iterator[None]:
    """Run the block under the CPU torch seed ``sample_seed(*parts)``; the caller's random state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(*parts))
        yield
