"""``mixconv verify FILE``: the format, tensors and hashes of a checkpoint, training state or ONNX file."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="check a checkpoint's or ONNX file's integrity (recorded vs computed sha256)",
        description="Read FILE (a mixconv or timm checkpoint, .safetensors, .pth/.pt, a last.state.pt training "
                    "state, or an .onnx model) and report its format, number of tensors and elements, and every "
                    "recorded hash (mixconv's tensors_sha256 header field; a torch.hub-style name-<sha256 "
                    "prefix>.pth) next to the computed one. Exit status: 0 OK, 1 CORRUPTED, 2 unreadable.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.files.verify import verify_file

    reports = [verify_file(f) for f in args.files]  # an unreadable file raises: the CLI exits 2 naming it
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(str(r) for r in reports))
    return 0 if all(r.ok for r in reports) else 1
