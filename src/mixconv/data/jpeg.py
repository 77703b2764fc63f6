"""GPU JPEG decoding for ImageFolder data: workers only read the files; the main process decodes a whole batch
with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``) and runs the transforms on the GPU, so that
the CPU is no longer what limits a GPU's images/s.

Non-JPEG files are decoded on the CPU (``decode_image``) and moved over; unreadable ones are skipped with a
warning naming the file, as the CPU pipeline does. With ``device="cpu"`` the same pipeline runs on the CPU
(tests).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file


class EncodedImageFolder(datasets.ImageFolder):
    """An ImageFolder whose samples are the encoded file bytes (a uint8 tensor), the target and the path."""

    def __init__(self, root: str) -> None:
        super().__init__(root, loader=read_file)

    def __getitem__(self, i: int) -> tuple[Any, int, str] | None:  # type: ignore[override]
        path, target = self.samples[i]
        try:
            return read_file(path), target, path
        except (OSError, RuntimeError) as e:
            print(f"warning: skipping unreadable image {path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None


def collate_encoded(batch: Sequence[Any]) -> tuple[list[torch.Tensor], torch.Tensor, list[str], int]:
    """Encoded bytes (a list: sizes differ), targets, paths, and the number of unreadable samples."""
    good = [b for b in batch if b is not None]
    return ([b[0] for b in good], torch.tensor([b[1] for b in good], dtype=torch.long), [b[2] for b in good],
            len(batch) - len(good))


def decode_batch(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 ``(3, H, W)`` images on ``device``: one batched nvJPEG call, per-image fallbacks on failure;
    ``None`` for a file that cannot be decoded (warned about)."""
    if not data:
        return []
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass  # some file is not a (valid) JPEG: decode one by one
    out: list[torch.Tensor | None] = []
    for d, path in zip(data, paths):
        try:
            out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            try:
                out.append(decode_image(d, mode=ImageReadMode.RGB).to(device))
            except RuntimeError as e:
                print(f"warning: skipping undecodable image {path}: {e}", file=sys.stderr, flush=True)
                out.append(None)
    return out


class DeviceDecodeLoader:
    """Wraps a loader of :func:`collate_encoded` batches: yields ``(images, targets, skipped)`` like the CPU
    pipeline's loaders, with the images decoded and transformed on ``device`` and stacked there."""

    def __init__(self, loader: DataLoader, transform: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device) -> None:
        self.loader, self.transform, self.device = loader, transform, device
        self.dataset, self.sampler = loader.dataset, loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, int]]:
        for data, targets, paths, skipped in self.loader:
            images = decode_batch(data, paths, self.device)
            keep = [i for i, img in enumerate(images) if img is not None]
            skipped += len(images) - len(keep)
            if not keep:
                yield None, None, skipped
                continue
            batch = torch.stack([torch.as_tensor(self.transform(images[i])) for i in keep])
            yield batch, targets[keep].to(self.device, non_blocking=True), skipped
