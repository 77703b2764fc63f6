"""``mixconv predict IMAGE...``: the top-k classes of each image with their probabilities."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify images with a checkpoint (top-k classes and probabilities)",
        description="Classify images with a checkpoint, using its class names and preprocessing.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="FILE|DIR", help="a mixconv training checkpoint, a folder in timm's hub "
                     "layout (or any checkpoint with --model)")
    src.add_argument("--onnx", metavar="FILE", help="an ONNX file (float32 or int8) run by onnxruntime, with the "
                     "classes and preprocessing stored in it")
    p.add_argument("--model", metavar="NAME|YAML", help="the architecture (default: the checkpoint's own)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--img-size", type=int)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation", choices=("nearest", "bilinear", "bicubic"))
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--cam", metavar="DIR", help="also save Grad-CAM overlays (for the predicted class) here as "
                   "<image>_cam.png (needs grad-cam: pip install 'mixconv[cam]')")
    p.add_argument("--cam-layer", metavar="NAME", help="the module to explain (default: the last stage, "
                   "e.g. stages.4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.files.config import ConfigError
    from mixconv.inference.runner import predict

    if args.top_k < 1:
        raise ConfigError(f"--top-k: got {args.top_k}; expected an int >= 1")
    if args.cam and args.onnx:
        raise ConfigError("--cam needs a PyTorch model (--checkpoint): Grad-CAM takes gradients, an ONNX file has none")
    results = predict(args.images, args.checkpoint, model=args.model, top_k=args.top_k, img_size=args.img_size,
                      crop_pct=args.crop_pct, interpolation=args.interpolation, onnx=args.onnx)
    if args.cam:
        from mixconv.visual.cam import save_cams

        cams = save_cams(args.images, args.checkpoint, args.cam, model=args.model, layer=args.cam_layer,
                         img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)
        for r, c in zip(results, cams):
            if "cam" in c:
                r["cam"] = c["cam"]
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: unreadable")  # the reason is on stderr
                continue
            tops = ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])
            print(f"{r['image']}: {tops}" + (f"  (cam: {r['cam']})" if "cam" in r else ""))
    return 1 if any("error" in r for r in results) else 0  # every image was tried; exit 1 if any failed
