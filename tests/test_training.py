"""Short CPU training runs: outputs, checkpoints, resume after a kill, NaN stop, corrupt images, fine-tuning."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from training_fixtures import image_folder, run_cli, tiny_model, tiny_settings  # noqa: F401

import mixconv
from mixconv.factory.checkpoint import (
    model_from_training_checkpoint as model_from_checkpoint,
)
from mixconv.files.weights import read_checkpoint
from mixconv.training import TrainingError
from mixconv.training.state import load_state


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread is as fast, and does not thrash when the CPU is shared
    torch.set_num_threads(1)
    yield


def rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_short_run_writes_everything(tiny_model, tmp_path):
    out = tmp_path / "run"
    summary = mixconv.train("digits", **tiny_settings(tiny_model, "digits", out, epochs=2, batch_size=64,
                                                      lr=0.01, lr_base_size=64))
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.safetensors", "best.safetensors",
                 "last.state.pt"):
        assert (out / name).is_file(), name
    r = rows(out)
    assert [int(x["epoch"]) for x in r] == [1, 2]
    assert list(r[0]) == ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s",
                          "seconds", "skipped_images"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["world_size"] == 1 and on_disk["epochs"] == 2 and on_disk["finished"]
    assert on_disk["final_top1"] == float(r[-1]["val_top1"]) == summary["final_top1"]
    assert on_disk["best_top1"] == pytest.approx(max(float(x["val_top1"]) for x in r), abs=1e-3)
    assert Path(on_disk["best_checkpoint"]).is_absolute()
    assert float(r[-1]["val_top1"]) > 30.0  # 10 classes; chance is 10%
    import importlib.util

    if importlib.util.find_spec("matplotlib"):  # optional: curves.png only when matplotlib is installed
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the resolved settings are saved: the data's class count and the model's drop rate are filled in
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["num_classes"] == 10 and saved["img_size"] == 32 and saved["data"] == "digits"
    # checkpoints are self-describing
    model, extra = model_from_checkpoint(out / "last.safetensors")
    assert extra["classes"] == [str(i) for i in range(10)] and extra["preprocess"]["img_size"] == 32
    assert extra["epoch"] == 2 and model.num_classes == 10
    state = load_state(out / "last.state.pt")
    assert state["epoch"] == 2 and set(state["rng"]) >= {"torch", "python", "numpy"}


class Killed(Exception):
    pass


def test_resume_after_a_kill_matches_the_uninterrupted_run(tiny_model, image_folder, tmp_path):
    settings = dict(epochs=3, ema_decay=0.9)
    full = mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), tmp_path / "full", **settings))

    def kill_after_two(row):
        if row["epoch"] == 2:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        mixconv.training.train(None, on_epoch_end=kill_after_two,
                               **tiny_settings(tiny_model, str(image_folder), out, **settings))
    before = rows(out)
    assert [int(x["epoch"]) for x in before] == [1, 2]
    # A kill between writing a metrics row and the checkpoint: the partial row must not survive the resume.
    with open(out / "metrics.csv", "a") as f:
        f.write("3,9.9,9.9,0.0,0.0,0.1,1.0,1.0,0\n")
    resumed = mixconv.training.train(resume=str(out))
    after = rows(out)
    assert [int(x["epoch"]) for x in after] == [1, 2, 3]
    assert after[:2] == before
    assert abs(resumed["final_top1"] - full["final_top1"]) <= 0.5
    full_rows = rows(tmp_path / "full")
    for a, b in zip(after, full_rows):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-3, (a, b)
    sd_resumed, _ = read_checkpoint(out / "last.safetensors")
    sd_full, _ = read_checkpoint(tmp_path / "full" / "last.safetensors")
    for k in sd_full:
        torch.testing.assert_close(sd_resumed[k], sd_full[k], atol=1e-4, rtol=1e-3)


def test_cli_resume_messages_and_finished_run(tiny_model, image_folder, tmp_path):
    out = tmp_path / "run"
    from training_fixtures import cli_args

    r = run_cli("train", *cli_args(tiny_settings(tiny_model, str(image_folder), out, epochs=1)), subprocess_=True)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(out), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "resumed at epoch 1" in r.stderr
    assert [int(x["epoch"]) for x in rows(out)] == [1, 2]
    r = run_cli("train", "--resume", str(out / "last.safetensors"))
    assert r.returncode == 0, r.stderr
    assert "finished" in r.stderr
    assert [int(x["epoch"]) for x in rows(out)] == [1, 2]
    r = run_cli("train", "--output", str(out), "--epochs", "1")
    assert r.returncode == 1 and "already holds a training run" in r.stderr
    r = run_cli("train", "--resume", str(out), "--lr", "0.5")
    assert r.returncode == 1 and "cannot change lr" in r.stderr
    r = run_cli("train", "--resume", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no such directory" in r.stderr


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_model, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    original = torch.nn.CrossEntropyLoss.forward
    steps_per_epoch = 6  # 48 images / batch 8

    def poisoned(self, input, target):
        calls["n"] += 1
        loss = original(self, input, target)
        return loss * float("nan") if calls["n"] > steps_per_epoch + 2 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"the loss is nan at epoch 2, step 3.*last good checkpoint is intact"):
        mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), out, epochs=3))
    _, extra = model_from_checkpoint(out / "last.safetensors")
    assert extra["epoch"] == 1
    assert load_state(out / "last.state.pt")["epoch"] == 1
    assert [int(x["epoch"]) for x in rows(out)] == [1]


def test_corrupt_images_are_skipped_named_and_counted(tiny_model, image_folder, tmp_path, capfd):
    bad = image_folder / "train" / "digit1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (image_folder / "val" / "digit2" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), out, epochs=1))
    err = capfd.readouterr().err
    assert "skipping unreadable image" in err and "broken.png" in err and "empty.png" in err
    assert int(rows(out)[0]["skipped_images"]) == 2


def test_finetune_new_head_and_frozen_backbone(tiny_model, image_folder, tmp_path):
    first = mixconv.train(None, **tiny_settings(tiny_model, "digits", tmp_path / "a", epochs=1, batch_size=128,
                                                lr_base_size=128))
    src = Path(first["last_checkpoint"])
    out = tmp_path / "b"
    mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), out, epochs=1, pretrained=str(src),
                                        freeze_backbone=True))
    before, _ = read_checkpoint(src)
    after, _ = read_checkpoint(out / "last.safetensors")
    assert after["classifier.weight"].shape[0] == 3 and before["classifier.weight"].shape[0] == 10
    trunk = [k for k in before if k.endswith("conv.weight") or k.endswith("bn.weight")]
    assert trunk
    for k in trunk:
        torch.testing.assert_close(after[k], before[k])


def test_all_training_features_together(tiny_model, image_folder, tmp_path):
    out = tmp_path / "run"
    summary = mixconv.train(None, **tiny_settings(
        tiny_model, str(image_folder), out, epochs=1, opt="rmsproptf", lr=0.01, opt_eps=1e-3, sched="step",
        warmup_epochs=0.5, ema_decay=0.99, amp="bf16", channels_last=True, clip_grad=1.0, accum_steps=2,
        mixup=0.2, cutmix=1.0, label_smoothing=0.1, auto_augment="trivialaugment", re_prob=0.25, hflip=0.5,
        drop_path_rate=0.1, bn_momentum=0.01))
    assert summary["epochs"] == 1 and summary["final_top1"] is not None
    _, extra = model_from_checkpoint(out / "last.safetensors")
    assert extra["ema"] is True
    state = load_state(out / "last.state.pt")
    assert state["ema"] is not None and int(state["ema"]["num_updates"]) == 3  # 6 batches / 2 accumulated


def test_train_cli_errors(tiny_model, tmp_path):
    r = run_cli("train", "--config", "nope")
    assert r.returncode == 2 and "nope: no such recipe file" in r.stderr
    r = run_cli("train", "--opt", "adam", "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "opt: got 'adam'" in r.stderr
    r = run_cli("train", "--data", str(tmp_path / "missing"), "--model", tiny_model)
    assert r.returncode == 2 and "missing: no such directory" in r.stderr
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    r = run_cli("train", "--data", str(tmp_path / "noval"), "--model", tiny_model)
    assert r.returncode == 2 and "no val/ folder" in r.stderr
    r = run_cli("train", "--model", "mixnet_q")
    assert r.returncode == 2 and "unknown model 'mixnet_q'" in r.stderr
    r = run_cli("train", "--epochs", "zero")
    assert r.returncode == 2 and "invalid int value" in r.stderr


def test_sigkill_then_resume_ends_like_the_uninterrupted_run(tiny_model, image_folder, tmp_path):
    """A real kill (SIGKILL, at whatever point of an epoch or a checkpoint write), then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from training_fixtures import REPO, cli_args

    settings = tiny_settings(tiny_model, str(image_folder), tmp_path / "killed", epochs=6)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "mixconv", "train", *cli_args(settings)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "killed"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "last.state.pt").is_file() and len(rows(out)) >= 2:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(rows(out))
    assert 2 <= done, "the run did not get two epochs in before the deadline"
    r = run_cli("train", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    if done < 6:
        assert "resumed at epoch" in r.stderr
    full = mixconv.train(None, **tiny_settings(tiny_model, str(image_folder), tmp_path / "full", epochs=6))
    after = rows(out)
    assert [int(x["epoch"]) for x in after] == [1, 2, 3, 4, 5, 6]
    assert abs(float(after[-1]["val_top1"]) - full["final_top1"]) <= 0.5


@pytest.mark.parametrize("recipe", ["tf-mixnet", "mindcv-mixnet"])
def test_imagenet_recipes_run(recipe, tiny_model, image_folder, tmp_path):
    """The shipped ImageNet recipes, shrunk to one tiny epoch: every setting they use works together."""
    out = tmp_path / "run"
    summary = mixconv.train(recipe, model=tiny_model, data=str(image_folder), output=str(out), epochs=1,
                            img_size=32, batch_size=8, workers=0, log_interval=1000)
    assert summary["epochs"] == 1
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    expected = mixconv.training.load_recipe(recipe)
    for key in ("opt", "sched", "lr", "weight_decay", "label_smoothing", "ema_decay", "mixup", "auto_augment"):
        if key in expected:
            assert saved[key] == expected[key], key


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_train_one_epoch_freeze_bn_keeps_running_statistics(freeze_bn):
    """``--freeze-bn`` (and ``--qat``): BatchNorm normalizes with its running statistics and keeps them, while
    its affine weights and the convs still train."""
    from mixconv.inference.distributed import DistInfo
    from mixconv.training.engine import StepSettings, train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model.eval()(torch.randn(2, 3, 6, 6))  # materializes the lazy linear; eval: no statistics recorded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.randint(0, 2, (8,)), 0) for _ in range(3)]
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), opt, sched, batches, 1, DistInfo(),
                    StepSettings(freeze_bn=freeze_bn, log_interval=1000))
    after = model.state_dict()
    assert torch.equal(before["1.running_mean"], after["1.running_mean"]) == freeze_bn
    assert int(after["1.num_batches_tracked"]) == (0 if freeze_bn else 3)
    assert not torch.equal(before["1.weight"], after["1.weight"])
    assert not torch.equal(before["0.weight"], after["0.weight"])


