"""``mixconv verify``: read a checkpoint, training state or ONNX file and check its recorded hashes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mixconv.files.inputs import load_onnx
from mixconv.files.integrity import (
    HashCheck,
    file_sha256,
    hub_check,
    nested_tensors,
    recorded_check,
)
from mixconv.files.weights import (
    CHECKPOINT_EXPECTED,
    load_torch_file,
    read_safetensors,
    unnest_state_dict,
)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_file` found: the format, the tensors, and each recorded hash against the computed one."""

    path: Path
    format: str
    num_tensors: int
    num_elements: int
    file_sha256: str
    checks: tuple[HashCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def status(self) -> str:
        if not self.ok:
            return "CORRUPTED"
        return "OK" if self.checks else "OK (readable; no recorded hash to compare)"

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "format": self.format, "tensors": self.num_tensors,
                "elements": self.num_elements, "file_sha256": self.file_sha256, "status": self.status,
                "checks": [{"source": c.source, "recorded": c.recorded, "computed": c.computed, "ok": c.ok}
                           for c in self.checks]}

    def __str__(self) -> str:
        lines = [f"file:     {self.path}", f"format:   {self.format}",
                 f"tensors:  {self.num_tensors} ({self.num_elements:,} elements)", f"sha256:   {self.file_sha256}"]
        for c in self.checks:
            verdict = "OK" if c.ok else "MISMATCH"
            lines += [f"recorded: {c.recorded}  ({c.source})", f"computed: {c.computed}  {verdict}"]
        return "\n".join(lines + [f"status:   {self.status}"])


def verify_file(path: str | Path) -> VerifyReport:
    """Read a checkpoint, training state or ONNX file and compare its recorded hashes with computed ones.

    A file that cannot be read raises :class:`~mixconv.files.inputs.MixconvInputError` (a
    :class:`~mixconv.files.weights.CheckpointError` for weights); a hash mismatch is reported, not raised.
    """
    path = Path(path)
    checks: list[HashCheck] = []
    if path.suffix == ".onnx":
        model = load_onnx(path)
        sizes = [math.prod(t.dims) for t in model.graph.initializer]
        return VerifyReport(path, f"ONNX (opset {', '.join(str(o.version) for o in model.opset_import)}, checked by "
                            "onnx.checker)", len(sizes), sum(sizes), file_sha256(path), ())
    hub = hub_check(path)
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        fmt = f"mixconv checkpoint ({meta['format']}, safetensors)" if meta.get("format", "").startswith("mixconv") \
            else "safetensors state dict"
    else:
        obj = load_torch_file(path, CHECKPOINT_EXPECTED)
        if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("mixconv-train"):
            tensors, meta, fmt = nested_tensors(obj), obj, f"mixconv training state ({obj['format']}, torch.save)"
        else:
            tensors, meta, fmt = unnest_state_dict(obj, path), {}, "PyTorch state dict (torch.save)"
    checks += [c for c in (hub, recorded_check(tensors, meta)) if c is not None]
    return VerifyReport(path, fmt, len(tensors), sum(t.numel() for t in tensors.values()), file_sha256(path),
                        tuple(checks))
