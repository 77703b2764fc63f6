"""The QAT target, end to end: a float model where post-training quantization (PTQ) loses more than 1
top-1 point, and quantization-aware fine-tuning (`mixconv train --qat`) that brings the int8 model back to
within 0.5 point of the float model.

    python benchmarks/qat.py                                   # every step (about 10 minutes on 2 cores)
    python benchmarks/qat.py --checkpoint runs/digits/last.safetensors      # from a `mixconv train` checkpoint
    python benchmarks/qat.py --float-checkpoint runs/x/last.safetensors     # from the 128 px float model

The construction (MixNet-S fine-tuned at a higher resolution), with the CLI equivalents:

1. ``mixconv train`` (the digits recipe: MixNet-S, 64 px, 20 epochs), or ``--checkpoint``;
2. fine-tuned at 128 px: ``mixconv train --pretrained CKPT --img-size 128 --epochs 2 --lr 5e-4
   --warmup-epochs 0``, or ``--float-checkpoint``: the float model;
3. PTQ: ``mixconv quantize --checkpoint FLOAT --activation-type int8 --reduce-range`` (symmetric int8
   activations; 7-bit weights, what the command advises on CPUs without VNNI/AMX); 256 calibration images
   (MinMax) from the training split, verified on the whole validation split (360 images);
4. QAT: ``mixconv train --qat --qat-activation int8 --qat-reduce-range --pretrained FLOAT --img-size 128
   --epochs 2 --lr 2e-4 --warmup-epochs 0``;
5. PTQ of the QAT checkpoint with the same settings;
6. the control (``--control``): the same fine-tune as step 4 without ``--qat``, then PTQ. Where it recovers as
   well, the recovery is the extra fine-tuning's, not QAT's (on digits the PTQ loss here is 4 images of 360).

Measured on this project's 2-core AVX-512/VNNI/AMX machine (noisy, shared): from a float model fine-tuned
this way from an epoch-10 digits checkpoint, PTQ lost 1.11 points (98.06 -> 96.94; 4 images) and QAT's int8
model scored 98.06; from the full 20-epoch checkpoint (the default run) PTQ lost only 0.56 points (99.17 ->
98.61), so the "> 1 point" construction does not reproduce reliably: on digits MixNet-S quantizes well under
every documented setting tried, and the fine-tune without QAT (the control) recovered as well as QAT did.

The reference for both targets is the FLOAT model's fp32 top-1 (the QAT model's own fp32 top-1 is printed too).
Checkpoints are the runs' last epochs (``last.safetensors``), never chosen on the validation set. Every step
uses the API the CLI uses (``mixconv.train``, ``mixconv.deploy.quantize``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mixconv.deploy.quantize import (
    METHODS,
    QuantizeReport,
    QuantizeSettings,
    quantize_checkpoint,
)
from mixconv.kernels.capability import cpu_info

FINETUNE = {"img_size": 128, "epochs": 2, "lr": 5e-4, "warmup_epochs": 0.0}  # step 2
QAT = {"img_size": 128, "epochs": 2, "lr": 2e-4, "warmup_epochs": 0.0}  # step 4


def train(out: Path, **settings) -> Path:
    import mixconv

    t0 = time.perf_counter()
    mixconv.train("digits", output=str(out), log_interval=1000, **settings)
    print(f"  trained {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / "last.safetensors"


def ptq(checkpoint: Path, out: Path, settings: QuantizeSettings) -> QuantizeReport:
    t0 = time.perf_counter()
    # no timing, no sensitivity report (bounds off): the numbers are compared below
    report = quantize_checkpoint(checkpoint, out, settings=settings, speed_batches=(), max_drop=100.0,
                                 min_agreement=0.0)
    print(f"  quantized {checkpoint} in {time.perf_counter() - t0:.0f} s", flush=True)
    for line in report.lines():
        print("    " + line)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="step 1's 64 px digits checkpoint (default: train it)")
    p.add_argument("--float-checkpoint", help="step 2's 128 px float checkpoint (default: fine-tune it)")
    p.add_argument("--output", default="runs/qat-benchmark", help="folder for the runs and ONNX files (new)")
    p.add_argument("--qat-epochs", type=int, default=QAT["epochs"])
    p.add_argument("--qat-lr", type=float, default=QAT["lr"])
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--method", choices=METHODS, default="minmax")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="also fine-tune without QAT (step 6; default on)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    print(f"CPU: {cpu_info().describe()}; torch {torch.__version__}, {args.threads} threads", flush=True)
    settings = QuantizeSettings(method=args.method, calib_images=args.calib_images, activation_type="int8",
                                reduce_range=True)
    if args.float_checkpoint:
        ckpt = Path(args.float_checkpoint)
    else:
        base = Path(args.checkpoint) if args.checkpoint else train(out / "digits64")
        ckpt = train(out / "float128", pretrained=str(base), **FINETUNE)
    print(f"PTQ of the float model {ckpt}: {settings}", flush=True)
    ptq_report = ptq(ckpt, out / "float-int8.onnx", settings)
    print(f"QAT: {args.qat_epochs} epochs at lr {args.qat_lr}", flush=True)
    qat_ckpt = train(out / "qat", pretrained=str(ckpt), qat=True, qat_activation="int8", qat_reduce_range=True,
                     **{**QAT, "epochs": args.qat_epochs, "lr": args.qat_lr})
    print("PTQ of the QAT model (same settings)", flush=True)
    qat_report = ptq(qat_ckpt, out / "qat-int8.onnx", settings)
    control = None
    if args.control:
        print("control: the same fine-tune without QAT, then PTQ (same settings)", flush=True)
        control = ptq(train(out / "control", pretrained=str(ckpt), **{**QAT, "epochs": args.qat_epochs,
                                                                       "lr": args.qat_lr}),
                      out / "control-int8.onnx", settings)
    ref = ptq_report.fp32_top1
    ptq_drop, qat_drop = ref - ptq_report.int8_top1, ref - qat_report.int8_top1
    print(f"summary, top-1 on {ptq_report.images} digits validation images (reference: the float model's fp32):")
    print(f"  float model: fp32 {ref:.2f}, PTQ int8 {ptq_report.int8_top1:.2f} (agreement {ptq_report.agreement:.2f}%)")
    print(f"  QAT model:   fp32 {qat_report.fp32_top1:.2f}, int8 {qat_report.int8_top1:.2f} (agreement with its own "
          f"fp32 {qat_report.agreement:.2f}%)")
    if control is not None:
        print(f"  control (fine-tuned without QAT): fp32 {control.fp32_top1:.2f}, int8 {control.int8_top1:.2f} "
              f"(agreement {control.agreement:.2f}%; drop {ref - control.int8_top1:.2f} points)")
    print(f"  PTQ drop {ptq_drop:5.2f} points   target > 1.0    {'met' if ptq_drop > 1.0 else 'NOT met'}")
    print(f"  QAT drop {qat_drop:5.2f} points   target <= 0.5   {'met' if qat_drop <= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
