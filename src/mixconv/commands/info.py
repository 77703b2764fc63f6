"""``mixconv info``: the model table, or one model's per-stage layout."""
from __future__ import annotations

import argparse
import json

from mixconv.bench.info import format_layout, format_table, model_summary
from mixconv.models.registry import list_models


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameters, MACs, features and reference accuracy of the models")
    p.add_argument("--model", help="one registered name or YAML config (shows its per-stage layout)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model:
        summary = model_summary(args.model, with_layout=True)
        print(json.dumps(summary, indent=2) if args.format == "json" else format_layout(summary))
        return 0
    rows = [model_summary(name) for name in list_models()]
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))
    return 0
