"""The GPU targets, measured side by side with timm in one process (one H100 or H200; say which).

    python benchmarks/gpu_targets.py --out benchmarks/results            # the targets table (~5 min on an H100)
    python benchmarks/gpu_targets.py --layers --out benchmarks/results   # per-layer split/merged/triton timings

MixNet-S at 224, AMP bf16, channels_last, batch 256 (inference and training). Every case is built and warmed up,
then timed in interleaved rounds with CUDA events (``mixconv.bench.cuda``); the median is reported.
Targets: inference >= 2x timm eager, >= 1.3x timm compiled, >= 40% of the memory roofline (28.7 MB per image in
bf16 at the measured copy bandwidth); training >= 1.5x timm eager and >= 5,000 img/s. The mixconv variants show
what the Triton kernels, the fused BatchNorm/activation epilogue and torch.compile each contribute.

``--layers`` times forward + backward of every MixNet-S/M/L MixConv shape with the ``split``, ``merged`` and
``triton`` impls (bf16, NHWC, the model's batch): the entries ``CUDA_DEFAULT_IMPL`` should get. Writes
``<out>/gpu_targets.json`` / ``gpu_layers.json`` and prints the tables. Without CUDA it exits 2.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from mixconv.bench.core import Case
from mixconv.bench.cuda import (
    BYTES_PER_IMAGE_MB,
    GpuCase,
    Timer,
    copy_bandwidth_gbs,
    format_gpu_rows,
    gpu_rows,
    run_gpu_cases,
)

MODEL = "mixnet_s"


def _case(label: str, source: str, mode: str, compile_: bool, **variant: bool) -> tuple[str, GpuCase]:
    c = Case(MODEL, source=source, mode=mode, dtype="bfloat16", channels_last=True, compile=compile_, label=label)
    return label, GpuCase(c, **variant)


INFER = [
    _case("timm eager", "timm", "infer", False),
    _case("timm compiled", "timm", "infer", True),
    _case("mixconv eager", "mixconv", "infer", False),
    _case("mixconv eager+kernels", "mixconv", "infer", False, triton=True),
    _case("mixconv eager+kernels+epilogue", "mixconv", "infer", False, triton=True, fuse=True),
    _case("mixconv compiled", "mixconv", "infer", True),
    _case("mixconv compiled+kernels+epilogue", "mixconv", "infer", True, triton=True, fuse=True),
]
TRAIN = [
    _case("timm eager", "timm", "train", False),
    _case("timm compiled", "timm", "train", True),
    _case("mixconv eager", "mixconv", "train", False),
    _case("mixconv eager+kernels", "mixconv", "train", False, triton=True),
    _case("mixconv compiled", "mixconv", "train", True),
    _case("mixconv compiled+kernels", "mixconv", "train", True, triton=True),
]


def targets(rows: dict[str, dict[str, dict]]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, required, met) from the inference and training rows by case label."""
    inf, tr = rows["infer"], rows["train"]
    best_inf = max((r for k, r in inf.items() if k.startswith("mixconv")), key=lambda r: r["img_per_s"])
    best_tr = max((r for k, r in tr.items() if k.startswith("mixconv")), key=lambda r: r["img_per_s"])
    checks = [
        ("inference vs timm eager AMP channels_last", best_inf["img_per_s"] / inf["timm eager"]["img_per_s"], 2.0),
        ("inference vs timm compiled", best_inf["img_per_s"] / inf["timm compiled"]["img_per_s"], 1.3),
        ("inference % of memory roofline", best_inf["roofline_pct"] or 0.0, 40.0),
        ("training vs timm eager AMP channels_last", best_tr["img_per_s"] / tr["timm eager"]["img_per_s"], 1.5),
        ("training img/s", best_tr["img_per_s"], 5000.0),
    ]
    return [(name, round(v, 2), req, v >= req) for name, v, req in checks]


