"""Search-space YAML files read into and written from :class:`~mixconv.models.space.SearchSpace`.

The document is a mapping under ``search_space``: either ``preset: NAME`` (``mixnet-s``, ``small``, ``tiny``)
with optional top-level settings on top, or the whole space::

    search_space:
      stem_channels: 16
      num_features: 512
      width_mult: 0.5
      se_reduction: 2
      defaults: {kernel_groups: [1, 2, 3, 4, 5], expansions: [3, 6], acts: [relu, swish], se: [false, true],
                 groups: [1, 2]}
      layers:
        - {out_channels: 16, expansions: [1]}
        - {out_channels: 24, stride: 2}
        - {out_channels: 24, skippable: true}

Each layer takes the ``defaults`` (or the paper's choices) for any choice it does not name. Every error is a
:class:`~mixconv.files.config.ConfigError` naming the file and the field.
"""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError
from mixconv.files.inputs import read_yaml, short_repr
from mixconv.models.space import PRESETS, LayerSlot, SearchSpace

SPACE_KEY = "search_space"
SETTINGS = ("name", "stem_channels", "num_features", "width_mult", "se_reduction", "drop_rate", "stem_act")
CHOICES = ("kernel_groups", "expansions", "acts", "se", "groups")
LAYER_FIELDS = ("out_channels", "stride", "skippable", *CHOICES)


def is_space_document(doc: Any) -> bool:
    return isinstance(doc, Mapping) and SPACE_KEY in doc


def _fail(source: str, where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {SPACE_KEY}.{where}: got {short_repr(value)}; expected {expected}")


def _layer(doc: Any, i: int, defaults: Mapping[str, Any], source: str) -> LayerSlot:
    if not isinstance(doc, Mapping):
        raise _fail(source, f"layers[{i}]", doc, "a mapping with out_channels and optional stride, skippable "
                                                 f"and choices ({', '.join(CHOICES)})")
    for key in doc:
        if key not in LAYER_FIELDS:
            raise _fail(source, f"layers[{i}].{key}", doc[key], f"one of the fields {', '.join(LAYER_FIELDS)}")
    if "out_channels" not in doc:
        raise ConfigError(f"{source}: {SPACE_KEY}.layers[{i}].out_channels: missing; expected an int >= 8")
    values = {**defaults, **doc}
    for key in CHOICES:
        if key in values and not isinstance(values[key], list):
            raise _fail(source, f"layers[{i}].{key}", values[key], "a list of choices")
        if key in values:
            values[key] = tuple(values[key])
    try:
        return LayerSlot(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {SPACE_KEY}.layers[{i}]: {e}") from None


def space_from_dict(doc: Any, source: str = "<space>") -> SearchSpace:
    """Validate a parsed YAML document into a :class:`SearchSpace`."""
    if not is_space_document(doc):
        raise ConfigError(f"{source}: expected a mapping with a '{SPACE_KEY}' key (a search space)")
    body = doc[SPACE_KEY]
    if not isinstance(body, Mapping):
        raise _fail(source, "", body, "a mapping (preset: NAME, or layers: [...])")
    allowed = (*SETTINGS, "preset", "defaults", "layers")
    for key in body:
        if key not in allowed:
            raise _fail(source, str(key), body[key], f"one of the fields {', '.join(allowed)}")
    settings = {k: body[k] for k in SETTINGS if k in body}
    try:
        if "preset" in body:
            if body["preset"] not in PRESETS:
                raise _fail(source, "preset", body["preset"], f"one of {', '.join(PRESETS)}")
            if "layers" in body or "defaults" in body:
                raise ConfigError(f"{source}: {SPACE_KEY}: give either preset or layers, not both")
            return replace(PRESETS[body["preset"]], **settings)
        defaults = body.get("defaults", {})
        if not isinstance(defaults, Mapping) or any(k not in CHOICES for k in defaults):
            raise _fail(source, "defaults", defaults, f"a mapping of choices ({', '.join(CHOICES)})")
        layers = body.get("layers")
        if not isinstance(layers, list) or not layers:
            raise _fail(source, "layers", layers, "a non-empty list of layers")
        slots = tuple(_layer(layer, i, defaults, source) for i, layer in enumerate(layers))
        return SearchSpace(layers=slots, **settings)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{source}: {SPACE_KEY}: {e}") from None


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A preset name or a search-space YAML file."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    doc = read_yaml(name_or_path, f"a search space (YAML with '{SPACE_KEY}') or a preset name "
                                  f"({', '.join(PRESETS)})", ConfigError)
    return space_from_dict(doc, str(name_or_path))


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """The full YAML document of ``space`` (every layer written out)."""
    default = {f.name: f.default for f in fields(LayerSlot) if f.name in CHOICES}
    body: dict[str, Any] = {k: getattr(space, k) for k in SETTINGS}
    body["layers"] = []
    for slot in space.layers:
        layer: dict[str, Any] = {"out_channels": slot.out_channels, "stride": slot.stride}
        if slot.skippable:
            layer["skippable"] = True
        for key in CHOICES:
            if getattr(slot, key) != default[key]:
                layer[key] = list(getattr(slot, key))
        body["layers"].append(layer)
    return {SPACE_KEY: body}


def space_to_yaml(space: SearchSpace) -> str:
    return yaml.safe_dump(space_to_dict(space), sort_keys=False, default_flow_style=None)


def save_space(space: SearchSpace, path: str | Path) -> Path:
    """Write ``space`` as YAML (atomically); :func:`load_space` reads it back equal."""
    text = space_to_yaml(space)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
