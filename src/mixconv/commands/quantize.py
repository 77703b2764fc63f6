"""``mixconv quantize``: a float32 ONNX file (or a checkpoint) to a verified int8 QDQ ONNX file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mixconv.deploy.groups import GROUPS
    from mixconv.deploy.quantize import (
        ACTIVATION_TYPES,
        MAX_DROP,
        METHODS,
        MIN_AGREEMENT,
    )

    groups = "; ".join(f"{k}: {v[1]}" for k, v in GROUPS.items())
    p = subparsers.add_parser(
        "quantize", help="int8 post-training quantization for onnxruntime, verified on real images",
        description="Static int8 quantization (QDQ, per-channel symmetric int8 weights) of a float32 ONNX file "
                    "from `mixconv export`, or of a checkpoint (exported first, optimized), calibrated on real "
                    "images and verified against the float model: top-1 of both, agreement, largest logit "
                    "difference, file sizes and int8/fp32 speed in onnxruntime. Exits 1 when the int8 top-1 "
                    "drops more than --max-drop points or agrees on fewer than --min-agreement percent of the "
                    "images, and then writes nothing at --output (it prints a per-layer sensitivity report instead).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", metavar="FILE", help="a float32 ONNX file written by `mixconv export`")
    src.add_argument("--checkpoint", metavar="FILE", help="a checkpoint: exported (optimized) to --fp32-output first")
    p.add_argument("--model", metavar="NAME|YAML", help="the architecture of a --checkpoint without a header")
    p.add_argument("--output", required=True, metavar="FILE", help="the int8 ONNX file to write")
    p.add_argument("--fp32-output", metavar="FILE", help="with --checkpoint: where to write the float32 export "
                   "(default: the output's name with .fp32.onnx)")
    p.add_argument("--data", metavar="digits|DIR", help="calibration/validation images: 'digits' or an ImageFolder "
                   "root with train/ and val/ (default: the data recorded in the model)")
    p.add_argument("--calib-images", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (default minmax)")
    p.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="uint8",
                   help="uint8 (asymmetric, default) or int8 (symmetric) activations")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                   help=f"keep these in float: groups ({groups}), module paths (stages.1.0) or ONNX node names")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: for CPUs without VNNI/AMX, where u8 x s8 products can saturate")
    p.add_argument("--val-images", type=int, help="verify on this many validation images (default: all)")
    p.add_argument("--max-drop", type=float, default=MAX_DROP, help=f"bound on the top-1 drop (default {MAX_DROP})")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help=f"bound on the top-1 agreement in percent (default {MIN_AGREEMENT})")
    p.add_argument("--speed-batches", type=int, nargs="*", default=[1, 32], metavar="N",
                   help="batch sizes to time int8 against fp32 at (default 1 32; none: no timing)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="write the int8 file only")
    p.set_defaults(func=run)


def _export_fp32(args: argparse.Namespace) -> Path:
    from mixconv.deploy.quantize import export_checkpoint, fp32_export_path

    out = fp32_export_path(args.output, args.fp32_output)
    check = export_checkpoint(args.checkpoint, out, args.model)
    print(f"exported {args.checkpoint} (optimized) to {out}; {check}")
    return out


def run(args: argparse.Namespace) -> int:
    from mixconv.deploy.quantize import QuantizeSettings, cpu_warning, quantize_onnx
    from mixconv.files.config import ConfigError

    if args.calib_images < 1 or (args.val_images is not None and args.val_images < 1):
        raise ConfigError("--calib-images and --val-images must be >= 1")
    if any(b < 1 for b in args.speed_batches):
        raise ConfigError(f"--speed-batches {args.speed_batches}: expected batch sizes >= 1")
    warning = cpu_warning()
    if warning:
        print(warning, file=sys.stderr)
    settings = QuantizeSettings(args.method, args.calib_images, args.activation_type, True, args.reduce_range,
                                tuple(args.exclude))
    fp32 = Path(args.onnx) if args.onnx else _export_fp32(args)
    report = quantize_onnx(fp32, args.output, data=args.data, settings=settings, verify=args.verify,
                           val_images=args.val_images, speed_batches=tuple(args.speed_batches),
                           max_drop=args.max_drop, min_agreement=args.min_agreement)
    excluded = f", {len(args.exclude)} exclusion(s): {' '.join(args.exclude)}" if args.exclude else ""
    how = (f"QDQ, per-channel int8 weights, {args.activation_type} activations, {args.method} calibration on "
           f"{args.calib_images} images{excluded}")
    if report is None:
        print(f"quantized {fp32} to {args.output} ({how}), not verified")
        return 0
    for line in report.lines():
        print(line)
    if report.written:
        print(f"quantized {fp32} to {args.output} ({how})")
        print(f"OK: within the bound (drop <= {args.max_drop} points, agreement >= {args.min_agreement}%)")
        return 0
    failed = []
    if report.drop > args.max_drop:
        failed.append(f"the top-1 drop {report.drop:.2f} points exceeds --max-drop {args.max_drop} (a larger "
                      f"--max-drop accepts it)")
    if report.agreement < args.min_agreement:
        failed.append(f"the top-1 agreement {report.agreement:.2f}% is below --min-agreement {args.min_agreement} "
                      f"(a smaller --min-agreement accepts it)")
    print(f"FAILED: {'; '.join(failed)}. Nothing was written to {args.output}.", file=sys.stderr)
    print("the tensors that lose the most (signal-to-quantization-noise ratio, dB; lower is worse):")
    for name, local, total in report.sensitivity:
        print(f"  {name:60s} own quantization {local:7.2f} dB, vs float model {total:7.2f} dB")
    print("keep the worst layers in float with --exclude (module paths or groups such as se, stem), try "
          "--method percentile|entropy or more --calib-images, or fine-tune with `mixconv train --qat`")
    return 1
