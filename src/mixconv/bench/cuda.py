"""``mixconv benchmark --device cuda``: CUDA-event timing, peak memory and the percentage of the memory roofline,
eager and compiled, mixconv (with and without its Triton kernels) against timm, timed interleaved.

The memory roofline of a model is the images/s a device would reach if the model only had to move its
activation bytes once (``--bytes-per-image``; 28.7 MB per image for MixNet-S at 224 in bf16) at the device's copy
bandwidth, measured here with a device-to-device copy (read + write bytes).

Everything but the CUDA events also runs on CPU (``run_gpu_cases(..., device="cpu")``), which is how the tests
exercise it without a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from mixconv.bench.core import (
    DTYPES,
    Case,
    build_model,
    format_rows,
    import_timm,
    make_step,
    measure_peak_memory,
)

# MB per image, bf16, 224 px (MixNet-S); other models need --bytes-per-image.
BYTES_PER_IMAGE_MB = {"mixnet_s": 28.7}


@dataclass(frozen=True)
class GpuCase:
    """A benchmark ``Case`` plus how mixconv runs on the GPU: its Triton kernels (``triton``), BatchNorm and
    activation fused into them for inference (``fuse``), and CUDA-graph replay (``cuda_graphs``, inference)."""

    case: Case
    triton: bool = False
    fuse: bool = False
    cuda_graphs: bool = False

    @property
    def name(self) -> str:
        extra = [flag for flag in ("triton", "fuse", "cuda_graphs") if getattr(self, flag)]
        return " ".join([self.case.name, *extra])


@dataclass
class GpuResult:
    case: GpuCase
    batch_size: int
    times_ms: list[float] = field(default_factory=list)
    peak_mem_mb: float | None = None

    @property
    def img_per_s(self) -> float:
        return self.batch_size / (statistics.median(self.times_ms) / 1000)


def build_gpu_model(gc: GpuCase, device: torch.device, x: torch.Tensor) -> torch.nn.Module:
    """The case's model: mixconv's Triton impl and fusion applied before channels_last and compile."""
    case = gc.case
    model = build_model(replace(case, compile=False), device, x)
    if gc.triton or gc.fuse:
        if case.source != "mixconv":
            raise ValueError("--triton/--fuse apply to mixconv models")
        from mixconv.surgery.triton import use_triton

        use_triton(model)
        if gc.fuse:
            if case.mode == "train":
                raise ValueError("fusing BatchNorm into the kernels is for inference")
            from mixconv.surgery.fuse import fuse_mixconv_bn_act

            fuse_mixconv_bn_act(model)
    if case.compile:
        model = torch.compile(model, options={"freezing": True} if case.mode == "infer" else None)
    return model


def make_gpu_step(gc: GpuCase, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training step or inference batch (AMP when the dtype is not float32); with ``cuda_graphs`` the
    inference batch is captured once and replayed."""
    if gc.cuda_graphs:
        if gc.case.mode != "infer":
            raise ValueError("CUDA graphs are used for inference here")
        from mixconv.bench.graphs import GraphedInference

        xin = x.contiguous(memory_format=torch.channels_last) if gc.case.channels_last else x
        graphed = GraphedInference(model, dtype=DTYPES[gc.case.dtype], capture=x.is_cuda)  # eager on CPU (tests)
        return lambda: graphed(xin)
    return make_step(gc.case, model, x)


