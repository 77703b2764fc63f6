"""What a conversion did, and which outputs are hub folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_checkpoint` did."""

    direction: str  # "timm->mixconv" or "mixconv->timm"
    model_name: str
    num_classes: int
    in_chans: int
    num_tensors: int
    output: Path

    def __str__(self) -> str:
        return (f"{self.direction}: {self.model_name} ({self.num_classes} classes, {self.in_chans} input channels, "
                f"{self.num_tensors} tensors) -> {self.output}")


def is_folder_output(dst: str | Path) -> bool:
    """An output named ``DIR/`` (or an existing directory, or a name without suffix) is a hub folder."""
    text = str(dst)
    return text.endswith(("/", "\\")) or Path(text).is_dir() or not Path(text).suffix
