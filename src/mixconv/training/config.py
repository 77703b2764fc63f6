"""Training settings: one frozen dataclass, filled from a recipe YAML and then from the command line.

A recipe is a flat YAML mapping whose keys are :class:`TrainConfig` field names (``recipes/*.yaml`` in the
package, or any file). Unknown keys and wrongly typed values raise :class:`~mixconv.files.config.ConfigError`
naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

from mixconv.files.config import ConfigError
from mixconv.files.inputs import read_yaml, short_repr
# What QAT simulates; the same as mixconv.deploy.quantize.ACTIVATION_TYPES (a test checks: training and deploy are
# independent rooms)
from mixconv.surgery.fake_quant import ACTIVATION_TYPES as QAT_ACTIVATIONS

OPTIMIZERS = ("sgd", "rmsproptf", "adamw")
SCHEDULES = ("cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
AUTO_AUGMENTS = ("none", "randaugment", "autoaugment", "trivialaugment")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def auto_workers(local_processes: int = 1) -> int:
    """Data-loading workers per training process when a recipe does not say: the CPUs this process may use,
    shared by the ``local_processes`` training processes of this machine, less one for the training process
    itself, at most 8 (0 on a machine with one CPU per process: the main process loads)."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // max(1, local_processes) - 1))


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (the resolved form is saved as ``config.yaml``)."""

    # model
    model: str = "mixnet_s"
    pretrained: Optional[str] = None
    num_classes: Optional[int] = None  # None: the number of classes in the data
    freeze_backbone: bool = False
    qat: bool = False  # quantization-aware training (fake int8 as onnxruntime's); fine-tune from --pretrained
    qat_activation: str = "uint8"  # the activations `mixconv quantize --activation-type` will use: uint8 or int8
    qat_reduce_range: bool = False  # 7-bit weights, as `mixconv quantize --reduce-range`
    qat_calib_images: int = 256  # the activation ranges' calibration images, as `mixconv quantize --calib-images`
    drop_rate: Optional[float] = None  # None: the variant's
    drop_path_rate: float = 0.0
    freeze_bn: bool = False  # BatchNorm normalizes with its running statistics and keeps them (always with --qat)
    bn_momentum: Optional[float] = None  # PyTorch convention (TF 0.99 == 0.01 here); None: keep 0.1
    # data
    data: str = "digits"
    val_fraction: float = 0.2  # digits and digit-pairs only: the stratified validation share of the digits
    # > 0: this share of the training images is held out (fixed choice, not the seed) and the per-epoch
    # evaluation runs on it instead of the validation set, which then stays untouched (a search's supernet)
    holdout_fraction: float = 0.0
    img_size: Optional[int] = None  # None: the model's (224)
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    workers: Optional[int] = None  # data-loading processes per training process; None: auto_workers()
    gpu_decode: bool = False  # ImageFolder JPEGs decoded on the GPU (nvJPEG), transforms there too
    shuffle_buffer: int = 1000  # shards: samples each data stream (rank x worker) shuffles through
    # augmentation
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    auto_augment: str = "none"
    randaugment_magnitude: int = 9
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # per process
    opt: str = "sgd"
    lr: float = 0.1  # for lr_base_size images; scaled linearly with the global batch size
    lr_base_size: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    opt_eps: float = 1e-8
    rmsprop_decay: float = 0.9
    weight_decay: float = 1e-4
    layer_decay: Optional[float] = None  # timm's layer-wise lr decay over the model's group_matcher groups
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr_factor: float = 0.01  # warmup starts at lr * this
    min_lr: float = 0.0
    decay_epochs: float = 2.4  # step schedule
    decay_rate: float = 0.97
    clip_grad: Optional[float] = None
    accum_steps: int = 1
    ema_decay: float = 0.0  # 0: no EMA
    # runtime
    amp: str = "none"
    channels_last: bool = False
    grad_checkpointing: bool = False  # recompute block activations in the backward (less memory)
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    output: Optional[str] = None
    log_interval: int = 10
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (last.state.pt); 0: at epoch ends only

    def __post_init__(self) -> None:
        checks = (
            ("opt", self.opt in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("sched", self.sched in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("amp", self.amp in AMP_MODES, f"one of {', '.join(AMP_MODES)}"),
            ("qat_activation", self.qat_activation in QAT_ACTIVATIONS, f"one of {', '.join(QAT_ACTIVATIONS)}"),
            ("auto_augment", self.auto_augment in AUTO_AUGMENTS, f"one of {', '.join(AUTO_AUGMENTS)}"),
            ("interpolation", self.interpolation in (None,) + INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
            ("epochs", self.epochs >= 1, "an int >= 1"),
            ("qat_calib_images", self.qat_calib_images >= 1, "an int >= 1"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
            ("accum_steps", self.accum_steps >= 1, "an int >= 1"),
            ("workers", self.workers is None or self.workers >= 0, "an int >= 0 (or null: what the machine has)"),
            ("shuffle_buffer", self.shuffle_buffer >= 1, "an int >= 1"),
            ("checkpoint_every", self.checkpoint_every >= 0, "an int >= 0 (0: at epoch ends only)"),
            ("lr", self.lr > 0, "a positive number"),
            ("layer_decay", self.layer_decay is None or 0 < self.layer_decay <= 1,
             "a number in (0, 1] (1: no decay; leave it out for plain parameter groups)"),
            ("lr_base_size", self.lr_base_size >= 1, "an int >= 1"),
            ("val_fraction", 0 < self.val_fraction < 1, "a number in (0, 1)"),
            ("holdout_fraction", 0 <= self.holdout_fraction < 1, "a number in [0, 1) (0: no held-out part)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "a number in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
            ("re_prob", 0 <= self.re_prob <= 1, "a probability in [0, 1]"),
            ("hflip", 0 <= self.hflip <= 1, "a probability in [0, 1]"),
            ("mixup", self.mixup >= 0, "a number >= 0 (the Beta alpha; 0 is off)"),
            ("cutmix", self.cutmix >= 0, "a number >= 0 (the Beta alpha; 0 is off)"),
            ("img_size", self.img_size is None or self.img_size >= 8, "an int >= 8"),
            ("crop_pct", self.crop_pct is None or 0 < self.crop_pct <= 1, "a number in (0, 1]"),
            ("num_classes", self.num_classes is None or self.num_classes >= 1, "an int >= 1"),
            ("scale", 0 < self.scale[0] <= self.scale[1] <= 1, "two numbers 0 < min <= max <= 1"),
            ("ratio", 0 < self.ratio[0] <= self.ratio[1], "two numbers 0 < min <= max"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}; expected {expected}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check (and lightly convert) one value against the field's annotated type."""
    hint = _field_types()[name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name}: got None; a value is required")
    bad = ConfigError(f"{source}: {name}: got {short_repr(value)}; expected {getattr(hint, '__name__', str(hint))}")
    if typing.get_origin(hint) is tuple:
        n = len(typing.get_args(hint))
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ConfigError(f"{source}: {name}: got {short_repr(value)}; expected a list of {n} numbers")
        return tuple(_coerce_scalar(float, v, bad) for v in value)
    return _coerce_scalar(hint, value, bad)


