"""The ``mixconv`` command line (also ``python -m mixconv``)."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from mixconv.commands import benchmark as benchmark_cmd
from mixconv.commands import convert as convert_cmd
from mixconv.commands import export as export_cmd
from mixconv.commands import info as info_cmd
from mixconv.commands import predict as predict_cmd
from mixconv.commands import quantize as quantize_cmd
from mixconv.commands import search as search_cmd
from mixconv.commands import shards as shards_cmd
from mixconv.commands import study as study_cmd
from mixconv.commands import train as train_cmd
from mixconv.commands import validate as validate_cmd
from mixconv.commands import verify as verify_cmd
from mixconv.files.inputs import MixconvInputError
from mixconv.kernels.capability import LowPrecisionWarning
from mixconv.models.registry import UnknownModelError

COMMANDS = (info_cmd, train_cmd, validate_cmd, predict_cmd, export_cmd, convert_cmd, benchmark_cmd, verify_cmd,
            quantize_cmd, search_cmd, study_cmd, shards_cmd)


def build_parser() -> argparse.ArgumentParser:
    from mixconv import __version__

    parser = argparse.ArgumentParser(prog="mixconv", description="MixConv and the MixNet family for PyTorch.")
    parser.add_argument("--version", action="version", version=f"mixconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            # Every command prints its own `warning:`/`note:` line for these (once, on rank 0); the Python warning,
            # meant for library callers, would say the same again (and once per torchrun process).
            warnings.filterwarnings("ignore", category=LowPrecisionWarning)
            return int(args.func(args) or 0)
    except (MixconvInputError, UnknownModelError) as e:  # ConfigError, CheckpointError: damaged or wrong input
        print(f"mixconv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