class Timer:
    """Milliseconds of ``iters`` calls: CUDA events on a GPU (no host sync inside), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, step: Callable[[], None], iters: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - t0) * 1000 / iters


def copy_bandwidth_gbs(device: torch.device, mbytes: int = 1024, iters: int = 10) -> float:
    """The device's memory bandwidth measured by a copy between two ``mbytes`` buffers, counting the bytes read
    and written (GB/s)."""
    n = mbytes * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = Timer(device)(lambda: dst.copy_(src), iters)
    return 2 * n / (ms / 1000) / 1e9


def roofline_pct(img_per_s: float, mb_per_image: float | None, bandwidth_gbs: float | None) -> float | None:
    """Images/s as a percentage of ``bandwidth / bytes per image``."""
    if not mb_per_image or not bandwidth_gbs:
        return None
    return 100.0 * img_per_s / (bandwidth_gbs * 1e9 / (mb_per_image * 1e6))


def run_gpu_cases(cases: Sequence[GpuCase], *, batch_size: int, img_size: int = 224, device: str = "cuda",
                  warmup: int = 3, rounds: int = 5, iters: int = 10,
                  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[GpuResult]:
    """Build and warm every case, then ``rounds`` interleaved rounds of ``iters`` steps each."""
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    timer = Timer(dev)
    results, steps = [], []
    for gc in cases:
        log(f"building {gc.name}")
        step = make_gpu_step(gc, build_gpu_model(gc, dev, x), x)
        for _ in range(warmup):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        res = GpuResult(gc, batch_size)
        res.peak_mem_mb = measure_peak_memory(step, dev)
        results.append(res)
        steps.append(step)
    for r in range(rounds):
        for res, step in zip(results, steps):
            res.times_ms.append(timer(step, iters))
        log(f"round {r + 1}/{rounds} done")
    return results


def gpu_rows(results: Sequence[GpuResult], mb_per_image: float | None, bandwidth_gbs: float | None) -> list[dict]:
    """One row per result: img/s, ms/batch, peak memory, % of the memory roofline (inference), ratio to the timm
    case of the same model, mode and compile setting."""
    rows = []
    for res in results:
        c = res.case.case
        ref = next((r for r in results if r.case.case.source == "timm" and r.case.case.model == c.model
                    and r.case.case.mode == c.mode and r.case.case.compile == c.compile), None)
        rows.append({
            "case": res.case.name, "img_per_s": round(res.img_per_s, 1),
            "ms_per_batch": round(statistics.median(res.times_ms), 2),
            "peak_mem_mb": None if res.peak_mem_mb is None else round(res.peak_mem_mb, 1),
            "roofline_pct": None if c.mode != "infer" else
            (None if (p := roofline_pct(res.img_per_s, mb_per_image, bandwidth_gbs)) is None else round(p, 1)),
            "vs_timm": None if ref is None or ref is res else round(res.img_per_s / ref.img_per_s, 2),
        })
    return rows


def default_cases(model: str, modes: Sequence[str], dtype: str, compare_timm: bool, compile_too: bool,
                  triton: bool, cuda_graphs: bool = False) -> list[GpuCase]:
    """timm and mixconv, channels_last, eager (and compiled); mixconv also with its Triton kernels (and, for
    inference, BatchNorm/activation fused into them, and with ``cuda_graphs`` replayed from a CUDA graph)."""
    out: list[GpuCase] = []
    for mode in modes:
        for compiled in (False, True) if compile_too else (False,):
            base = Case(model=model, mode=mode, dtype=dtype, channels_last=True, compile=compiled)
            if compare_timm:
                out.append(GpuCase(replace(base, source="timm")))
            out.append(GpuCase(base))
            if triton:
                out.append(GpuCase(base, triton=True))
                if mode == "infer":
                    out.append(GpuCase(base, triton=True, fuse=True))
            if cuda_graphs and mode == "infer":
                out.append(GpuCase(base, triton=triton, fuse=triton, cuda_graphs=True))
    return out


def run_cuda(args: argparse.Namespace) -> int:
    """``mixconv benchmark --device cuda ...``"""
    if not torch.cuda.is_available():
        print(f"mixconv benchmark: --device {args.device} but CUDA is not available (torch.cuda.is_available() "
              "is False); use --device cpu", file=sys.stderr)
        return 2
    if args.optimize:
        print("mixconv benchmark: --optimize is the CPU inference path; with --device cuda use the default cases "
              "(Triton kernels, fused BatchNorm, compile)", file=sys.stderr)
        return 2
    if args.compare == "timm":
        import_timm()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    dtype = "bfloat16" if args.dtype == "float32" else args.dtype  # AMP on GPUs unless a dtype is given
    cases = [c for m in args.model for c in default_cases(m, modes, dtype, args.compare == "timm",
                                                          not args.eager_only, not args.no_triton,
                                                          args.cuda_graphs)]
    results = run_gpu_cases(cases, batch_size=args.batch_size, img_size=args.img_size, device=args.device,
                            warmup=args.warmup, rounds=args.rounds, iters=args.iters)
    dev = torch.device(args.device)
    bw = copy_bandwidth_gbs(dev)
    mb = args.bytes_per_image or (BYTES_PER_IMAGE_MB.get(args.model[0]) if len(args.model) == 1 else None)
    rows = gpu_rows(results, mb, bw)
    print(f"{torch.cuda.get_device_name(dev)}, batch {args.batch_size}, {args.img_size}x{args.img_size}, "
          f"AMP {dtype}, channels_last, copy bandwidth {bw:.0f} GB/s, memory roofline at {mb} MB/image, "
          f"median of {args.rounds} interleaved rounds of {args.iters} steps (CUDA events)")
    print(format_gpu_rows(rows))
    if args.results_file:
        from mixconv.bench.core import write_results

        write_results(rows, args.results_file)
    return 0


def format_gpu_rows(rows: list[dict]) -> str:
    return format_rows([{**r, "gflops": None} for r in rows])
