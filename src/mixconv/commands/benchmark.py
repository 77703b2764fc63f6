"""``mixconv benchmark``: the arguments; the timing is :mod:`mixconv.bench`."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from mixconv.bench.core import (
    DTYPES,
    Case,
    add_timing_args,
    format_rows,
    import_timm,
    result_rows,
    run_cases,
    write_results,
)
from mixconv.kernels.capability import cpu_info, emulated_precision


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="time training steps and inference (optionally against timm)")
    p.add_argument("--model", nargs="+", default=["mixnet_s"], help="registered names or YAML configs")
    add_timing_args(p, rounds=5)
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="with --optimize the inference dtype of the optimized model, else explicit autocast")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--optimize", action="store_true", help="mixconv.optimize_for_inference (the inference cases)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: our fp32 and int8 ONNX exports in ORT next to our PyTorch path (with "
                        "--compare timm: timm's ONNX export in ORT and timm eager too)")
    p.add_argument("--compare", choices=("timm",), help="also time timm's same-named model, interleaved")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, help="the device's peak GFLOP/s: report the %% of it reached")
    p.add_argument("--results-file", type=Path, help="write the results as .json or .csv")
    add_cuda_args(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "img_size", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"mixconv benchmark: --{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SystemExit("mixconv benchmark: --warmup must be >= 0")
    if args.optimize and args.mode == "train":
        raise SystemExit("mixconv benchmark: --optimize is for inference (--mode infer or both): the optimized model is eval-only")
    if args.compare == "timm":
        import_timm()


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.device.startswith("cuda"):  # CUDA events, roofline, eager and compiled, Triton kernels
        from mixconv.bench.cuda import run_cuda

        return run_cuda(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runtime == "onnxruntime":
        from mixconv.bench.runtime import run_from_args

        return run_from_args(args)
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    base = Case(model="", dtype=args.dtype, channels_last=args.channels_last, compile=args.compile)
    cases = []
    for model in args.model:
        for mode in modes:
            if args.compare == "timm" and Path(model).suffix.lower() in (".yaml", ".yml"):
                print(f"mixconv benchmark: {model} is a YAML config; timm has no such model to compare", file=sys.stderr)
            elif args.compare == "timm":
                cases.append(replace(base, model=model, source="timm", mode=mode))
            cases.append(replace(base, model=model, mode=mode, optimize=args.optimize and mode == "infer"))
    results = run_cases(cases, batch_size=args.batch_size, img_size=args.img_size, device=args.device,
                        warmup=args.warmup, rounds=args.rounds)
    rows = result_rows(results, args.peak_gflops)
    cpu = cpu_info().describe()
    for row in rows:  # every row says which CPU it was measured on
        row["cpu"] = cpu
    print(f"batch {args.batch_size}, {args.img_size}x{args.img_size}, {torch.get_num_threads()} threads, "
          f"device {args.device}, median of {args.rounds} interleaved rounds")
    print(f"cpu: {cpu}")
    emulated = emulated_precision(DTYPES[args.dtype], args.device)
    if emulated:
        print(f"note: --dtype {args.dtype}: {emulated}")
    print(format_rows(rows))
    if args.results_file:
        write_results(rows, args.results_file)
    return 0


def add_cuda_args(p: argparse.ArgumentParser) -> None:
    """Options that apply with ``--device cuda``."""
    g = p.add_argument_group("--device cuda")
    g.add_argument("--no-triton", action="store_true", help="skip the cases with mixconv's Triton kernels")
    g.add_argument("--eager-only", action="store_true", help="skip the torch.compile cases")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="also replay mixconv inference from CUDA graphs (for small batches)")
    g.add_argument("--iters", type=int, default=10, help="steps per timed round (CUDA events around them)")
    g.add_argument("--bytes-per-image", type=float, metavar="MB",
                   help="activation MB per image for the memory roofline (default: 28.7 for mixnet_s)")
