"""``mixconv export``: a model (and its checkpoint) to ONNX, TorchScript or an ExportedProgram, verified."""
from __future__ import annotations

import argparse
import sys

from mixconv.deploy.export import (
    DEFAULT_OPSET,
    FORMATS,
    ONNX_EXPORTERS,
    ExportError,
    export_model,
    onnx_op_counts,
)


def _img_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x192 (HxW), got {text!r}")
    return parts[0], parts[1]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, TorchScript or a torch.export program, verified")
    p.add_argument("--model", help="registered name or YAML config (optional with a mixconv checkpoint, which "
                                   "describes its model; inferred from a timm MixNet checkpoint's shapes)")
    p.add_argument("--checkpoint", help="mixconv (.safetensors) or timm (.pth/.safetensors) weights; without it "
                                        "the weights are random")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (written atomically)")
    p.add_argument("--img-size", type=_img_size, help="export height/width: 224 or HxW (default: the model's)")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the example input (default 2)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="symbolic batch dimension (default on); height and width are always fixed")
    p.add_argument("--exporter", choices=ONNX_EXPORTERS, default="dynamo",
                   help="ONNX exporter: torch.export-based 'dynamo' (default) or the legacy 'torchscript'")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a model built without a checkpoint")
    p.add_argument("--optimize", action="store_true",
                   help="export the inference-optimized model (mixconv.optimize_for_inference)")
    p.add_argument("--ort-rewrites", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX: rewrite the graph for onnxruntime's CPU kernels, same outputs (default: on with "
                        "--optimize; mixconv.deploy.ort_graph)")
    p.add_argument("--tol", type=float, default=1e-4, help="largest relative error accepted by the check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.factory.checkpoint import model_from_checkpoint
    from mixconv.factory.create import create_model
    from mixconv.surgery.optimize import optimize_for_inference

    if args.ort_rewrites is not None and args.format != "onnx":
        print(f"mixconv export: error: --{'' if args.ort_rewrites else 'no-'}ort-rewrites applies to --format onnx "
              f"only, not {args.format}", file=sys.stderr)
        return 2
    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint, args.model)
        source = args.checkpoint
    elif args.model:
        model = create_model(args.model, num_classes=args.num_classes)
        source = "random weights"
        print("mixconv export: warning: no --checkpoint given; exporting random weights", file=sys.stderr)
    else:
        print("mixconv export: error: give --model and/or --checkpoint", file=sys.stderr)
        return 2
    from mixconv.files.onnx_metadata import checkpoint_metadata

    metadata = checkpoint_metadata(model, args.checkpoint)  # before --optimize, which may drop model.meta
    img_size = args.img_size
    if img_size is None and metadata.preprocess is not None:  # a training checkpoint's size, else the model's
        img_size = (metadata.preprocess.img_size, metadata.preprocess.img_size)
    if args.optimize:
        model = optimize_for_inference(model.eval())
    opts = dict(img_size=img_size, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, tol=args.tol)
    if args.format == "onnx":
        from dataclasses import replace

        ort_rewrites = args.optimize if args.ort_rewrites is None else args.ort_rewrites
        opts.update(opset=args.opset, exporter=args.exporter, ort_rewrites=ort_rewrites,
                    metadata=replace(metadata, preprocess=replace(metadata.preprocess, img_size=img_size[0])))
    name = getattr(model, "model_name", "") or args.model
    try:
        check = export_model(model, args.output, args.format, **opts)
    except ExportError as e:
        print(f"mixconv export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported {name} ({source}) to {args.output} as {args.format}, input {check.input_shape[1:]} "
          f"({'dynamic' if args.dynamic_batch else 'fixed'} batch)")
    if args.format == "onnx":
        counts = onnx_op_counts(args.output)
        print(f"onnx nodes ({sum(counts.values())}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(check)
    return 0
