"""Atomic file writes: a crash or a full disk leaves the previous file whole."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a file that must pass a check before it is published.

    Write and check the file at the yielded path inside the ``with`` block; when the block ends without an
    exception the file is fsynced and renamed over ``path``, otherwise it is removed. A failed check (or a crash)
    therefore leaves nothing new at ``path``, and a previous file there whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode open() would give it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename over ``path``: a crash leaves the old file intact."""
    with staged_file(path) as tmp:
        write(str(tmp))
    return Path(path)
