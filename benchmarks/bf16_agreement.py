"""Top-1 agreement of ``optimize_for_inference`` (float32 and bfloat16) with the float32 model on validation data.

    mixconv train                               # MixNet-S on the digits: writes runs/mixnet_s-digits
    python benchmarks/bf16_agreement.py runs/mixnet_s-digits/best.safetensors

Loads a mixconv training checkpoint, builds its own validation set (``--data`` to override), and runs the plain
float32 model, the optimized float32 model and the optimized bfloat16 model (float32 input, float32 logits) on
it. Prints each one's top-1 accuracy, the share of images whose top-1 class equals the float32 model's, and the
largest logit difference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import mixconv
from mixconv.data.datasets import build_dataset, collate_skip, eval_transform
from mixconv.inference.runner import load_model


@torch.inference_mode()
def logits_and_targets(model: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    outs, targets = [], []
    for images, target, _ in loader:
        if images is None:
            continue
        outs.append(model(images).float())
        targets.append(target)
    return torch.cat(outs), torch.cat(targets)


def agreement(model: torch.nn.Module, loader: DataLoader) -> dict[str, dict[str, float]]:
    """Top-1 of the model, of its optimized fp32 and bf16 versions, and their agreement with the model."""
    model = model.eval()
    ref, targets = logits_and_targets(model, loader)
    results = {"float32": {"top1": 100.0 * float((ref.argmax(1) == targets).float().mean()), "agreement": 100.0,
                           "max_logit_diff": 0.0}}
    for name, dtype in (("optimized float32", torch.float32), ("optimized bfloat16", torch.bfloat16)):
        out, _ = logits_and_targets(mixconv.optimize_for_inference(model, dtype=dtype), loader)
        results[name] = {
            "top1": 100.0 * float((out.argmax(1) == targets).float().mean()),
            "agreement": 100.0 * float((out.argmax(1) == ref.argmax(1)).float().mean()),
            "max_logit_diff": float((out - ref).abs().max()),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a mixconv training checkpoint (best.safetensors)")
    p.add_argument("--data", default=None, help="digits or an image folder (default: the checkpoint's own data)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-file", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    data = args.data or loaded.data
    if not data:
        raise SystemExit(f"{args.checkpoint}: the checkpoint names no data set; pass --data digits|DIR")
    ds = build_dataset(data, "val", eval_transform(loaded.preprocess), loaded.val_fraction)
    loader = DataLoader(ds, args.batch_size, shuffle=False, collate_fn=collate_skip)
    results = agreement(loaded.model, loader)
    print(f"{args.checkpoint} on {data} val ({len(ds)} images)")
    print("| model | top-1 % | top-1 agreement with float32 % | max logit diff |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['top1']:.2f} | {r['agreement']:.2f} | {r['max_logit_diff']:.3g} |")
    if args.results_file:
        args.results_file.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
