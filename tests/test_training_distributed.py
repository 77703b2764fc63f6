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
    # quiet: no warning but the one about the flag given (DDP's grad-stride warning had one per rank)
    warned = [line for line in r.stderr.splitlines() if "Warning" in line or "warning:" in line]
    assert all("plain BatchNorm on CPU" in line for line in warned), warned
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


def test_gradients_arrive_in_their_parameters_strides():
    """oneDNN hands MixConv's and the 1x1 convs' weight gradients back with other strides on size-1 dims; DDP
    would warn on every rank. The hooks restride them (a view, same values)."""
    from mixconv.training.grad_layout import match_grad_strides

    def grads(hooked: bool) -> dict:
        torch.manual_seed(0)
        model = mixconv.create_model("mixnet_s", num_classes=3).train()
        if hooked:
            assert match_grad_strides(model) == sum(1 for _ in model.parameters())
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}, dict(model.named_parameters())

    plain, params = grads(False)
    assert any(g.stride() != params[n].stride() for n, g in plain.items())  # what the hooks are for
    fixed, params = grads(True)
    assert all(g.stride() == params[n].stride() for n, g in fixed.items())
    assert all(torch.equal(fixed[n], plain[n]) for n in plain)
