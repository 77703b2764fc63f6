"""torchrun fault tolerance and multi-node on CPU (gloo): an elastic restart after a SIGKILL continues the run
directory; two torchrun agents (two "nodes", c10d rendezvous on 127.0.0.1) train one run together."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO, cli_args, image_folder, tiny_model, tiny_settings  # noqa: F401

import mixconv
from mixconv.files.integrity import tensors_sha256
from mixconv.files.weights import read_checkpoint
from mixconv.training import TrainingError
from mixconv.training.state import load_state

needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def rows(out: Path) -> list[dict]:
    if not (out / "metrics.csv").is_file():
        return []
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def worker_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_")}
    # A fresh store per restart round: with torchrun's shared TCPStore, a restarted group can read the previous
    # group's gloo addresses and fail to connect (pytorch/pytorch#135712; seen here on a loaded CPU).
    env.update(OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **extra)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def wait_for(condition, seconds: float, proc: subprocess.Popen) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@needs_gloo
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_elastic_restart_after_sigkill_continues_the_run(tiny_model, image_folder, tmp_path):
    """torchrun --max-restarts 1: SIGKILL one worker in the middle of epoch 3 of 3; the restarted group, with the
    same command line, continues from the epoch-2 checkpoint and runs epoch 3 once."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    settings = tiny_settings(tiny_model, str(image_folder), out, epochs=3)
    cmd = torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
                   str(REPO / "tests" / "torchrun_worker.py"), "train", *cli_args(settings))
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=worker_env(MIXCONV_TEST_PID_DIR=str(pids), MIXCONV_TEST_PAUSE_EPOCH="3"))
        try:
            paused = wait_for(lambda: all((pids / f"rank{r}.paused").is_file() for r in (0, 1)), 90, proc)
            assert paused, "the workers did not reach epoch 3: " + log_path.read_text()[-3000:]
            assert [int(r["epoch"]) for r in rows(out)] == [1, 2]
            victim = int((pids / "rank1.attempt0.pid").read_text())
            os.kill(victim, signal.SIGKILL)
            rc = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    assert (pids / "rank1.attempt1.pid").is_file(), "torchrun did not restart the workers"
    assert f"elastic restart 1: resumed at epoch 2, step 0 from {out / 'last.state.pt'}" in text
    assert [int(r["epoch"]) for r in rows(out)] == [1, 2, 3]  # every row once, none lost
    for epoch in (1, 2, 3):
        assert text.count(f"epoch {epoch}/3: train_loss") == 1, text[-3000:]  # every epoch ran to its end once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 3 and summary["world_size"] == 2
    assert load_state(out / "last.state.pt")["epoch"] == 3


def test_elastic_restart_rules_in_process(tiny_model, image_folder, tmp_path, monkeypatch, capfd):
    """Which restarts continue a directory: only this job's (run id), with the same settings, after a restart."""
    torch.set_num_threads(1)
    out = tmp_path / "run"

    def train(job: str, count: str, **extra):
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
        return mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), out, **extra))

    # a restart before the first checkpoint starts fresh in the directory the first attempt created
    out.mkdir()
    (out / "config.yaml").write_text("half written by an attempt that died")
    train("job-a", "1", epochs=1)
    assert [int(r["epoch"]) for r in rows(out)] == [1]
    with pytest.raises(TrainingError, match="already holds a training run"):
        train("job-a", "0", epochs=2)  # a fresh start never continues
    with pytest.raises(TrainingError, match="this job did not start.*torchrun job 'job-a', not this job"):
        train("job-b", "1", epochs=2)
    with pytest.raises(TrainingError, match="elastic restart 1: .*cannot change lr"):
        train("job-a", "1", epochs=2, lr=0.5)
    capfd.readouterr()
    summary = train("job-a", "2", epochs=2)
    assert "elastic restart 2: resumed at epoch 1" in capfd.readouterr().err
    assert summary["epochs"] == 2 and [int(r["epoch"]) for r in rows(out)] == [1, 2]
    train("job-a", "3", epochs=2)
    assert "elastic restart 3: the run in" in capfd.readouterr().err and len(rows(out)) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_gloo
def test_two_torchrun_agents_train_one_run(tiny_model, image_folder, tmp_path):
    """Two agents (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous): world size 2, one writer, equal weights."""
    out = tmp_path / "run"
    settings = tiny_settings(tiny_model, str(image_folder), out, epochs=2, ema_decay=0.9)
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", f"mixconv-test-{uuid.uuid4().hex[:8]}",
              "--max-restarts", "0"]
    cmd = torchrun(*launch, "-m", "mixconv", "train", *cli_args(settings))
    logs = [tmp_path / f"node{i}.log" for i in (0, 1)]
    procs = []
    try:
        for path in logs:
            with open(path, "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env()))
        codes = [p.wait(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [p.read_text() for p in logs]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    # only rank 0 logs and writes: one agent's log has the run's lines, the other's none of them
    assert sorted(t.count("on 2 process(es)") for t in texts) == [0, 1]
    assert sorted(t.count("done: best top-1") for t in texts) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2 and summary["finished"]
    assert [int(r["epoch"]) for r in rows(out)] == [1, 2]
    # each rank hashed its own final weights; they are equal, and equal to what rank 0 saved
    saved, _ = read_checkpoint(out / "last.safetensors")
    assert summary["final_weights_sha256"] == [tensors_sha256(saved)] * 2
