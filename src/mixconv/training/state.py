"""Training checkpoints.

A run directory holds, per checkpoint name (``last``, ``best``):

- ``NAME.safetensors``: the weights to evaluate (the EMA weights when EMA is on) with the model config, class
  names and preprocessing in the header, so ``validate``/``predict``/``export`` need nothing else;
- ``last.state.pt`` (for ``last`` only): everything to resume: raw and EMA weights, optimizer, scheduler,
  scaler, epoch, RNG states and the metrics history. It holds tensors and plain containers only and is
  read with ``torch.load(weights_only=True)``.

Every file is written through a temporary file, fsync and rename: a kill during a write leaves the previous
file. The files of one checkpoint are written in full first and renamed into place together
(:func:`commit_checkpoint`), so a write that fails (disk full, I/O error) leaves the previous checkpoint whole.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mixconv.files.atomic import atomic_write
from mixconv.files.inputs import CheckpointError
from mixconv.files.integrity import (
    HASH_FIELD,
    nested_tensors,
    recorded_check,
    tensors_sha256,
)
from mixconv.files.weights import (
    load_torch_file,
    raise_if_corrupted,
    save_checkpoint,
)
from mixconv.training.errors import writing

STATE_FORMAT = "mixconv-train/1"
STATE_SUFFIX = ".state.pt"
STATE_KEYS = ("epoch", "best_top1", "best_epoch", "history", "model", "optimizer", "scheduler", "rng")


def checkpoint_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / f"{name}.safetensors", out_dir / f"{name}{STATE_SUFFIX}"


def save_weights(model: nn.Module, path: Path, extra: Mapping[str, Any]) -> Path:
    """The self-describing eval checkpoint (safetensors, atomic)."""
    return save_checkpoint(model, path, extra=extra)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: Path, state: Mapping[str, Any]) -> Path:
    """Write the resume state atomically."""
    payload = {"format": STATE_FORMAT, **state}
    payload[HASH_FIELD] = tensors_sha256(nested_tensors(payload))  # checked by load_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    # Written by Python (not torch.save's C++ writer) so that a full disk raises OSError(ENOSPC), not a
    # RuntimeError about stream positions.
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getbuffer()))


def commit_checkpoint(out_dir: Path, model: nn.Module, extra: Mapping[str, Any], names: Sequence[str],
                      state: Mapping[str, Any]) -> None:
    """Write ``NAME.safetensors`` for each of ``names`` and ``last.state.pt`` as one unit.

    Each file is first written in full beside its target (``.NAME.partial``); only when all are written are they
    renamed into place. A write that fails raises :class:`~mixconv.training.errors.WriteError` naming the file
    and leaves the previous checkpoint's files as they were.
    """
    jobs = [(checkpoint_paths(out_dir, n)[0], lambda p: save_weights(model, p, extra)) for n in names]
    jobs.append((checkpoint_paths(out_dir, "last")[1], lambda p: save_state(p, state)))
    staged: list[tuple[Path, Path]] = []
    try:
        for final, write in jobs:
            partial = final.with_name(f".{final.name}.partial")
            with writing(final):
                write(partial)
            staged.append((partial, final))
        for partial, final in staged:
            with writing(final):
                os.replace(partial, final)
        dir_fd = os.open(out_dir, os.O_RDONLY)  # make the renames themselves durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)


def load_state(path: Path) -> dict[str, Any]:
    """Read a resume state with ``weights_only=True`` (no code runs)."""
    state = load_torch_file(path, f"the training state ({STATE_SUFFIX}) written next to last.safetensors by "
                                  "`mixconv train`")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a mixconv training state (format {STATE_FORMAT} expected)")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: damaged training state: no {', '.join(missing)}; expected "
                              f"{', '.join(STATE_KEYS)}")
    raise_if_corrupted(path, recorded_check(nested_tensors(state), state))  # older states: no hash, unchecked
    return state


def find_resume_state(target: str | Path) -> Path:
    """``--resume DIR`` (its ``last.state.pt``) or a checkpoint file (its ``.state.pt`` sibling)."""
    p = Path(target)
    if p.is_dir():
        return checkpoint_paths(p, "last")[1]
    if p.name.endswith(STATE_SUFFIX):
        return p
    if p.suffix == ".safetensors":
        return p.with_name(p.name[: -len(".safetensors")] + STATE_SUFFIX)
    if not p.exists():
        raise CheckpointError(f"--resume {target}: no such directory or checkpoint")
    raise CheckpointError(f"--resume {target}: expected a run directory, last.safetensors or last{STATE_SUFFIX}")


