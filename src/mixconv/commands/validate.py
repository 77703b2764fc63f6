"""``mixconv validate``: top-1, top-5, loss and images/s of a checkpoint on validation data."""
from __future__ import annotations

import argparse
import json
from functools import partial


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="evaluate a checkpoint: top-1, top-5, loss, images/s",
        description="Evaluate a checkpoint. A mixconv training checkpoint needs nothing else (it knows its model, "
                    "classes, preprocessing and data); a timm checkpoint needs --model and --data.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="FILE|DIR",
                     help="a mixconv (.safetensors) or timm checkpoint, or a folder in timm's hub layout")
    src.add_argument("--onnx", metavar="FILE", help="an ONNX file (float32 or int8), run by onnxruntime on the CPU "
                                                    "with the preprocessing stored in it by `mixconv export`")
    p.add_argument("--model", metavar="NAME|YAML", help="the architecture (default: the checkpoint's own)")
    p.add_argument("--data", metavar="digits|DIR",
                   help="'digits' or an ImageFolder of val images (or a root with val/); default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--img-size", type=int, help="override the checkpoint's input size")
    p.add_argument("--crop-pct", type=float, help="override the checkpoint's crop fraction")
    p.add_argument("--interpolation", choices=("nearest", "bilinear", "bicubic"), help="override the resize filter")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--results-file", metavar="OUT.json|OUT.csv", help="also write the results here")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--report", metavar="DIR", help="also write a visual report here: confusion matrix, per-class "
                   "precision/recall/F1 CSV, most confident mistakes, index.html (needs matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.files.config import ConfigError
    from mixconv.inference.runner import evaluate, write_results

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: got {args.batch_size}; expected an int >= 1")
    if args.results_file and not args.results_file.endswith((".json", ".csv")):
        raise ConfigError(f"--results-file {args.results_file}: expected a .json or .csv file name")
    if args.report:  # one pass gives both the metrics and the report
        from mixconv.visual.report import report_from_checkpoint

        evaluate = partial(report_from_checkpoint, args.report)
    results = evaluate(args.checkpoint, model=args.model, data=args.data, batch_size=args.batch_size,
                       workers=args.workers, amp=args.amp, channels_last=args.channels_last, img_size=args.img_size,
                       crop_pct=args.crop_pct, interpolation=args.interpolation, device=args.device,
                       onnx=args.onnx)
    if args.results_file:
        write_results(args.results_file, results)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        print(f"loaded {results['loaded']}")
        print(f"top1 {results['top1']:.2f}  top5 {results['top5']:.2f}  loss {results['loss']:.4f}  "
              f"images/s {results['images_per_s']:.1f}  ({results['images']} images, "
              f"{results['skipped_images']} skipped)")
        if "report" in results:
            print(f"report: {results['report']}")
    return 0
