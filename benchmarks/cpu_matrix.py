"""The CPU comparison matrix: timm's MixNets against mixconv's, timed interleaved in one process.

    python benchmarks/cpu_matrix.py --models mixnet_s mixnet_m mixnet_l --rounds 3 --out benchmarks/results

Writes ``<out>/cpu_matrix.csv`` (one row per case: img/s, ms/batch, peak memory, ratios to timm as shipped and to
timm channels_last of the same model and mode) and ``<out>/cpu_matrix.png`` (a bar chart of img/s, needs
matplotlib: ``pip install -e ".[bench]"``). fp32 unless the case says bf16; no autocast anywhere.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from mixconv.bench.core import (
    Case,
    add_timing_args,
    result_rows,
    run_cases,
    write_results,
)

INFER_CASES = [
    ("timm", dict(source="timm")),
    ("timm channels_last", dict(source="timm", channels_last=True)),
    ("timm compiled", dict(source="timm", compile=True)),
    ("mixconv default", dict()),
    ("mixconv optimized", dict(optimize=True)),
    ("mixconv optimized+compiled", dict(optimize=True, compile=True)),
    ("mixconv optimized bf16", dict(optimize=True, dtype="bfloat16")),
    ("mixconv optimized bf16+compiled", dict(optimize=True, dtype="bfloat16", compile=True)),
]
TRAIN_CASES = [
    ("timm", dict(source="timm")),
    ("timm channels_last", dict(source="timm", channels_last=True)),
    ("mixconv default", dict()),
]


def build_cases(models: list[str], modes: list[str], skip_compile: bool, skip: list[str]) -> list[Case]:
    cases = []
    for model in models:
        for mode in modes:
            for label, kw in INFER_CASES if mode == "infer" else TRAIN_CASES:
                if (skip_compile and kw.get("compile")) or label in skip:
                    continue
                cases.append(Case(model=model, mode=mode, label=f"{model} {mode} {label}", **kw))
    return cases


def add_ratios(rows: list[dict]) -> None:
    """Ratios to timm as shipped and to timm channels_last of the same model and mode."""
    for row in rows:
        prefix = f"{row['model']} {row['mode']} "
        ref = {r["case"][len(prefix):]: r["img_per_s"] for r in rows if r["case"].startswith(prefix)}
        row["vs_timm"] = round(row["img_per_s"] / ref["timm"], 2) if "timm" in ref else None
        cl = ref.get("timm channels_last")
        row["vs_timm_channels_last"] = round(row["img_per_s"] / cl, 2) if cl else None


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    labels = [r["case"] for r in rows][::-1]
    values = [r["img_per_s"] for r in rows][::-1]
    colors = ["tab:gray" if " timm" in lab else "tab:blue" for lab in labels]
    ax.barh(labels, values, color=colors)
    for i, (v, r) in enumerate(zip(values, rows[::-1])):
        ax.text(v, i, f" {v:.1f}  (x{r['vs_timm']})", va="center", fontsize=8)
    ax.set_xlabel("images / s (median of interleaved rounds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mixnet_s", "mixnet_m", "mixnet_l"])
    p.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    add_timing_args(p, rounds=3, threads=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile cases")
    p.add_argument("--skip", nargs="*", default=[], help="case labels to leave out, e.g. 'timm compiled'")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = build_cases(args.models, args.modes, args.skip_compile, args.skip)
    results = run_cases(cases, batch_size=args.batch_size, img_size=args.img_size, warmup=args.warmup,
                        rounds=args.rounds)
    rows = result_rows(results)
    add_ratios(rows)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        machine = f"{cpu}, {args.threads} threads, torch {torch.__version__}"
    except (OSError, StopIteration):
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(rows, args.out / "cpu_matrix.csv")
    print(f"{machine}; batch {args.batch_size}, {args.img_size}px, median of {args.rounds} interleaved rounds")
    print("| case | img/s | ms/batch | vs timm | vs timm channels_last |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['case']} | {r['img_per_s']:.1f} | {r['ms_per_batch']:.0f} | {r['vs_timm']} | {r['vs_timm_channels_last']} |")
    try:
        plot(rows, args.out / "cpu_matrix.png", f"{machine}; batch {args.batch_size}, {args.img_size}px")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
