"""Checksums of weights files.

Two conventions are checked whenever a checkpoint is read:

- torch.hub's (and so timm's download cache's): a file named ``name-<hex>.pth`` (``.pt``, ``.bin``) whose
  ``<hex>``, 8 to 64 lowercase hex digits after the last ``-`` of the stem, must begin the file's sha256, as
  ``torch.hub.download_url_to_file(..., hash_prefix)`` / ``check_hash`` check.
- mixconv's: a mixconv checkpoint records :func:`tensors_sha256` of its tensors in the safetensors header
  (``tensors_sha256``); it is recomputed on load. Checkpoints written before the field existed load unchecked.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

HASH_FIELD = "tensors_sha256"
HUB_SUFFIXES = (".pth", ".pt", ".bin")
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})$")
_CHUNK = 2**20


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hub_hash_prefix(path: str | Path) -> Optional[str]:
    """The hex digits a torch.hub-style name promises the sha256 starts with, or ``None``."""
    path = Path(path)
    if path.suffix not in HUB_SUFFIXES:
        return None
    m = _HUB_HASH.search(path.stem)
    return m.group(1) if m else None


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's content, independent of the file layout.

    Over the names in sorted order, each contributes its UTF-8 name, dtype, shape and raw (C-contiguous,
    native byte order) bytes, each field terminated by a NUL byte.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


@dataclass(frozen=True)
class HashCheck:
    """One recorded hash of a file compared with the one computed from it."""

    source: str  # where the recorded hash came from
    recorded: str
    computed: str
    exact: bool = False  # the whole digest (a header field), not a prefix (a file name)

    @property
    def ok(self) -> bool:
        if self.exact:
            return self.recorded == self.computed
        return len(self.recorded) >= 8 and self.computed.startswith(self.recorded)

    def describe(self, path: str | Path) -> str:
        recorded = f"sha256 {self.recorded}" if self.exact else f"a sha256 starting with {self.recorded}"
        hint = "" if self.exact else " (if the digits in its name are not a hash, rename the file)"
        return (f"{path}: corrupted: {self.source} records {recorded}, but the computed one is {self.computed}; "
                f"the file was damaged or altered after it was written{hint}")


def hub_check(path: str | Path) -> Optional[HashCheck]:
    """The torch.hub name check of ``path``, or ``None`` if its name carries no hash."""
    prefix = hub_hash_prefix(path)
    if prefix is None:
        return None
    return HashCheck("the file name (torch.hub convention: name-<sha256 prefix>.pth)", prefix, file_sha256(path))


def recorded_check(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[HashCheck]:
    """The check of a mixconv checkpoint's recorded :func:`tensors_sha256`, or ``None`` if it has none."""
    recorded = metadata.get(HASH_FIELD)
    if not recorded:
        return None
    if not isinstance(recorded, str):
        recorded = repr(recorded)  # a damaged field: reported as recorded, it cannot match
    return HashCheck(f"the header field {HASH_FIELD}", recorded.lower(), tensors_sha256(tensors), exact=True)


def nested_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors inside nested dicts, lists and tuples (a training state), named by their path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, Mapping):
        items = ((str(k), v) for k, v in obj.items() if k != HASH_FIELD)
    elif isinstance(obj, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(nested_tensors(value, f"{prefix}.{key}" if prefix else key))
    return out


