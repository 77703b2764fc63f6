"""A full disk or an I/O error while a run writes: the previous checkpoint and metrics stay whole, the run stops with
the path in the message (CLI: exit 1, no traceback), and --resume works once the space is back."""
from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
from pathlib import Path

import mixconv.files.atomic
import mixconv.files.weights
import pytest
from training_fixtures import (  # noqa: F401
    REPO,
    cli_args,
    image_folder,
    run_cli,
    tiny_model,
    tiny_settings,
)

import mixconv.training.main
import mixconv.training.state
from mixconv.files.weights import read_training_checkpoint
from mixconv.training.state import load_state


def rows(out: Path) -> list[int]:
    with open(out / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".tmp", ".partial")))


def fail_nth_write(monkeypatch, name: str, nth: int, code: int, nbytes: int = 100) -> None:
    """The ``nth`` write of the run-directory file ``name`` stops after ``nbytes`` bytes with ``OSError(code)``.

    The real writer runs into the temporary file, which is then cut to ``nbytes`` (a partial write) before the
    error is raised: what the atomic writer sees when the disk fills up in the middle of a file.
    """
    original = mixconv.files.atomic.atomic_write
    calls = {"n": 0}

    def atomic_write(path, write):
        if Path(path).name not in (name, f".{name}.partial"):
            return original(path, write)
        calls["n"] += 1
        if calls["n"] != nth:
            return original(path, write)

        def partial(tmp):
            write(tmp)
            os.truncate(tmp, min(nbytes, os.path.getsize(tmp)))
            raise OSError(code, os.strerror(code))

        return original(path, partial)

    for module in (mixconv.files.weights, mixconv.training.main, mixconv.training.state):
        monkeypatch.setattr(module, "atomic_write", atomic_write)


# (file, which of its writes fails, errno, the checkpoint epoch left, the metrics rows left) in a 2-epoch run:
# metrics.csv is written when the run starts and after every epoch's checkpoint, summary.json after metrics.csv.
CASES = [
    ("last.state.pt", 2, errno.ENOSPC, 1, [1]),
    ("last.safetensors", 2, errno.EIO, 1, [1]),
    ("metrics.csv", 3, errno.ENOSPC, 2, [1]),
    ("summary.json", 2, errno.ENOSPC, 2, [1, 2]),
]


@pytest.mark.parametrize("name,nth,code,kept,kept_rows", CASES, ids=[c[0] for c in CASES])
def test_failed_write_keeps_the_previous_files_and_resume_works(name, nth, code, kept, kept_rows, tiny_model,
                                                                image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    settings = tiny_settings(tiny_model, str(image_folder), out, epochs=2)
    fail_nth_write(monkeypatch, name, nth, code)
    r = run_cli("train", *cli_args(settings))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    reason = f"{os.strerror(code)} ({errno.errorcode[code]})"
    assert f"mixconv train: error: could not write {out / name}: {reason}; stopping: the checkpoint of epoch " \
           f"{kept} ({out / 'last.state.pt'})" in r.stderr
    assert f"--resume {out}" in r.stderr
    # what was on disk before the failed write is there, whole; nothing half-written is left behind
    assert load_state(out / "last.state.pt")["epoch"] == kept
    assert read_training_checkpoint(out / "last.safetensors")[1]["epoch"] == kept
    assert rows(out) == kept_rows
    assert leftovers(out) == []
    monkeypatch.undo()  # the space is back
    r = run_cli("train", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    # a failure after the last checkpoint: nothing to train, but metrics.csv gets the rows it missed
    assert (f"resumed at epoch {kept}" if kept < 2 else "is finished") in r.stderr
    assert rows(out) == [1, 2]


def test_failed_first_write_says_nothing_was_kept(tiny_model, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_nth_write(monkeypatch, "config.yaml", 1, errno.ENOSPC)
    r = run_cli("train", *cli_args(tiny_settings(tiny_model, str(image_folder), out, epochs=1)))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"could not write {out / 'config.yaml'}: No space left on device (ENOSPC); stopping: no checkpoint " \
           "was written yet" in r.stderr
    assert not (out / "config.yaml").exists() and leftovers(out) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
@pytest.mark.parametrize("victim", ["last.safetensors", "last.state.pt"])
def test_real_write_limit_in_a_subprocess(victim, tiny_model, image_folder, tmp_path):
    """A real failing write (the OS refuses bytes past RLIMIT_FSIZE: EFBIG), in safetensors' Rust writer or in
    Python's: the same clear stop, the previous checkpoint kept, and --resume afterwards."""
    out = tmp_path / "run"
    r = run_cli("train", *cli_args(tiny_settings(tiny_model, str(image_folder), out, epochs=1)))
    assert r.returncode == 0, r.stderr
    weights, state = (out / "last.safetensors").stat().st_size, (out / "last.state.pt").stat().st_size
    limit = weights // 2 if victim == "last.safetensors" else (weights + state) // 2
    small = ("config.yaml", "metrics.csv", "summary.json")
    assert max((out / n).stat().st_size for n in small) < limit < state  # the small files still fit
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "from mixconv.cli import main\n"
            f"sys.exit(main(['train', '--resume', {str(out)!r}, '--epochs', '2']))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert f"could not write {out / victim}: " in p.stderr and "File too large" in p.stderr
    assert "the checkpoint of epoch 1" in p.stderr
    assert load_state(out / "last.state.pt")["epoch"] == 1 and rows(out) == [1]
    assert read_training_checkpoint(out / "last.safetensors")[1]["epoch"] == 1 and leftovers(out) == []
    r = run_cli("train", "--resume", str(out), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert rows(out) == [1, 2]
