"""What each speed optimization contributes: the same MixNet with them switched on one at a time, timed interleaved.

    python benchmarks/ablation.py --model mixnet_s --rounds 5

Training steps (SGD, fp32, the caller's NCHW input), cumulative from the plain model:
  plain           NCHW activations, split MixConvs, grouped 1x1 convs, BN on the conv output, in-place SiLU
  + NHWC          the trunk in channels_last (``MixNet.channels_last``)
  + merged        merged MixConvs (``MixConv2d.impl``, table ``layers/mixed_conv.py``)
  + dense 1x1     dense block-diagonal grouped 1x1 convs where measured faster (``layers/grouped_conv.py``)
  + BN from input BN of expanding 1x1 convs from the input's moments (``ConvNormAct.bn_from_input``)
  + SiLU          SiLU out of place under autograd (= mixconv's default model)
Inference (eval, fp32): the default model unoptimized; ``optimize_for_inference`` without micro-batches; with
them (the default). Prints img/s and the ratio to the first case of each mode.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from typing import Callable

import torch
import torch.nn.functional as F

import mixconv
from mixconv.bench.core import add_timing_args, time_interleaved
from mixconv.layers import ConvNormAct, MixConv2d
from mixconv.layers.activations import SiLU
from mixconv.layers.grouped_conv import GroupedConv1x1

STEPS = ("plain", "+ NHWC", "+ merged", "+ dense 1x1", "+ BN from input", "+ SiLU")


def _set(model: torch.nn.Module, step: int) -> torch.nn.Module:
    """The default model with the optimizations after ``STEPS[step]`` switched off."""
    model = copy.deepcopy(model)
    model.channels_last = step >= 1
    for name, m in list(model.named_modules()):
        if isinstance(m, MixConv2d) and step < 2:
            m.impl = "split"
        elif isinstance(m, GroupedConv1x1) and step < 3:
            m.impl = "grouped"
        elif isinstance(m, ConvNormAct) and step < 4:
            m.bn_from_input = False
        if step < 5:
            for child_name, child in m.named_children():
                if isinstance(child, SiLU):
                    setattr(m, child_name, torch.nn.SiLU(inplace=True))
    return model


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    return step


def _infer_step(model: torch.nn.Module, x: torch.Tensor):
    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mixnet_s")
    add_timing_args(p, rounds=5, threads=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    target = torch.randint(0, 1000, (args.batch_size,))
    base = mixconv.create_model(args.model)
    cases: dict[str, tuple[str, Callable[[], None]]] = {}
    for i, label in enumerate(STEPS):
        cases[label] = ("train", _train_step(_set(base, i).train(), x, target))
    eval_model = base.eval()
    no_micro = mixconv.optimize_for_inference(eval_model)
    no_micro.micro_stages = 0
    cases["default, unoptimized"] = ("infer", _infer_step(eval_model, x))
    cases["optimized, no micro-batches"] = ("infer", _infer_step(no_micro, x))
    cases["optimized"] = ("infer", _infer_step(mixconv.optimize_for_inference(eval_model), x))
    steps = [step for _, step in cases.values()]
    for step in steps:
        step()  # warm-up
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    times = dict(zip(cases, time_interleaved(steps, args.rounds, log=log)))
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {args.threads} threads, fp32, median of "
          f"{args.rounds} interleaved rounds")
    print("| mode | case | img/s | x first case |")
    print("| --- | --- | ---: | ---: |")
    first: dict[str, float] = {}
    for label, (mode, _) in cases.items():
        ips = args.batch_size / statistics.median(times[label])
        first.setdefault(mode, ips)
        print(f"| {mode} | {label} | {ips:.1f} | {ips / first[mode]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
