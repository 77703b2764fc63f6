"""Checkpoint files: reading them safely, converting timm's MixNet keys, writing mixconv checkpoints.

Nothing here executes code from a file: ``.pth`` files are read with ``torch.load(weights_only=True)`` and
``.safetensors`` with safetensors.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mixconv.files.atomic import atomic_write
from mixconv.files.config import config_to_yaml
from mixconv.files.hub import hub_weights_file, read_hub_config
from mixconv.files.inputs import CheckpointError, check_file
from mixconv.files.integrity import (
    HASH_FIELD,
    HashCheck,
    hub_check,
    recorded_check,
    tensors_sha256,
)
from mixconv.layers.pooling import pool_type_of
from mixconv.models.builder import resolve, scaled_repeats
from mixconv.models.registry import list_models

MIXCONV_FORMAT = "mixconv/1"
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


CHECKPOINT_EXPECTED = "a checkpoint (.safetensors, or a state dict saved with torch.save as .pth/.pt)"
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a (legacy) pickle's PROTO opcode


def read_checkpoint(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from ``.safetensors`` or a (possibly nested) ``.pth``/``.pt`` file.

    Returns ``(state_dict, metadata)``; ``metadata`` is the safetensors header metadata (empty for ``.pth``).
    ``use_ema`` prefers ``state_dict_ema`` in a training checkpoint that has one. A folder in timm's hub layout
    (``config.json`` + ``model.safetensors``/``pytorch_model.bin``) gives its weights (see :mod:`mixconv.files.hub`).
    The file's hashes are checked (see :mod:`mixconv.files.integrity`): a torch.hub-style ``name-<sha256 prefix>.pth``
    and the ``tensors_sha256`` a mixconv checkpoint records; a mismatch raises :class:`CheckpointError` saying it
    is corrupted.
    """
    if Path(path).is_dir():
        return read_hub_checkpoint(path, use_ema)
    path = check_file(path, CHECKPOINT_EXPECTED, CheckpointError)
    raise_if_corrupted(path, hub_check(path))
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path)
    else:
        sd, meta = unnest_state_dict(load_torch_file(path, CHECKPOINT_EXPECTED), path, use_ema), {}
    raise_if_corrupted(path, recorded_check(sd, meta))
    return sd, meta


def header_extra(meta: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """The ``extra`` JSON (classes, preprocessing, data, results) of a mixconv checkpoint's header ``meta``; ``{}``
    for other files."""
    if not meta.get("extra"):
        return {}
    try:
        extra = json.loads(meta["extra"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the checkpoint header's 'extra' field is not valid JSON") from None
    return extra if isinstance(extra, dict) else {}


def raise_if_corrupted(path: Path, check: HashCheck | None) -> None:
    """Raise :class:`CheckpointError` (corrupted) where ``check`` found a mismatch; ``None`` passes."""
    if check is not None and not check.ok:
        raise CheckpointError(check.describe(path))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a checked ``.safetensors`` file (its hashes are not checked here)."""
    path = check_file(path, "a .safetensors file", CheckpointError)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers and data
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); expected an 8-byte header size, a "
                              "JSON header and the tensor data it describes") from None
    return sd, meta


def load_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a checked file: no code runs, and damage is one clear error."""
    path = check_file(path, what, CheckpointError)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path}: not a PyTorch file (it starts with {head!r}, not a zip archive or a "
                              f"pickle); expected {what}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line for line in str(e).splitlines()[1:] if line.strip() and "file an issue" not in line),
                      str(e).splitlines()[0] if str(e) else "")
        if "global" in detail.lower():
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors (it could run code when "
                f"loaded); re-save it as a plain state dict or as .safetensors. Detail: {detail.strip()}"
            ) from None
        raise CheckpointError(f"{path}: refused: damaged, or a pickle that cannot be read without running code "
                              f"({detail.strip()}); expected {what}") from None
    except MemoryError:
        raise CheckpointError(f"{path}: damaged: it asks for more memory than there is; expected {what}") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged archives
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: damaged or truncated PyTorch file ({type(e).__name__}: {first}); "
                              f"expected {what}") from None


def unnest_state_dict(obj: Any, path: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint object: nested under ``state_dict``/``model``/... or not, ``module.``
    prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    order = ("state_dict_ema", "model_ema") + _NESTED_KEYS if use_ema else _NESTED_KEYS
    for key in order:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            sd[k[len("module."):] if k.startswith("module.") else k] = v
    if not sd:
        raise CheckpointError(f"{path}: no tensors found; expected a state dict, possibly under {', '.join(_NESTED_KEYS)}")
    return sd


def is_timm_state_dict(sd: Mapping[str, Any]) -> bool:
    return "conv_stem.weight" in sd


_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
# timm block submodule -> ours, for blocks with an expand conv (timm InvertedResidual)...
_IR_MAP = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn", "se": "se",
           "conv_pwl": "project.conv", "bn3": "project.bn"}
# ... and without (timm DepthwiseSeparableConv).
_DS_MAP = {"conv_dw": "dw.conv", "bn1": "dw.bn", "se": "se", "conv_pw": "project.conv", "bn2": "project.bn"}
_TOP_MAP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn",
            "classifier": "classifier"}


