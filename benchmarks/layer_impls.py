"""Per layer shape: which training implementation of a MixConv and of a grouped 1x1 conv is faster.

    python benchmarks/layer_impls.py --models mixnet_s mixnet_m mixnet_l --rounds 5

For every distinct multi-kernel MixConv (``split`` vs ``merged``) and grouped 1x1 conv (``grouped`` vs ``dense``)
of the models, at the benchmark's batch and image size, in NHWC as the model trains: forward + backward (input
and weight gradients) of each implementation, timed interleaved, median of the rounds. The static tables
``mixconv.layers.mixed_conv.DEFAULT_IMPL`` and ``mixconv.layers.grouped_conv.DEFAULT_IMPL`` record the choices
made from this script's output; the models never time anything themselves.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys

import torch

import mixconv
from mixconv.bench.core import add_timing_args, time_interleaved
from mixconv.layers import MixConv2d
from mixconv.layers.grouped_conv import GroupedConv1x1


def layer_shapes(models: list[str], img_size: int) -> dict[tuple, tuple[str, tuple[int, ...]]]:
    """Distinct (kind, config) -> (first model seen in, input shape per image) of every layer to compare."""
    found: dict[tuple, tuple[str, tuple[int, ...]]] = {}
    for name in models:
        model = mixconv.create_model(name).eval()
        hooks = []
        for m in model.modules():
            if isinstance(m, MixConv2d) and len(m.kernel_sizes) > 1:
                key = ("mixconv", m.kernel_sizes, m.stride, m.in_channels, m.padding)
            elif isinstance(m, GroupedConv1x1) and m.groups > 1:
                key = ("grouped1x1", m.in_channels, m.out_channels, m.groups)
            else:
                continue

            def record(_m, inp, _out, key=key, name=name) -> None:
                found.setdefault(key, (name, tuple(inp[0].shape[1:])))

            hooks.append(m.register_forward_hook(record))
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size))
        for h in hooks:
            h.remove()
    return found


def make_layers(key: tuple) -> dict[str, torch.nn.Module]:
    if key[0] == "mixconv":
        _, ks, stride, ch, padding = key
        return {impl: MixConv2d(ch, ks, stride, padding=padding, impl=impl) for impl in ("split", "merged")}
    _, cin, cout, g = key
    return {impl: GroupedConv1x1(cin, cout, g, impl=impl) for impl in ("grouped", "dense")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mixnet_s", "mixnet_m", "mixnet_l"])
    add_timing_args(p, rounds=5, threads=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch_size}, {args.img_size} px, {args.threads} threads, torch {torch.__version__}, "
          f"fp32 NHWC, forward + backward, median of {args.rounds} interleaved rounds (ms)")
    print("| layer | first in | input | impl A | ms | impl B | ms | faster |")
    print("| --- | --- | --- | --- | ---: | --- | ---: | --- |")
    for key, (model_name, shape) in layer_shapes(args.models, args.img_size).items():
        layers = make_layers(key)
        x = torch.randn(args.batch_size, *shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        for layer in layers.values():
            layer.train()
            layer.load_state_dict(next(iter(layers.values())).state_dict())
        with torch.no_grad():
            grad = torch.randn_like(next(iter(layers.values()))(x))

        def step(layer: torch.nn.Module) -> None:
            torch.autograd.grad(layer(x), (x, *layer.parameters()), grad)

        steps = [functools.partial(step, layer) for layer in layers.values()]
        for warm_up in steps:
            warm_up()
        times = time_interleaved(steps, args.rounds)
        (a, ta), (b, tb) = ((impl, 1e3 * statistics.median(v)) for impl, v in zip(layers, times))
        desc = " ".join(str(k) for k in key[1:] if not isinstance(k, str) or key[0] != "mixconv") or str(key)
        print(f"| {key[0]} {desc} | {model_name} | {shape} | {a} | {ta:.1f} | {b} | {tb:.1f} | {a if ta <= tb else b} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
