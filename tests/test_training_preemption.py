"""Step checkpoints and preemption: a run stopped at step k of an epoch and resumed ends with the same final
weights (sha256) as an uninterrupted run (ImageFolder, built-in data and shards, one process and torchrun); SIGTERM exits with
75 within the grace period; a signal during the checkpoint write leaves a loadable checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO, cli_args, image_folder, tiny_model, tiny_settings  # noqa: F401

import mixconv
import mixconv.training.main as training_main
from mixconv.data.shard_writer import write_shards
from mixconv.training import state as ckpt
from mixconv.training.preempt import EXIT_PREEMPTED, Preempted

GRACE_S = 30  # SLURM's KillWait and Kubernetes' terminationGracePeriodSeconds default; torchrun waits as long
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def signal_at(monkeypatch, epoch: int, step: int, sig=signal.SIGTERM, then=None) -> None:
    """Send ``sig`` to this process after optimizer step ``step`` of epoch ``epoch`` (1-based)."""
    original = training_main._after_step

    def hook(t, tot):
        if (t.rs.epoch + 1, tot.step) == (epoch, step):
            os.kill(os.getpid(), sig)
            if then is not None:
                then()
        original(t, tot)

    monkeypatch.setattr(training_main, "_after_step", hook)


@pytest.fixture(params=["folder", "builtin", "shards"])
def data(request, image_folder, tmp_path) -> tuple[str, int]:
    """(--data, --workers): the ImageFolder read in the main process; the built-in digits by two workers; the
    folder's shards by two workers."""
    if request.param == "folder":
        return str(image_folder), 0
    if request.param == "builtin":
        return "digits", 2
    write_shards(str(image_folder), tmp_path / "shards", shard_size=6)
    return str(tmp_path / "shards"), 2


def test_stop_at_step_k_then_resume_equals_uninterrupted(data, tiny_model, tmp_path, monkeypatch):
    source, workers = data
    settings = tiny_settings(tiny_model, source, tmp_path / "full", epochs=2, workers=workers, ema_decay=0.9,
                             hflip=0.5)
    full = mixconv.train(None, **settings)
    signal_at(monkeypatch, epoch=2, step=3, sig=signal.SIGUSR1)
    with pytest.raises(Preempted, match="stopped by SIGUSR1 at epoch 1, step 3"):
        mixconv.train(None, **{**settings, "output": str(tmp_path / "cut")})
    state = ckpt.load_state(tmp_path / "cut" / "last.state.pt")
    assert (state["epoch"], state["position"]["step"]) == (1, 3)
    monkeypatch.undo()
    resumed = mixconv.train(None, resume=str(tmp_path / "cut"))
    assert resumed["final_weights_sha256"] == full["final_weights_sha256"]
    assert resumed["resumed_from"] == {"epoch": 1, "step": 3}
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["resumed_from"] == {"epoch": 1, "step": 3}
    strip = lambda p: [r.split(",")[:5] for r in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "cut") == strip(tmp_path / "full")  # the same losses, the split epoch's too


