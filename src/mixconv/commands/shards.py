"""``mixconv shards``: write an ImageFolder root (or a built-in data set) as WebDataset tar shards."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shards", help="write an ImageFolder (or the built-in data) as WebDataset tar shards",
        description="Write DATA's train/ and val/ as tar shards (each image's own bytes and its class index) "
                    "with an index, shards.json (class names and sample counts). `mixconv train --data OUT` "
                    "then streams them.")
    p.add_argument("data", metavar="DATA", help="an ImageFolder root with train/ and val/, or digits / digit-pairs")
    p.add_argument("output", metavar="OUT", help="the shards folder (new or empty)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="samples per shard (default 1000; ~100 MB of ImageNet JPEGs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the one-time shuffle of the training samples")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.data.shard_writer import write_shards

    written = write_shards(args.data, Path(args.output), args.shard_size, args.seed,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"{written.index}: {len(written.classes)} classes, "
          + ", ".join(f"{split} {sum(c)} samples in {len(c)} shards" for split, c in written.counts.items()))
    return 0
