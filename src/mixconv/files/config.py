"""YAML model configs (the NetsPresso Trainer MixNet schema) read into and written from :class:`MixNetSpec`.

The YAML is an import format: it is validated here, at the boundary, and modules only ever see the typed
spec. Every error is a :class:`ConfigError` naming the file, the stage, the field, the value and what was
expected.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from mixconv.files.inputs import MixconvInputError, read_yaml, short_repr
from mixconv.layers.activations import ACTIVATION_NAMES
from mixconv.layers.padding import PADDING_MODES
from mixconv.models.builder import scaled_repeats
from mixconv.models.specs import BlockRow, MixNetSpec

STAGE_FIELDS = (
    "expansion_ratio", "out_channels", "num_blocks", "kernel_sizes", "num_exp_groups", "num_poi_groups",
    "stride", "act_type", "se_reduction_ratio",
)
PARAM_FIELDS = ("stem_channels", "wid_mul", "dep_mul", "dropout_rate", "padding", "bn_eps", "num_features")


class ConfigError(MixconvInputError):
    """A model config (or training setting) that cannot be read or does not match the schema."""


def _where(source: str, stage: int | None, field: str) -> str:
    loc = f"{source}: " if source else ""
    if stage is not None:
        loc += f"stage_params[{stage}]."
    return f"{loc}{field}"


def _fail(source: str, stage: int | None, field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{_where(source, stage, field)}: got {short_repr(value)}; expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _find_backbone(doc: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: the document must be a mapping with model.architecture.backbone, got {type(doc).__name__}")
    if "model" in doc:
        try:
            backbone = doc["model"]["architecture"]["backbone"]
        except (KeyError, TypeError):
            raise ConfigError(f"{source}: model.architecture.backbone is missing; expected the MixNet backbone mapping") from None
    elif "backbone" in doc:
        backbone = doc["backbone"]
    else:
        backbone = doc
    if not isinstance(backbone, Mapping) or "stage_params" not in backbone:
        raise ConfigError(
            f"{source}: no MixNet backbone found; expected model.architecture.backbone (or backbone) with "
            "'params' and 'stage_params'"
        )
    name = backbone.get("name", "mixnet")
    if name != "mixnet":
        raise _fail(source, None, "name", name, "'mixnet'")
    unknown = set(backbone) - {"name", "params", "stage_params"}
    if unknown:
        raise _fail(source, None, sorted(unknown)[0], backbone[sorted(unknown)[0]], "only name, params and stage_params in the backbone")
    return backbone


def _parse_params(params: Any, source: str) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise _fail(source, None, "params", params, "a mapping with stem_channels (required) and optional fields")
    for key in params:
        if key not in PARAM_FIELDS:
            raise _fail(source, None, f"params.{key}", params[key], f"one of the fields {', '.join(PARAM_FIELDS)}")
    if "stem_channels" not in params:
        raise ConfigError(f"{_where(source, None, 'params.stem_channels')}: missing; expected a positive int")
    out: dict[str, Any] = {}
    checks = {
        "stem_channels": (lambda v: _is_int(v) and v > 0, "a positive int"),
        "num_features": (lambda v: _is_int(v) and v > 0, "a positive int"),
        "wid_mul": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "dep_mul": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "dropout_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "bn_eps": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "padding": (lambda v: v in PADDING_MODES, f"one of {', '.join(PADDING_MODES)}"),
    }
    for key, value in params.items():
        ok, expected = checks[key]
        if not ok(value):
            raise _fail(source, None, f"params.{key}", value, expected)
        out[key] = value
    return out


def _check_entry(field: str, v: Any) -> str | None:
    """Return what was expected if ``v`` is not a valid entry of list ``field``, else None."""
    if field == "kernel_sizes":
        ks = [v] if _is_int(v) else v
        if not isinstance(ks, list) or not ks or not all(_is_int(k) and k > 0 and k % 2 == 1 for k in ks):
            return "a non-empty list of odd positive kernel sizes such as [3, 5, 7]"
    elif field == "act_type":
        if not isinstance(v, str) or v.lower() not in ACTIVATION_NAMES:
            return f"an activation name, one of {', '.join(ACTIVATION_NAMES)}"
    elif field == "se_reduction_ratio":
        if v is not None and not (_is_number(v) and v > 0):
            return "a positive number (SE width = block input channels / ratio) or ~ for no SE"
    elif not (_is_int(v) and v > 0):
        return "a positive int"
    return None


def _parse_stage(stage: Any, index: int, source: str) -> tuple[BlockRow, ...]:
    if not isinstance(stage, Mapping):
        raise _fail(source, index, "", stage, f"a mapping with the lists {', '.join(STAGE_FIELDS)}")
    for key in stage:
        if key not in STAGE_FIELDS:
            raise _fail(source, index, str(key), stage[key], f"one of the fields {', '.join(STAGE_FIELDS)}")
    for field in STAGE_FIELDS:
        if field not in stage:
            raise ConfigError(f"{_where(source, index, field)}: missing; every stage needs all of {', '.join(STAGE_FIELDS)}")
        if not isinstance(stage[field], list) or not stage[field]:
            raise _fail(source, index, field, stage[field], "a non-empty list with one entry per block row")
    length = len(stage["expansion_ratio"])
    for field in STAGE_FIELDS:
        if len(stage[field]) != length:
            raise _fail(
                source, index, field, stage[field],
                f"a list of length {length} (as expansion_ratio); all nine lists need equal lengths",
            )
        for j, v in enumerate(stage[field]):
            expected = _check_entry(field, v)
            if expected:
                raise _fail(source, index, f"{field}[{j}]", v, expected)
    rows = []
    for j in range(length):
        ks = stage["kernel_sizes"][j]
        try:
            rows.append(BlockRow(
                kernel_sizes=tuple([ks] if _is_int(ks) else ks),
                out_channels=stage["out_channels"][j], num_blocks=stage["num_blocks"][j], stride=stage["stride"][j],
                expansion=stage["expansion_ratio"][j], exp_groups=stage["num_exp_groups"][j],
                poi_groups=stage["num_poi_groups"][j], se_reduction=stage["se_reduction_ratio"][j],
                act=stage["act_type"][j],
            ))
        except ValueError as e:
            raise ConfigError(f"{_where(source, index, f'row {j}')}: {e}") from None
    return tuple(rows)


def spec_from_dict(doc: Any, source: str = "<config>") -> MixNetSpec:
    """Validate a parsed YAML document (any of the accepted layouts) into a :class:`MixNetSpec`."""
    backbone = _find_backbone(doc, source)
    params = _parse_params(backbone.get("params", {}), source)
    stages_raw = backbone["stage_params"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise _fail(source, None, "stage_params", stages_raw, "a non-empty list of stages")
    stages = tuple(_parse_stage(s, i, source) for i, s in enumerate(stages_raw))
    try:
        return MixNetSpec(
            stem_channels=params["stem_channels"], stages=stages, width_mult=float(params.get("wid_mul", 1.0)),
            depth_mult=float(params.get("dep_mul", 1.0)), depth_rule="ceil",
            num_features=params.get("num_features", 1536), drop_rate=float(params.get("dropout_rate", 0.0)),
            padding=params.get("padding", "symmetric"), bn_eps=float(params.get("bn_eps", 1e-5)),
        )
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path) -> MixNetSpec:
    """Read a MixNet YAML file into a :class:`MixNetSpec`; any problem raises :class:`ConfigError`."""
    doc = read_yaml(path, "a MixNet model config (YAML)", ConfigError)
    return spec_from_dict(doc, str(path))


def is_config_path(name: str | Path) -> bool:
    return str(name).lower().endswith((".yaml", ".yml"))


def spec_to_dict(spec: MixNetSpec) -> dict[str, Any]:
    """The YAML document for ``spec``; building from it gives the same network.

    A spec using the reference per-stage depth rule is written with its repeats already scaled (and
    ``dep_mul: 1.0``), since the YAML schema scales each row on its own.
    """
    if spec.depth_rule == "timm" and spec.depth_mult != 1.0:
        stages = tuple(
            tuple(replace(r, num_blocks=n) for r, n in zip(stage, repeats))
            for stage, repeats in zip(spec.stages, scaled_repeats(spec))
        )
        spec = replace(spec, stages=stages, depth_mult=1.0, depth_rule="ceil")
    params: dict[str, Any] = {
        "stem_channels": spec.stem_channels, "wid_mul": spec.width_mult, "dep_mul": spec.depth_mult,
        "dropout_rate": spec.drop_rate, "padding": spec.padding, "bn_eps": spec.bn_eps,
        "num_features": spec.num_features,
    }
    stage_params = []
    for stage in spec.stages:
        if any(r.split != "equal" or r.dilation != 1 for r in stage):
            raise ConfigError("the YAML schema has no field for exponential splits or dilation; cannot write this spec")
        stage_params.append({
            "expansion_ratio": [r.expansion for r in stage],
            "out_channels": [r.out_channels for r in stage],
            "num_blocks": [r.num_blocks for r in stage],
            "kernel_sizes": [list(r.kernel_sizes) for r in stage],
            "num_exp_groups": [r.exp_groups for r in stage],
            "num_poi_groups": [r.poi_groups for r in stage],
            "stride": [r.stride for r in stage],
            "act_type": [r.act for r in stage],
            "se_reduction_ratio": [_plain_number(r.se_reduction) for r in stage],
        })
    return {"model": {"architecture": {"backbone": {"name": "mixnet", "params": params, "stage_params": stage_params}}}}


def _plain_number(v: float | None) -> int | float | None:
    return int(v) if v is not None and float(v).is_integer() else v


def config_to_yaml(spec: MixNetSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None)


def save_config(model_or_spec: Any, path: str | Path) -> Path:
    """Write a model's (or a spec's) architecture as a YAML config that :func:`load_config` rebuilds."""
    spec = model_or_spec if isinstance(model_or_spec, MixNetSpec) else getattr(model_or_spec, "spec", None)
    if not isinstance(spec, MixNetSpec):
        raise TypeError(f"save_config needs a MixNetSpec or a mixconv model, got {type(model_or_spec).__name__}")
    path = Path(path)
    path.write_text(config_to_yaml(spec), encoding="utf-8")
    return path