def test_a_killed_run_resumes_from_its_last_step_checkpoint(image_folder, tiny_model, tmp_path, monkeypatch):
    """--checkpoint-every 2: a crash at step 5 loses only step 5; the run continues from step 4."""
    settings = tiny_settings(tiny_model, str(image_folder), tmp_path / "full", epochs=1)
    full = mixconv.train(None, **settings)
    original = training_main._after_step

    def crash(t, tot):
        original(t, tot)
        if tot.step == 5:
            raise KeyboardInterrupt  # the process dies here, without a checkpoint of its own

    monkeypatch.setattr(training_main, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        mixconv.train(None, **{**settings, "output": str(tmp_path / "cut"), "checkpoint_every": 2})
    assert ckpt.load_state(tmp_path / "cut" / "last.state.pt")["position"]["step"] == 4
    monkeypatch.undo()
    resumed = mixconv.train(None, resume=str(tmp_path / "cut"))
    assert resumed["final_weights_sha256"] == full["final_weights_sha256"]


def test_a_second_signal_during_the_checkpoint_write_changes_nothing(image_folder, tiny_model, tmp_path,
                                                                      monkeypatch):
    """SIGTERM, then another SIGTERM while last.state.pt is being written: the write completes, the checkpoint
    loads and resumes. (A hard kill mid-write leaves the previous file: every file is renamed into place only
    when complete; see tests/test_training_disk.py.)"""
    settings = tiny_settings(tiny_model, str(image_folder), tmp_path / "full", epochs=1)
    full = mixconv.train(None, **settings)
    original = ckpt.save_state
    calls = []

    def save_state(path, state):
        if state.get("position", {}).get("step"):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the file is written
            calls.append(path)
        return original(path, state)

    monkeypatch.setattr(ckpt, "save_state", save_state)
    signal_at(monkeypatch, epoch=1, step=2)
    with pytest.raises(Preempted):
        mixconv.train(None, **{**settings, "output": str(tmp_path / "cut")})
    assert calls and ckpt.load_state(tmp_path / "cut" / "last.state.pt")["position"]["step"] == 2
    monkeypatch.undo()
    resumed = mixconv.train(None, resume=str(tmp_path / "cut"))
    assert resumed["final_weights_sha256"] == full["final_weights_sha256"]


def worker_env(pids: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_")}
    env.update(OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", MIXCONV_TEST_PID_DIR=str(pids),
               MIXCONV_TEST_STEP_SLEEP="0.25")
    env.update(extra)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def steps_done(pids: Path) -> int:
    path = pids / "rank0.steps"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def run_until_signalled(cmd: list[str], pids: Path, log_path: Path, after_steps: int, env: dict,
                        signal_group: bool) -> tuple[int, float]:
    """Start ``cmd``, send SIGTERM once rank 0 has done ``after_steps`` steps (to the whole process group, as
    SLURM does, or to the launcher, as Kubernetes does); returns the exit code and the seconds it took to exit."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + 120
            while steps_done(pids) < after_steps and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before the signal: " + log_path.read_text()[-3000:]
            sent = time.time()
            (os.killpg if signal_group else os.kill)(proc.pid, signal.SIGTERM)
            rc = proc.wait(GRACE_S + 30)
            return rc, time.time() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_sigterm_to_one_process_run_exits_75_and_resumes_exactly(image_folder, tiny_model, tmp_path):
    """`mixconv train` with 2 data-loader workers; SIGTERM to its process group (workers included) in epoch 2."""
    settings = tiny_settings(tiny_model, str(image_folder), tmp_path / "full", epochs=3, workers=2)
    pids = tmp_path / "pids"
    pids.mkdir()
    launcher = [sys.executable, str(REPO / "tests" / "torchrun_worker.py"), "train"]
    r = subprocess.run(launcher + cli_args(settings), env=worker_env(pids, MIXCONV_TEST_STEP_SLEEP="0"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    cmd = launcher + cli_args({**settings, "output": str(tmp_path / "cut")})
    rc, took = run_until_signalled(cmd, pids, tmp_path / "log.txt", 9, worker_env(pids), signal_group=True)
    text = (tmp_path / "log.txt").read_text()
    assert rc == EXIT_PREEMPTED, text[-3000:]
    assert took < GRACE_S and "(exit code 75)" in text
    state = ckpt.load_state(tmp_path / "cut" / "last.state.pt")
    assert state["position"]["step"] > 0 or state["epoch"] > 0
    r = subprocess.run(launcher + ["--resume", str(tmp_path / "cut")],
                       env=worker_env(pids, MIXCONV_TEST_STEP_SLEEP="0"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert resumed["final_weights_sha256"] == full["final_weights_sha256"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
            str(REPO / "tests" / "torchrun_worker.py"), "train"]


@needs_gloo
def test_sigterm_to_torchrun_exits_in_grace_and_resumes_exactly(image_folder, tiny_model, tmp_path):
    """Two processes: SIGTERM to torchrun (it forwards it to both ranks), which stop at the same step; rank 0
    writes the step checkpoint; `--resume` under torchrun ends equal to an uninterrupted torchrun run. Then
    SIGTERM to one worker only, under --max-restarts 1: the elastic restart resumes mid-epoch, equal again."""
    settings = tiny_settings(tiny_model, str(image_folder), tmp_path / "full", epochs=2, workers=1, batch_size=4)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = worker_env(pids, MIXCONV_TEST_STEP_SLEEP="0")
    r = subprocess.run(torchrun() + cli_args(settings), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((tmp_path / "full" / "summary.json").read_text())["final_weights_sha256"]

    cut = {**settings, "output": str(tmp_path / "cut")}
    rc, took = run_until_signalled(torchrun() + cli_args(cut), pids, tmp_path / "log.txt", 8, worker_env(pids),
                                   signal_group=False)
    text = (tmp_path / "log.txt").read_text()
    assert took < GRACE_S and text.count("(exit code 75)") == 2, text[-3000:]
    state = ckpt.load_state(tmp_path / "cut" / "last.state.pt")
    assert (state["epoch"], len(state["position"]["rng_by_rank"])) == (1, 2) and state["position"]["step"] > 0
    r = subprocess.run(torchrun() + ["--resume", str(tmp_path / "cut")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and f"resumed at epoch 1, step {state['position']['step']}" in r.stderr
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["final_weights_sha256"] == full

    # SIGTERM to rank 1 only: both ranks stop (exit 75), torchrun restarts them, they continue mid-epoch
    elastic = {**settings, "output": str(tmp_path / "elastic")}
    (pids / "rank0.steps").unlink()
    cmd = torchrun("--max-restarts", "1") + cli_args(elastic)
    with open(tmp_path / "elastic.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(pids))
        try:
            while steps_done(pids) < 8 and proc.poll() is None:
                time.sleep(0.05)
            os.kill(int((pids / "rank1.attempt0.pid").read_text()), signal.SIGTERM)
            rc = proc.wait(240)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "elastic.txt").read_text()
    assert rc == 0 and "elastic restart 1: resumed at epoch 1, step " in text, text[-3000:]
    assert json.loads((tmp_path / "elastic" / "summary.json").read_text())["final_weights_sha256"] == full