def _coerce_scalar(hint: Any, value: Any, bad: ConfigError) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - every field type is handled above


def recipe_names() -> list[str]:
    """The recipes shipped in the package (``mixconv/recipes/*.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files("mixconv.recipes").iterdir() if p.name.endswith(".yaml"))


def find_recipe(name_or_path: str) -> Path:
    """A shipped recipe name (``digits``, ``tf-mixnet``, ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path  # reading it says what is wrong with a directory or an unreadable file
    candidate = resources.files("mixconv.recipes") / f"{name_or_path}.yaml"
    if candidate.is_file():
        return Path(str(candidate))
    raise ConfigError(
        f"{name_or_path}: no such recipe file; expected a YAML path or one of the shipped recipes: "
        f"{', '.join(recipe_names())}"
    )


def default_recipe(data: Optional[str]) -> str:
    """The recipe a run without ``--config`` starts from: a built-in data set's own recipe where one ships
    (``digit-pairs``), else ``digits``."""
    return data if data in ("digits", "digit-pairs") else "digits"


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe into checked ``{field: value}`` pairs (not yet a config: CLI flags come on top)."""
    path = find_recipe(name_or_path)
    doc = read_yaml(path, "a training recipe (a YAML mapping of settings)", ConfigError)
    if doc is None:
        return {}
    return check_overrides(doc, str(path))


def check_overrides(doc: Any, source: str) -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: expected a mapping of training settings, got {type(doc).__name__}")
    out = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            import difflib

            close = difflib.get_close_matches(name, FIELD_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        out[name] = _coerce(name, value, source)
    return out


def make_config(recipe: str | None = "digits", overrides: Mapping[str, Any] | None = None, *,
                source: str = "override") -> TrainConfig:
    """The recipe's settings with ``overrides`` (e.g. command-line flags; errors name ``source``) on top."""
    values = load_recipe(recipe) if recipe else {}
    values.update(check_overrides(overrides or {}, source))
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{recipe or source}: {e}") from None


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **check_overrides(changes, "override"))
