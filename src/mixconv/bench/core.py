"""The timing core of ``mixconv benchmark``: images/s of training steps and inference, optionally interleaved
with timm's same model.

Every configuration ("case") is built once, warmed up, then timed round-robin: round ``r`` times each case once,
so that a slower or busier moment of the machine hits every case alike; the median over the rounds is reported.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from mixconv.inference.engine import quiet_cpu_compile

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Case:
    """One configuration to time. ``source`` is ``mixconv`` or ``timm``; ``dtype`` other than float32 runs a
    mixconv model optimized with that dtype (``optimize``) or, otherwise, under an explicit ``torch.autocast``."""

    model: str
    source: str = "mixconv"
    mode: str = "infer"
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    optimize: bool = False
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.source, self.model, self.mode, self.dtype]
        parts += [flag for flag in ("channels_last", "compile", "optimize") if getattr(self, flag)]
        return " ".join(parts)


@dataclass
class Result:
    case: Case
    batch_size: int
    img_size: int
    times_s: list[float] = field(default_factory=list)
    peak_mem_mb: float | None = None
    macs_per_image: int | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def img_per_s(self) -> float:
        return self.batch_size / self.median_s

    def gflops(self) -> float | None:
        """Achieved GFLOP/s counting 2 FLOPs per MAC (a training step as 3x the forward MACs)."""
        if self.macs_per_image is None:
            return None
        factor = 3 if self.case.mode == "train" else 1
        return 2 * factor * self.macs_per_image * self.batch_size / self.median_s / 1e9


def import_timm():
    try:
        import timm  # noqa: PLC0415 - optional benchmark reference, never a runtime dependency
    except ImportError as e:
        raise SystemExit("mixconv benchmark: --compare timm needs timm installed (pip install timm)") from e
    return timm


def build_model(case: Case, device: torch.device, example: torch.Tensor) -> torch.nn.Module:
    """The model of ``case`` on ``device``, in train or eval mode, optimized/channels_last/compiled as asked."""
    if case.source == "timm":
        model = import_timm().create_model(case.model, pretrained=False)
    else:
        from mixconv.factory.create import create_model

        model = create_model(case.model)
    model = model.to(device).train(case.mode == "train")
    if case.optimize:
        if case.mode == "train" or case.source != "mixconv":
            raise ValueError("--optimize applies to mixconv inference only")
        from mixconv.surgery.optimize import optimize_for_inference

        model = optimize_for_inference(model, dtype=DTYPES[case.dtype], example_input=None)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if case.compile:
        # Inference weights are constants: inductor's freezing folds and pre-packs them (for timm too).
        quiet_cpu_compile(device)
        model = torch.compile(model, options={"freezing": True} if case.mode == "infer" else None)
    return model


def make_step(case: Case, model: torch.nn.Module, x: torch.Tensor, num_classes: int = 1000) -> Callable[[], None]:
    """A callable that runs one training step (SGD with momentum) or one inference batch."""
    dtype = DTYPES[case.dtype]
    autocast = dtype != torch.float32 and not case.optimize
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if case.mode == "train":
        target = torch.randint(0, num_classes, (x.shape[0],), device=x.device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=dtype, enabled=autocast):
                loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()

        return train_step

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=autocast):
            model(x)

    return infer_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere), so that a resident
    set measured next counts memory in use, not memory an earlier case freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_memory(step: Callable[[], None], device: torch.device, baseline: float | None = None) -> float | None:
    """Peak memory (MiB) of one step: CUDA's allocator peak, or on CPU the resident set sampled every 2 ms
    during the step, minus ``baseline`` (the resident set before the case was built: then the figure includes
    the weights and the buffers a compiled or optimized model keeps between calls, which a difference to the
    resident set just before the step misses: 0 MiB for a compiled model that reuses its buffers), else minus
    the resident set before the step."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    before = _rss_mb() if baseline is None else baseline
    if before is None:
        step()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb() or 0.0)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return peak[0] - before


