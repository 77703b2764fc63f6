"""Preemption: SIGTERM (what SLURM, Kubernetes and torchrun send before they kill) or SIGUSR1 (what SLURM's
``--signal`` can send ahead of time) stops a run cleanly.

The handler only records the signal. Every rank looks at the record after each optimizer step (one all-reduce,
so all ranks agree even when only some got the signal); they all stop there, rank 0 writes a step checkpoint,
and the process exits with :data:`EXIT_PREEMPTED`. A second signal while the checkpoint is written is only
recorded again: the write finishes (and a hard kill mid-write leaves the previous checkpoint, since every file
is renamed into place only when complete). Data-loader worker processes ignore both signals
(:func:`ignore_in_worker`): torchrun and SLURM signal the whole process group, and PyTorch's workers would
otherwise die on SIGTERM and take the step with them.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional

# EX_TEMPFAIL of sysexits.h, "temporary failure, the user is invited to retry": a preempted run exits with it
# after its checkpoint is written, so a scheduler (or a wrapper script) can tell it from a failure (1) and
# from a kill (128 + signal) and requeue it.
EXIT_PREEMPTED = 75
SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; ``--resume`` continues it exactly."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class _Watch:
    def __init__(self) -> None:
        self.signal: Optional[str] = None

    def __call__(self, signum: int, frame: object) -> None:
        first = self.signal is None
        self.signal = signal.Signals(signum).name
        if first:
            print(f"received {self.signal}: finishing the current step, then writing a checkpoint and exiting "
                  f"with {EXIT_PREEMPTED}", file=sys.stderr, flush=True)


_watch = _Watch()


def ignore_in_worker(worker_id: int) -> None:
    """A data loader's ``worker_init_fn``: the worker leaves the stop signals to the training process (which
    shuts it down when it exits)."""
    for name in SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def requested() -> Optional[str]:
    """The name of the stop signal this process received, or None."""
    return _watch.signal


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Record SIGTERM and SIGUSR1 while the block runs (the main thread only; elsewhere nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.getsignal(getattr(signal, name)) for name in SIGNALS}
    _watch.signal = None
    for name in SIGNALS:
        signal.signal(getattr(signal, name), _watch)
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        _watch.signal = None
