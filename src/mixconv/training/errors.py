"""Errors of a training run, and the guard that turns a failed file write into one clear message."""
from __future__ import annotations

import contextlib
import errno as errno_codes
import os
from pathlib import Path
from typing import Iterator

import safetensors


class TrainingError(RuntimeError):
    """A run that cannot start or had to stop; the message says why and what was kept."""


class WriteError(TrainingError):
    """A file of the run directory could not be written (disk full, I/O error, quota).

    Every file of a run directory is written to a temporary file and renamed into place, so the file that was
    there before (the previous checkpoint, the previous metrics) is still there, whole.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = path, reason


# What a failed write raises: OSError from Python's own writes (ENOSPC, EIO, EDQUOT, EFBIG), RuntimeError from
# torch.save's C++ writer, SafetensorError from safetensors' Rust writer ("I/O error: ... (os error 28)").
_WRITE_FAILURES = (OSError, RuntimeError, getattr(safetensors, "SafetensorError", OSError))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        name = errno_codes.errorcode.get(e.errno, str(e.errno))
        return f"{os.strerror(e.errno)} ({name})"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Raise :class:`WriteError` naming ``path`` when the write inside fails."""
    try:
        yield
    except WriteError:
        raise
    except _WRITE_FAILURES as e:
        raise WriteError(path, _reason(e)) from e
