"""A torchrun worker for tests/test_data_shards.py: each rank builds the training loader of a shards folder as
`mixconv train` does (2 data-loader workers) and writes the names of the samples of its first epoch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from mixconv.data.shards import ShardStream, open_shards
from mixconv.inference.distributed import init_distributed

if __name__ == "__main__":
    shards, out = sys.argv[1], Path(sys.argv[2])
    info = init_distributed()
    stream = ShardStream(open_shards(shards, "train"), None, rank=info.rank, world_size=info.world_size,
                         workers=2, batch_size=4, seed=0, encoded=True)
    stream.set_position(0, 0)
    import torch

    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=lambda batch: batch)
    names = [item[2] for batch in loader for item in batch]
    (out / f"rank{info.rank}.json").write_text(json.dumps(names))
    dist.destroy_process_group()
