"""``mixconv convert IN OUT``: timm MixNet checkpoint <-> mixconv checkpoint."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="timm MixNet checkpoint -> mixconv .safetensors checkpoint, or mixconv -> timm state dict",
        description="The direction follows IN: a timm state dict becomes a self-describing mixconv .safetensors "
                    "checkpoint; a mixconv checkpoint becomes a timm state dict (.pth or .safetensors by OUT's "
                    "suffix) that timm.create_model(name).load_state_dict(sd, strict=True) accepts.",
    )
    p.add_argument("input", metavar="IN", help="checkpoint to read (.pth/.pt/.safetensors)")
    p.add_argument("output", metavar="OUT", help="checkpoint to write (atomically)")
    p.add_argument("--model", help="registered name or YAML config, when IN does not tell (e.g. mixnet_s vs "
                                   "tf_mixnet_s: same tensors); default: inferred from IN")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.convert.checkpoint import convert_checkpoint

    print(convert_checkpoint(args.input, args.output, args.model))
    return 0
