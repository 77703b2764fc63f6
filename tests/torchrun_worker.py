"""``mixconv`` as a torchrun worker, with two hooks for tests/test_training_elastic.py (set in the environment).

- ``MIXCONV_TEST_PID_DIR=DIR``: every worker writes its pid to ``DIR/rank<RANK>.attempt<RESTART_COUNT>.pid``.
- ``MIXCONV_TEST_PAUSE_EPOCH=E``: on the first attempt (``TORCHELASTIC_RESTART_COUNT`` 0), every rank stops
  after the first training step of epoch ``E`` (1-based), writes ``DIR/rank<RANK>.paused`` and sleeps, so the
  test can SIGKILL a worker at a known point in the middle of an epoch.
- ``MIXCONV_TEST_STEP_SLEEP=S``: every optimizer step takes ``S`` seconds longer and appends ``epoch step`` to
  ``DIR/rank<RANK>.steps``, so a test can send a signal in the middle of an epoch.

The hooks live here, in the test's launcher, not in the training loop.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import mixconv.training.main as training_main
from mixconv.cli import main

PID_DIR = Path(os.environ["MIXCONV_TEST_PID_DIR"])
PAUSE_EPOCH = int(os.environ.get("MIXCONV_TEST_PAUSE_EPOCH", "0"))
STEP_SLEEP = float(os.environ.get("MIXCONV_TEST_STEP_SLEEP", "0"))
RANK = os.environ.get("RANK", "0")
ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


class PauseAfterFirstBatch:
    """A loader that hands out its first batch, then announces the pause and sleeps (until killed)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        yield next(it)
        (PID_DIR / f"rank{RANK}.paused").write_text(str(os.getpid()))
        time.sleep(600)
        yield from it


def pausing(train_one_epoch):
    def wrapped(model, criterion, optimizer, scheduler, loader, epoch, *args, **kwargs):
        if epoch == PAUSE_EPOCH and ATTEMPT == "0":
            loader = PauseAfterFirstBatch(loader)
        return train_one_epoch(model, criterion, optimizer, scheduler, loader, epoch, *args, **kwargs)

    return wrapped


def slowed(after_step):
    def wrapped(t, tot):
        time.sleep(STEP_SLEEP)
        with open(PID_DIR / f"rank{RANK}.steps", "a") as f:
            f.write(f"{t.rs.epoch + 1} {tot.step}\n")
        return after_step(t, tot)

    return wrapped


if __name__ == "__main__":
    (PID_DIR / f"rank{RANK}.attempt{ATTEMPT}.pid").write_text(str(os.getpid()))
    training_main.train_one_epoch = pausing(training_main.train_one_epoch)
    if STEP_SLEEP:
        training_main._after_step = slowed(training_main._after_step)
    sys.exit(main(sys.argv[1:]))