def test_layer_decay_and_grad_checkpointing_flags(tiny_model, image_folder, tmp_path):
    """``--layer-decay`` builds per-group rates from the model's group_matcher (the classifier at the full rate,
    the stem at the smallest) and the resolved settings record it; ``--grad-checkpointing`` trains the same."""
    import yaml
    from training_fixtures import cli_args

    runs = {}
    for ckpt in (False, True):
        out = tmp_path / f"run{int(ckpt)}"
        settings = tiny_settings(tiny_model, str(image_folder), out, epochs=1, layer_decay=0.5,
                                 grad_checkpointing=ckpt)
        r = run_cli("train", *cli_args(settings))
        assert r.returncode == 0, r.stderr
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["layer_decay"] == 0.5 and saved["grad_checkpointing"] is ckpt
        runs[ckpt] = out
    state = load_state(runs[False] / "last.state.pt")
    rates = sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]})
    assert len(rates) > 3 and rates[0] < rates[-1] and rates[-2] == pytest.approx(rates[-1] * 0.5)
    plain, _ = read_checkpoint(runs[False] / "last.safetensors")
    ckpt_sd, _ = read_checkpoint(runs[True] / "last.safetensors")
    for k in plain:  # checkpointing changes memory, not the run
        torch.testing.assert_close(ckpt_sd[k], plain[k], rtol=1e-4, atol=1e-5, msg=k)
    r = run_cli("train", "--layer-decay", "1.5", "--output", str(tmp_path / "bad"))
    assert r.returncode == 2 and "layer_decay: got 1.5; expected a number in (0, 1]" in r.stderr
