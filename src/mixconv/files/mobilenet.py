"""MixConv-MobileNet YAML files read into and written from :class:`~mixconv.models.mobilenet.MobileNetSpec`.

The document is a mapping under ``mobilenet``::

    mobilenet:
      version: 1              # MobileNetV1 (13 depthwise layers) or 2 (17)
      width_mult: 0.25
      depthwise: {kernel_sizes: [3, 5, 7, 9], split: equal, dilation: 1}   # every layer ...
      layers:                 # ... except these (1-based layer index, as the paper counts)
        7: {kernel_sizes: [9]}

``mixconv train --model FILE.yaml`` trains it; the paper studies (``mixconv study``) write one per arm. Every
error is a :class:`~mixconv.files.config.ConfigError` naming the file and the field.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import yaml

from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError
from mixconv.files.inputs import read_yaml, short_repr
from mixconv.models.mobilenet import VERSIONS, Depthwise, MobileNetSpec, depthwise_count

MOBILENET_KEY = "mobilenet"
TOP_FIELDS = ("version", "width_mult", "depthwise", "layers")
DW_FIELDS = ("kernel_sizes", "split", "dilation")


def is_mobilenet_document(doc: Any) -> bool:
    return isinstance(doc, Mapping) and MOBILENET_KEY in doc


def _fail(source: str, where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {MOBILENET_KEY}.{where}: got {short_repr(value)}; expected {expected}")


def _depthwise(doc: Any, base: Depthwise, source: str, where: str) -> Depthwise:
    if not isinstance(doc, Mapping):
        raise _fail(source, where, doc, f"a mapping of {', '.join(DW_FIELDS)}")
    for key, value in doc.items():
        if key not in DW_FIELDS:
            raise _fail(source, f"{where}.{key}", value, f"one of the fields {', '.join(DW_FIELDS)}")
    ks = doc.get("kernel_sizes", base.kernel_sizes)
    if isinstance(ks, int) and not isinstance(ks, bool):
        ks = [ks]
    values = {"kernel_sizes": tuple(ks) if isinstance(ks, (list, tuple)) else ks,
              "split": doc.get("split", base.split), "dilation": doc.get("dilation", base.dilation)}
    try:
        return Depthwise(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {MOBILENET_KEY}.{where}: {e}") from None


def mobilenet_from_dict(doc: Any, source: str = "<mobilenet>") -> MobileNetSpec:
    """Validate a parsed ``mobilenet:`` document into a :class:`MobileNetSpec`."""
    body = doc.get(MOBILENET_KEY) if isinstance(doc, Mapping) else None
    if not isinstance(body, Mapping):
        raise ConfigError(f"{source}: expected a mapping under {MOBILENET_KEY!r} with {', '.join(TOP_FIELDS)}")
    for key, value in body.items():
        if key not in TOP_FIELDS:
            raise _fail(source, str(key), value, f"one of the fields {', '.join(TOP_FIELDS)}")
    version = body.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        raise _fail(source, "version", version, "1 (MobileNetV1) or 2 (MobileNetV2)")
    width = body.get("width_mult", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise _fail(source, "width_mult", width, "a positive number")
    default = _depthwise(body.get("depthwise", {}), Depthwise(), source, "depthwise")
    layers = [default] * depthwise_count(version)
    overrides = body.get("layers") or {}
    if not isinstance(overrides, Mapping):
        raise _fail(source, "layers", overrides, "a mapping of 1-based layer index to a depthwise choice")
    for index, value in overrides.items():
        n = len(layers)
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= n:
            raise _fail(source, f"layers.{index}", value, f"a layer index in 1..{n} (MobileNetV{version} has {n} "
                                                            "depthwise layers)")
        layers[index - 1] = _depthwise(value, default, source, f"layers.{index}")
    return MobileNetSpec(version, tuple(layers), float(width))


def load_mobilenet(path: str | Path) -> MobileNetSpec:
    doc = read_yaml(path, "a MixConv-MobileNet config (YAML with 'mobilenet:')", ConfigError)
    return mobilenet_from_dict(doc, str(path))


def _dw_dict(dw: Depthwise, base: Depthwise | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kernel_sizes": list(dw.kernel_sizes)}
    for name in ("split", "dilation"):
        if base is None or getattr(dw, name) != getattr(base, name):
            out[name] = getattr(dw, name)
    return out


def mobilenet_to_dict(spec: MobileNetSpec) -> dict[str, Any]:
    """The document :func:`mobilenet_from_dict` reads back to ``spec``: the most common layer as ``depthwise``,
    the others under ``layers``."""
    default = Counter(spec.layers).most_common(1)[0][0]
    body: dict[str, Any] = {"version": spec.version, "width_mult": spec.width_mult, "depthwise": _dw_dict(default)}
    others = {i + 1: _dw_dict(dw, default) for i, dw in enumerate(spec.layers) if dw != default}
    if others:
        body["layers"] = others
    return {MOBILENET_KEY: body}


def mobilenet_to_yaml(spec: MobileNetSpec) -> str:
    return yaml.safe_dump(mobilenet_to_dict(spec), sort_keys=False, default_flow_style=None)


def save_mobilenet(spec: MobileNetSpec, path: str | Path, header: str = "") -> Path:
    """Write ``spec`` as YAML (atomically); ``header`` lines go first as comments."""
    text = mobilenet_to_yaml(spec)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
