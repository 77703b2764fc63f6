"""What an ONNX file needs to be used on its own: preprocessing, class names and data, in its metadata.

Stored as ONNX ``metadata_props`` (string key/value pairs, readable by any ONNX tool and by onnxruntime's
``session.get_modelmeta().custom_metadata_map``) under ``mixconv.*`` keys, values JSON:

- ``mixconv.preprocess``: ``{"img_size", "crop_pct", "interpolation", "mean", "std"}`` (the eval transform:
  resize the short side to ``img_size / crop_pct``, center crop, normalise);
- ``mixconv.classes``: the class names in output order (absent: ``"0"``, ``"1"``, ...);
- ``mixconv.model_name``, ``mixconv.data`` and ``mixconv.val_fraction``: what the model is and what it was
  trained on (so ``mixconv validate --onnx`` and ``mixconv quantize`` find their data like a checkpoint does).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from mixconv.files.config import ConfigError
from mixconv.models.pretrained_cfg import Preprocess

PREFIX = "mixconv."
KEYS = ("preprocess", "classes", "model_name", "data", "val_fraction")


class MetadataError(ConfigError):
    """An ONNX file whose mixconv metadata is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class OnnxMetadata:
    """The mixconv metadata of one ONNX file (every field optional)."""

    preprocess: Optional[Preprocess] = None
    classes: Optional[list[str]] = None
    model_name: str = ""
    data: Optional[str] = None
    val_fraction: float = 0.2

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (``mixconv.*`` keys, JSON values)."""
        values: dict[str, Any] = {"model_name": self.model_name, "val_fraction": self.val_fraction}
        if self.preprocess is not None:
            values["preprocess"] = self.preprocess.to_dict()
        if self.classes is not None:
            values["classes"] = list(self.classes)
        if self.data is not None:
            values["data"] = self.data
        return {PREFIX + k: json.dumps(v) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "OnnxMetadata":
        values: dict[str, Any] = {}
        for key in KEYS:
            if PREFIX + key not in props:
                continue
            try:
                values[key] = json.loads(props[PREFIX + key])
            except json.JSONDecodeError:
                raise MetadataError(f"{source}: metadata {PREFIX}{key} is not valid JSON") from None
        try:
            pre = Preprocess.from_dict(values["preprocess"]) if "preprocess" in values else None
        except (KeyError, TypeError, ValueError) as e:
            raise MetadataError(f"{source}: metadata {PREFIX}preprocess: expected img_size, crop_pct, "
                                f"interpolation, mean and std ({type(e).__name__}: {e})") from None
        classes = values.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise MetadataError(f"{source}: metadata {PREFIX}classes: expected a list of class names")
        return cls(pre, classes, str(values.get("model_name", "")), values.get("data"),
                   float(values.get("val_fraction", 0.2)))


def model_metadata(model: nn.Module, img_size: int | tuple[int, int] | None = None,
                   extra: Optional[Mapping[str, Any]] = None) -> OnnxMetadata:
    """The metadata of ``model`` exported at ``img_size``: the preprocessing, classes and data of a mixconv
    training checkpoint's ``extra`` when given, else the model's own ``meta`` (its timm/ImageNet defaults)."""
    extra = dict(extra or {})
    if "preprocess" in extra:
        pre = Preprocess.from_dict(extra["preprocess"])
    else:
        meta = getattr(model, "meta", None)
        if meta is None:
            from mixconv.models import ModelMeta

            meta = ModelMeta()
        pre = Preprocess(int(meta.input_size[-1]), float(meta.crop_pct), str(meta.interpolation),
                         tuple(meta.mean), tuple(meta.std))
    if img_size is not None:
        size = img_size if isinstance(img_size, int) else int(img_size[0])
        pre = replace(pre, img_size=size)
    cfg = extra.get("train_config") or {}
    return OnnxMetadata(pre, extra.get("classes"), str(getattr(model, "model_name", "") or ""), extra.get("data"),
                        float(cfg.get("val_fraction", 0.2)))


def set_metadata(model_proto: Any, metadata: OnnxMetadata) -> None:
    """Write ``metadata`` into an ``onnx.ModelProto`` in place (replacing earlier ``mixconv.*`` entries)."""
    props = metadata.to_props()
    kept = [(p.key, p.value) for p in model_proto.metadata_props if not p.key.startswith(PREFIX)]
    del model_proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def write_metadata(path: str | Path, metadata: OnnxMetadata) -> None:
    """Rewrite the ONNX file at ``path`` (atomically) with ``metadata``."""
    import onnx

    from mixconv.files.atomic import atomic_write

    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    atomic_write(Path(path), lambda tmp: onnx.save(proto, tmp))


def read_metadata(path: str | Path) -> OnnxMetadata:
    """The mixconv metadata of an ONNX file (defaults where a key is absent)."""
    from mixconv.files.inputs import load_onnx

    return metadata_of(load_onnx(path, check=False, error=MetadataError), path)


def metadata_of(proto: Any, source: str | Path) -> OnnxMetadata:
    """The mixconv metadata of a loaded ``onnx.ModelProto`` (``source`` names it in errors)."""
    return OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(source))


def checkpoint_metadata(model: nn.Module, checkpoint: str | Path | None,
                        img_size: int | tuple[int, int] | None = None) -> OnnxMetadata:
    """:func:`model_metadata` with what a mixconv training checkpoint records (none for other checkpoints)."""
    extra: dict[str, Any] = {}
    if checkpoint:
        from mixconv.files.weights import read_training_checkpoint

        extra = read_training_checkpoint(checkpoint)[1]
    return model_metadata(model, img_size, extra)