def run_cases(
    cases: list[Case],
    *,
    batch_size: int = 32,
    img_size: int = 224,
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 5,
    count_macs: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[Result]:
    """Build every case, warm each up, then time ``rounds`` interleaved rounds; return the results in order."""
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    results, steps = [], []
    for case in cases:
        log(f"building {case.name}")
        release_free_memory()
        baseline = _rss_mb() if dev.type == "cpu" else None
        model = build_model(case, dev, x)
        step = make_step(case, model, x)
        for _ in range(warmup):  # the first calls compile / create oneDNN primitives
            step()
        _sync(dev)
        res = Result(case, batch_size, img_size)
        res.peak_mem_mb = measure_peak_memory(step, dev, baseline)
        if count_macs:
            res.macs_per_image = _macs(case.model, img_size)
        results.append(res)
        steps.append(step)
    for res, times in zip(results, time_interleaved(steps, rounds, sync=lambda: _sync(dev), log=log)):
        res.times_s.extend(times)
    return results


def time_interleaved(
    steps: Sequence[Callable[[], None]],
    rounds: int,
    *,
    sync: Callable[[], None] = lambda: None,
    log: Callable[[str], None] | None = None,
) -> list[list[float]]:
    """Seconds of each step in each of ``rounds`` rounds; round ``r`` runs every step once, in order, so that a
    slower or busier moment of the machine hits every step alike. Warm the steps up before."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(rounds):
        for step, t in zip(steps, times):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            t.append(time.perf_counter() - t0)
        if log is not None:
            log(f"round {r + 1}/{rounds} done")
    return times


_MACS_CACHE: dict[tuple[str, int], int] = {}


def _macs(model: str, img_size: int) -> int:
    """MACs per image of the mixconv model of that name (timm's same-named model has the same architecture)."""
    key = (model, img_size)
    if key not in _MACS_CACHE:
        from mixconv.factory.create import create_model
        from mixconv.models.profile import count_macs

        _MACS_CACHE[key] = count_macs(create_model(model), (3, img_size, img_size))
    return _MACS_CACHE[key]


def result_rows(results: list[Result], peak_gflops: float | None = None) -> list[dict]:
    """Flat rows (one per result) with the ratio to the timm case of the same model and mode, if any."""
    rows = []
    for res in results:
        ref = next(
            (r for r in results if r.case.source == "timm" and r.case.model == res.case.model
             and r.case.mode == res.case.mode and r.case.dtype == res.case.dtype
             and r.case.channels_last == res.case.channels_last and r.case.compile == res.case.compile),
            None,
        ) if res.case.source != "timm" else None
        gf = res.gflops()
        row = {
            "case": res.case.name, **{k: v for k, v in asdict(res.case).items() if k != "label"},
            "batch_size": res.batch_size, "img_size": res.img_size, "img_per_s": round(res.img_per_s, 2),
            "ms_per_batch": round(res.median_s * 1000, 1), "rounds": len(res.times_s),
            "peak_mem_mb": None if res.peak_mem_mb is None else round(res.peak_mem_mb, 1),
            "gflops": None if gf is None else round(gf, 1),
            "roofline_pct": None if gf is None or not peak_gflops else round(100 * gf / peak_gflops, 1),
            "vs_timm": None if ref is None else round(res.img_per_s / ref.img_per_s, 2),
        }
        rows.append(row)
    return rows


def write_results(rows: list[dict], path: Path) -> None:
    """Write rows as JSON (``.json``) or CSV (anything else), atomically."""
    from mixconv.files.atomic import atomic_write

    if path.suffix.lower() == ".json":
        data = (json.dumps(rows, indent=2) + "\n").encode()
    else:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def format_rows(rows: list[dict]) -> str:
    cols = ["case", "img_per_s", "ms_per_batch", "peak_mem_mb", "gflops", "roofline_pct", "vs_timm"]
    table = [cols] + [["-" if r[c] is None else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
                     for line in table)


def add_timing_args(p: argparse.ArgumentParser, *, rounds: int, threads: int | None = None) -> None:
    """The options every timing run shares (this command and the scripts in benchmarks/)."""
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=threads,
                   help="torch.set_num_threads" + ("" if threads else " (default: torch's)"))
    p.add_argument("--rounds", type=int, default=rounds, help="interleaved timed rounds (the median is reported)")