def block_names(model: nn.Module) -> list[str]:
    """Our block module names in network order (``stages.i.j``)."""
    return [f"stages.{i}.{j}" for i, stage in enumerate(model.stages) for j in range(len(stage))]


def timm_to_mixconv(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a timm MixNet state dict to ``model``'s names.

    Blocks are matched in network order; timm's per-group 1x1 convs (``conv_pw.0``, ``conv_pw.1``) are
    concatenated into our single grouped conv, and its MixedConv2d groups become ``convs.i``.
    """
    ours = block_names(model)
    timm_blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in sd if (m := _TIMM_BLOCK.match(k))})
    if len(timm_blocks) != len(ours):
        raise CheckpointError(
            f"the timm checkpoint has {len(timm_blocks)} blocks but the model has {len(ours)}; is it the same variant?"
        )
    block_of = {f"{i}.{j}": ours[n] for n, (i, j) in enumerate(timm_blocks)}
    is_ir = {b: any(k.startswith(f"blocks.{b}.conv_pwl.") for k in sd) for b in block_of}
    out: dict[str, torch.Tensor] = {}
    grouped: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in sd.items():
        m = _TIMM_BLOCK.match(key)
        if m:
            b = f"{m.group(1)}.{m.group(2)}"
            sub, _, rest = m.group(3).partition(".")
            mapping = _IR_MAP if is_ir[b] else _DS_MAP
            if sub not in mapping:
                raise CheckpointError(f"timm key {key!r} has no counterpart in mixconv's MixNet block")
            name = f"{block_of[b]}.{mapping[sub]}"
        else:
            sub, _, rest = key.partition(".")
            if sub not in _TOP_MAP:
                raise CheckpointError(f"timm key {key!r} has no counterpart in mixconv's MixNet")
            name = _TOP_MAP[sub]
        gm = re.match(r"^(\d+)\.(weight|bias)$", rest)
        if name.endswith("dw.conv"):
            # timm: conv_dw.weight (single kernel) or conv_dw.<g>.weight (MixedConv2d groups).
            out[f"{name}.convs.{gm.group(1)}.{gm.group(2)}" if gm else f"{name}.convs.0.{rest}"] = value
        elif gm and name.endswith((".conv",)):
            grouped.setdefault(f"{name}.{gm.group(2)}", []).append((int(gm.group(1)), value))
        else:
            out[f"{name}.{rest}"] = value
    for name, parts in grouped.items():
        out[name] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


def mixconv_to_timm(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of :func:`timm_to_mixconv`: ``model``'s state dict under timm's MixNet names.

    timm numbers blocks by its six reference stages; our stages follow the output stride, so the mapping of
    block order to ``blocks.i.j`` is taken from the reference stage grouping in ``model.spec``.
    """
    spec = model.spec
    timm_names: list[str] = []
    net = resolve(spec)
    counts = [sum(stage) for stage in scaled_repeats(spec)]
    for i, n in enumerate(counts):
        timm_names.extend(f"blocks.{i}.{j}" for j in range(n))
    ours = block_names(model)
    if len(timm_names) != len(ours):
        raise CheckpointError("internal error: block counts differ between the spec and the model")
    rev_top = {v: k for k, v in _TOP_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    flat_blocks = net.blocks
    block_index = {name: n for n, name in enumerate(ours)}
    for key, value in sd.items():
        m = re.match(r"^(stages\.\d+\.\d+)\.(.+)$", key)
        if not m:
            top, _, rest = key.rpartition(".")
            out[f"{rev_top[top]}.{rest}"] = value
            continue
        n = block_index[m.group(1)]
        blk = flat_blocks[n]
        mapping = _IR_MAP if blk.has_expand else _DS_MAP
        rev = {v: k for k, v in mapping.items()}
        local = m.group(2)
        prefix = f"{timm_names[n]}."
        if local.startswith("dw.conv.convs."):
            g, _, param = local[len("dw.conv.convs."):].partition(".")
            if len(blk.kernel_sizes) == 1:
                out[f"{prefix}conv_dw.{param}"] = value
            else:
                out[f"{prefix}conv_dw.{g}.{param}"] = value
            continue
        sub, _, param = local.rpartition(".")
        if sub.startswith("se."):
            out[f"{prefix}{sub}.{param}"] = value
            continue
        groups = {"expand.conv": blk.exp_groups, "project.conv": blk.poi_groups}.get(sub, 1)
        if groups > 1:
            for g, chunk in enumerate(value.chunk(groups, dim=0)):
                out[f"{prefix}{rev[sub]}.{g}.{param}"] = chunk.contiguous()
        else:
            out[f"{prefix}{rev[sub]}.{param}"] = value
    return out


def fill_batches_tracked(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add ``model``'s BatchNorm ``num_batches_tracked`` counters (zeros) missing from ``sd`` (timm state dicts may
    omit them); returns ``sd``, filled in place."""
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v, device="cpu")
    return sd


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a stem kernel trained on 3 channels to ``in_chans``: summed for 1, tiled and rescaled for more."""
    c = weight.shape[1]
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / c)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (c / in_chans)


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: the checkpoint does not fit the model; " + "; ".join(parts))


def load_pretrained(model: nn.Module, path: str | Path, *, use_ema: bool = False) -> nn.Module:
    """Load a timm or mixconv checkpoint into ``model`` (a :class:`MixNet` or :class:`MixNetFeatures`).

    The stem is adapted to ``model``'s input channels; a classifier whose shape differs from the model's is
    left freshly initialised (transfer learning); a features-only model ignores the head. Anything else
    that does not fit raises :class:`CheckpointError` listing the offending keys.
    """
    sd, _ = read_checkpoint(path, use_ema=use_ema)
    if is_timm_state_dict(sd):
        sd = timm_to_mixconv(sd, model)
    expected = model.state_dict()
    stem_key = "stem.conv.weight"
    if stem_key in sd and stem_key in expected and sd[stem_key].shape[1] != expected[stem_key].shape[1]:
        sd[stem_key] = adapt_input_conv(sd[stem_key], expected[stem_key].shape[1])
    drop = [k for k in sd if k.startswith(("classifier.", "head.")) and k not in expected]
    drop += [k for k in sd if k.startswith("classifier.") and k in expected and sd[k].shape != expected[k].shape]
    if not hasattr(model, "classifier"):  # features-only: only the trunk stages it has
        drop += [k for k in sd if k.startswith("stages.") and k not in expected]
    for k in set(drop):
        sd.pop(k)
    for k in [k for k in expected if k.startswith("classifier.") and k not in sd]:
        sd[k] = expected[k]  # keep the fresh classifier
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model


def architecture_yaml(model: nn.Module) -> str:
    """The YAML that rebuilds ``model``'s architecture: a MixNet's config, a MixConv-MobileNet's ``mobilenet:``
    document, or a supernet's search space (what ``mixconv search`` reads)."""
    from mixconv.files.mobilenet import mobilenet_to_yaml
    from mixconv.files.space import space_to_yaml

    spec = getattr(model, "spec", None)
    if spec is not None:
        return config_to_yaml(spec)
    mobilenet = getattr(model, "mobilenet_spec", None)
    if mobilenet is not None:
        return mobilenet_to_yaml(mobilenet)
    if hasattr(model, "space"):
        return space_to_yaml(model.space)
    raise CheckpointError(f"cannot describe {type(model).__name__} in a checkpoint: it has no spec, MobileNet spec "
                          "or search space")


def save_checkpoint(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights as a self-describing safetensors checkpoint (atomically).

    The header metadata holds the architecture as YAML, the model name, classes and input channels, and
    ``extra`` (JSON-encoded), so the file alone rebuilds the model, and the sha256 of the tensors, checked
    whenever the file is read.
    """
    meta = {
        "format": MIXCONV_FORMAT,
        "config": architecture_yaml(model),
        "model_name": str(getattr(model, "model_name", "")),
        "num_classes": str(getattr(model, "num_classes", 0)),
        "in_chans": str(getattr(model, "in_chans", 3)),
        "global_pool": pool_type_of(model),
        "extra": json.dumps(dict(extra or {})),
    }
    return write_safetensors(model.state_dict(), path, meta)


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors (contiguous, on CPU) as ``.safetensors`` atomically, recording their
    :func:`~mixconv.files.integrity.tensors_sha256` in the header (``tensors_sha256``)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {**dict(metadata or {}), HASH_FIELD: tensors_sha256(tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and the training metadata (classes, preprocessing, data, ...) of a mixconv checkpoint.

    The metadata is empty for checkpoints without it (timm files, plain state dicts).
    """
    sd, header = read_checkpoint(path)
    extra = header_extra(header, path)
    if header.get("config"):
        extra["config_yaml"] = header["config"]
        extra.setdefault("model_name", header.get("model_name", ""))
        extra.setdefault("num_classes", int(header.get("num_classes", "0") or 0))
        extra.setdefault("in_chans", int(header.get("in_chans", "3") or 3))
        extra.setdefault("global_pool", header.get("global_pool", "avg"))
    return sd, extra


def save_model_checkpoint(model: nn.Module, path: str | Path, extra: Mapping[str, object] | None = None) -> Path:
    """:func:`mixconv.save_checkpoint` for MixNets and MixConv-MobileNets; for other registered models the same header
    without ``config`` (the registered ``model_name`` rebuilds them)."""
    if getattr(model, "spec", None) is not None or getattr(model, "mobilenet_spec", None) is not None:
        return save_checkpoint(model, path, extra)
    name = str(getattr(model, "model_name", ""))
    if name not in list_models():
        raise CheckpointError(f"cannot describe {type(model).__name__} in a checkpoint: no spec and no registered name")
    meta = {"format": MIXCONV_FORMAT, "model_name": name, "num_classes": str(getattr(model, "num_classes", 0)),
            "in_chans": str(getattr(model, "in_chans", 3)), "extra": json.dumps(dict(extra or {}))}
    return write_safetensors(model.state_dict(), path, meta)


def read_hub_checkpoint(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights of a hub folder (timm keys) and, as metadata, its ``model_name`` (the architecture)."""
    cfg = read_hub_config(path)
    sd, _ = read_checkpoint(hub_weights_file(path), use_ema=use_ema)
    return sd, {"model_name": cfg.architecture}
