"""A 2-process torchrun run on CPU (gloo): DDP, sharded data, rank-0 outputs, metrics reduced over ranks."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from training_fixtures import REPO, cli_args, image_folder, tiny_model, tiny_settings  # noqa: F401

import mixconv


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_torchrun_two_processes_gloo(tiny_model, image_folder, tmp_path):
    out = tmp_path / "run"
    settings = tiny_settings(tiny_model, str(image_folder), out, epochs=1, batch_size=8, ema_decay=0.9)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mixconv", "train", *cli_args(settings), "--sync-bn"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 2 process(es)" in r.stderr
    assert "plain BatchNorm on CPU" in r.stderr  # --sync-bn needs CUDA
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1  # only rank 0 writes
    # validation was reduced over both ranks' shards: it equals a single-process evaluation of the checkpoint
    single = mixconv.evaluate(summary["last_checkpoint"], batch_size=8)
    assert single["images"] == 24
    assert float(rows[0]["val_top1"]) == pytest.approx(single["top1"], abs=0.01)
    assert float(rows[0]["val_loss"]) == pytest.approx(single["loss"], abs=1e-3)
