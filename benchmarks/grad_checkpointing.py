"""Activation memory that gradient checkpointing saves, for mixconv's MixNets and timm's (the reference).

    python benchmarks/grad_checkpointing.py                       # mixnet_s and mixnet_l, batch 32 at 224
    python benchmarks/grad_checkpointing.py --models mixnet_s --batch-size 16 --img-size 160

Each (implementation, model, checkpointing) runs in a fresh process: build the model, one warm-up training step,
then one measured step (fp32, train mode). Two numbers per run:

* held: resident memory right after the forward minus right before it: the activations kept for the backward
  (the children run with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor over 64 KB is its own mmap, returned to
  the system when freed, so resident memory follows the live tensors);
* peak: the process's peak resident memory during the measured step minus the resident memory before it.

Also the step time (checkpointing recomputes each block's forward in the backward). Ratios compare checkpointed
to plain within one implementation, and mixconv to timm at the same setting, all measured in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(impl: str, model_name: str, ckpt: bool, batch: int, size: int) -> dict:
    """One run, in this process (the parent starts a fresh process per run)."""
    import torch

    torch.manual_seed(0)
    if impl == "timm":
        import timm

        model = timm.create_model(model_name, num_classes=1000)
    else:
        import mixconv

        model = mixconv.create_model(model_name, num_classes=1000)
    model.train().set_grad_checkpointing(ckpt)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> tuple[float, float]:
        before = _rss_mb()
        loss = loss_fn(model(x), target)
        held = _rss_mb() - before
        loss.backward()
        model.zero_grad(set_to_none=True)
        return before, held

    step()  # warm-up: oneDNN primitives, gradient buffers
    start = time.perf_counter()
    before, held = step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"impl": impl, "model": model_name, "checkpointing": ckpt, "held_mb": round(held, 1),
            "peak_mb": round(peak, 1), "step_s": round(seconds, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mixnet_s", "mixnet_l"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--impls", nargs="+", default=["mixconv", "timm"], choices=["mixconv", "timm"])
    p.add_argument("--output", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--child", nargs=3, metavar=("IMPL", "MODEL", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, model, ckpt = args.child
        print(json.dumps(measure(impl, model, ckpt == "1", args.batch_size, args.img_size)))
        return
    rows = []
    for model in args.models:
        for impl in args.impls:
            for ckpt in (False, True):
                cmd = [sys.executable, __file__, "--child", impl, model, str(int(ckpt)),
                       "--batch-size", str(args.batch_size), "--img-size", str(args.img_size)]
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{impl:8s} {model:10s} ckpt={int(ckpt)}  held {r['held_mb']:8.1f} MB  peak "
                      f"{r['peak_mb']:8.1f} MB  step {r['step_s']:.2f} s", flush=True)
    print(f"\nbatch {args.batch_size} at {args.img_size} px, fp32, train mode")
    by = {(r["impl"], r["model"], r["checkpointing"]): r for r in rows}
    for model in args.models:
        for impl in args.impls:
            plain, ck = by[(impl, model, False)], by[(impl, model, True)]
            print(f"{impl:8s} {model:10s} checkpointed / plain: held {ck['held_mb'] / plain['held_mb']:.2f}  "
                  f"peak {ck['peak_mb'] / plain['peak_mb']:.2f}  step time {ck['step_s'] / plain['step_s']:.2f}")
        if {"mixconv", "timm"} <= set(args.impls):
            for ckpt in (False, True):
                a, b = by[("mixconv", model, ckpt)], by[("timm", model, ckpt)]
                print(f"mixconv / timm {model:10s} ckpt={int(ckpt)}: held {a['held_mb'] / b['held_mb']:.2f}  "
                      f"peak {a['peak_mb'] / b['peak_mb']:.2f}  step time {a['step_s'] / b['step_s']:.2f}")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