def contributions(rows: dict[str, dict]) -> dict[str, float]:
    """Speed-up of each step over the one before it (inference)."""
    r = {k: v["img_per_s"] for k, v in rows.items()}
    return {
        "kernels (eager+kernels / eager)": r["mixconv eager+kernels"] / r["mixconv eager"],
        "epilogue (eager+kernels+epilogue / eager+kernels)":
            r["mixconv eager+kernels+epilogue"] / r["mixconv eager+kernels"],
        "compile (compiled+kernels+epilogue / eager+kernels+epilogue)":
            r["mixconv compiled+kernels+epilogue"] / r["mixconv eager+kernels+epilogue"],
    }


def run_targets(args: argparse.Namespace) -> dict:
    bw = copy_bandwidth_gbs(torch.device("cuda"))
    mb = BYTES_PER_IMAGE_MB[MODEL]
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bandwidth_gbs": round(bw),
                 "batch_size": args.batch_size, "rows": {}}
    for mode, cases in (("infer", INFER), ("train", TRAIN)):
        results = run_gpu_cases([c for _, c in cases], batch_size=args.batch_size, device="cuda",
                                warmup=args.warmup, rounds=args.rounds, iters=args.iters)
        rows = gpu_rows(results, mb, bw)
        print(f"\n{mode}: {out['device']}, batch {args.batch_size}, AMP bf16, channels_last, copy bandwidth "
              f"{bw:.0f} GB/s, roofline at {mb} MB/image")
        print(format_gpu_rows(rows))
        out["rows"][mode] = {label: row for (label, _), row in zip(cases, rows)}
    out["targets"] = targets(out["rows"])
    out["contributions"] = {k: round(v, 2) for k, v in contributions(out["rows"]["infer"]).items()}
    print("\ntarget                                      measured  required  met")
    for name, v, req, met in out["targets"]:
        print(f"{name:<44}{v:>9}{req:>10}  {'yes' if met else 'NO'}")
    print("\ncontributions (inference):", out["contributions"])
    return out


def run_layers(args: argparse.Namespace) -> dict:
    """Forward + backward of every MixConv shape with each impl, bf16, interleaved rounds (ms, median)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from layer_impls import layer_shapes  # noqa: PLC0415 - the sibling script's shape finder

    from mixconv.layers import MixConv2d

    timer = Timer(torch.device("cuda"))
    table = {}
    shapes = layer_shapes(["mixnet_s", "mixnet_m", "mixnet_l"], 224)
    for key, (model, shape) in shapes.items():
        if key[0] != "mixconv":
            continue
        _, ks, stride, ch, padding = key
        x = torch.randn(args.batch_size, *shape, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        steps = {}
        for impl in ("split", "merged", "triton"):
            layer = MixConv2d(ch, ks, stride, padding=padding, impl=impl).cuda().train()

            def step(layer=layer) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = layer(x)
                y.backward(torch.ones_like(y))

            for _ in range(args.warmup):
                step()
            steps[impl] = step
        times = {impl: sorted(timer(s, args.iters) for _ in range(args.rounds))[args.rounds // 2]
                 for impl, s in steps.items()}
        best = min(times, key=times.get)
        table[str((ks, stride, ch))] = {"model": model, "hw": shape[1:], **{k: round(v, 3) for k, v in times.items()},
                                        "best": best}
        print(f"{str((ks, stride, ch)):<28} {model:<9} {shape[1]:>3}px  " +
              "  ".join(f"{k} {v:.3f}" for k, v in times.items()) + f"  -> {best}")
    return {"device": torch.cuda.get_device_name(), "batch_size": args.batch_size, "layers": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--layers", action="store_true", help="per-layer impl timings instead of the targets")
    p.add_argument("--out", type=Path, help="write gpu_targets.json (or gpu_layers.json) there")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_targets.py: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    result = run_layers(args) if args.layers else run_targets(args)
    result["python"] = platform.python_version()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / ("gpu_layers.json" if args.layers else "gpu_targets.json")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
