"""``create_model``: the one dispatch from what a user names (a registered name, a YAML file, a spec, a folder in
timm's hub layout) to a model, with optional local pretrained weights (nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from torch import nn

from mixconv.files.config import ConfigError, is_config_path, load_config
from mixconv.files.hub import (
    HubConfig,
    _folder,
    hub_weights_file,
    is_hub_folder,
    read_hub_config,
)
from mixconv.files.inputs import CheckpointError, read_yaml
from mixconv.files.mobilenet import is_mobilenet_document, mobilenet_from_dict
from mixconv.files.space import is_space_document, space_from_dict
from mixconv.files.weights import (
    check_state_dict,
    fill_batches_tracked,
    is_timm_state_dict,
    load_pretrained,
    read_checkpoint,
    timm_to_mixconv,
)
from mixconv.layers.pooling import check_pool_type
from mixconv.models.mixnet import MixNet, MixNetFeatures
from mixconv.models.mobilenet import (
    MobileNetFeatures,
    MobileNetSpec,
    mobilenet_from_spec,
)
from mixconv.models.mobilenet import _Classifier as _MobileNetClassifier
from mixconv.models.pretrained_cfg import cfg_from_meta, set_pretrained_cfg
from mixconv.models.registry import get_model_def, list_models
from mixconv.models.space import SearchSpace
from mixconv.models.specs import MixNetSpec, ModelMeta
from mixconv.models.supernet import Supernet


def resolve_model_name(name_or_yaml: str | Path | MixNetSpec) -> tuple[str, MixNetSpec | None, ModelMeta]:
    """Return ``(name, spec, meta)`` for a registered name, a YAML path or a spec.

    ``spec`` is ``None`` for a registered model built by a builder function (not a MixNet).
    """
    if isinstance(name_or_yaml, MixNetSpec):
        return "custom", name_or_yaml, ModelMeta()
    if isinstance(name_or_yaml, SearchSpace) or search_space_of(name_or_yaml) is not None:
        return "supernet", None, ModelMeta()
    if mobilenet_spec_of(name_or_yaml) is not None:
        name = "mobilenet" if isinstance(name_or_yaml, MobileNetSpec) else Path(name_or_yaml).stem
        return name, None, ModelMeta()
    if is_config_path(name_or_yaml):
        return Path(name_or_yaml).stem, load_config(name_or_yaml), ModelMeta()
    model_def = get_model_def(str(name_or_yaml))
    return model_def.name, model_def.spec, model_def.meta


def _document_of(name_or_yaml: object, kind: type, key_check: Callable[[Any], bool],
                 parse: Callable[[Any, str], Any]) -> Any:
    """``name_or_yaml`` when it is a ``kind``; the ``kind`` a YAML path holds when ``key_check`` accepts its
    document; else ``None``."""
    if isinstance(name_or_yaml, kind):
        return name_or_yaml
    if not isinstance(name_or_yaml, (str, Path)) or not is_config_path(name_or_yaml):
        return None
    doc = read_yaml(name_or_yaml, "a model config, MobileNet config or search space (YAML)", ConfigError)
    return parse(doc, str(name_or_yaml)) if key_check(doc) else None


def search_space_of(name_or_yaml: object) -> SearchSpace | None:
    """The search space a YAML path holds (a document with ``search_space``), else ``None``."""
    return _document_of(name_or_yaml, SearchSpace, is_space_document, space_from_dict)


def mobilenet_spec_of(name_or_yaml: object) -> MobileNetSpec | None:
    """The MixConv-MobileNet a YAML path holds (a document with ``mobilenet``), else ``None``."""
    return _document_of(name_or_yaml, MobileNetSpec, is_mobilenet_document, mobilenet_from_dict)


def create_model(
    name_or_yaml: str | Path | MixNetSpec | SearchSpace | MobileNetSpec,
    *,
    num_classes: int | None = None,
    pretrained: str | Path | bool | None = None,
    in_chans: int | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | int | None = None,
    global_pool: str | None = None,
    feature_cls: str | None = None,
) -> nn.Module:
    """Build a MixNet (or any registered model), with timm's ``create_model`` arguments.

    Args:
        name_or_yaml: a registered name (see :func:`list_models`), a path to a ``.yaml``/``.yml`` config, a
            :class:`MixNetSpec`, or a local folder in timm's Hugging Face hub layout (also ``local-dir:DIR``):
            its ``config.json`` gives the architecture, classes and preprocessing. A search space (a
            :class:`~mixconv.models.space.SearchSpace` or a YAML file holding ``search_space``) gives its
            weight-sharing :class:`~mixconv.models.supernet.Supernet`, which ``mixconv train`` trains like
            any model (one sampled path a step). A :class:`~mixconv.models.mobilenet.MobileNetSpec` (or a YAML
            file holding ``mobilenet``) gives a MixConv-MobileNet with per-layer depthwise choices.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features); default
            1000, or the hub folder's.
        pretrained: path to a local timm or mixconv checkpoint, or hub folder, of the same architecture;
            ``True`` with a hub folder as ``name_or_yaml`` loads that folder's weights. Nothing is ever
            downloaded.
        in_chans: input channels (default 3, or the hub folder's); pretrained stem weights are adapted.
        drop_rate: dropout before the classifier (default: the variant's).
        drop_path_rate: stochastic depth rate of the last block, ramped linearly from 0.
        features_only: return a features model (:class:`MixNetFeatures`, or the MobileNets'
            :class:`~mixconv.models.mobilenet.MobileNetFeatures`) giving the feature maps at strides 2..32.
        out_indices: which feature stages ``features_only`` returns (default: all; negative indices count from
            the end, an int ``n`` means the last ``n``).
        global_pool: ``avg`` (default), ``max``, ``avgmax``, ``catavgmax``, or ``''`` for no pooling (with
            ``num_classes=0``, ``forward`` then returns the unpooled map).
        feature_cls: timm's features-model kind; ``None``, ``list``, ``getter``, ``hook`` and ``fx`` all mean
            the list of stage maps these models return; other values are refused.
    """
    check_feature_cls(feature_cls, features_only)
    if features_only and global_pool is not None:
        raise ValueError(f"global_pool={global_pool!r} is not used with features_only=True (a features model has "
                         f"no pooling); leave it out")
    hub_dir = _hub_folder(name_or_yaml)
    if hub_dir is not None:
        return create_from_hub(hub_dir, num_classes=num_classes, pretrained=pretrained, in_chans=in_chans,
                               drop_rate=drop_rate, drop_path_rate=drop_path_rate, features_only=features_only,
                               out_indices=out_indices, global_pool=global_pool)
    if isinstance(pretrained, bool):
        if pretrained:
            raise ValueError("pretrained=True needs a hub folder as the model; otherwise pass a checkpoint path")
        pretrained = None
    num_classes = 1000 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    pool = "avg" if global_pool is None else check_pool_type(global_pool)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices is only used with features_only=True")
    space = search_space_of(name_or_yaml)
    if space is not None:
        if features_only or out_indices is not None or drop_path_rate or pool != "avg":
            raise ValueError("a supernet (search space) supports no features_only, out_indices, drop_path_rate or "
                             "global_pool other than 'avg'")
        supernet = Supernet(space, num_classes, in_chans, drop_rate)
        return _finish(supernet, "supernet", ModelMeta(), in_chans, pretrained)
    mobilenet = mobilenet_spec_of(name_or_yaml)
    if mobilenet is not None:
        if drop_path_rate:
            raise ValueError("a MixConv-MobileNet supports no drop_path_rate")
        name = "mobilenet" if isinstance(name_or_yaml, MobileNetSpec) else Path(name_or_yaml).stem
        model = mobilenet_from_spec(mobilenet, num_classes, in_chans, drop_rate, global_pool=pool)
        if features_only:
            model = MobileNetFeatures(model, out_indices)
        return _finish(model, name, ModelMeta(), in_chans, pretrained)
    name, spec, meta = resolve_model_name(name_or_yaml)
    if spec is None:
        model = _create_from_builder(name, num_classes, in_chans, drop_rate, drop_path_rate, features_only,
                                     out_indices, pool)
        return _finish(model, name, meta, in_chans, pretrained)
    dpr = 0.0 if drop_path_rate is None else float(drop_path_rate)
    if features_only:
        model: nn.Module = MixNetFeatures(spec, out_indices, in_chans=in_chans, drop_path_rate=dpr, meta=meta)
    else:
        model = MixNet(spec, num_classes, in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=dpr, meta=meta,
                       global_pool=pool)
    return _finish(model, name, meta, in_chans, pretrained)


# timm's features-model kinds that mean "the list of stage maps" (what mixconv's features models return).
FEATURE_CLS = ("list", "getter", "hook", "fx")


def check_feature_cls(feature_cls: object, features_only: bool) -> None:
    """Accept timm's ``feature_cls`` values that mean a list of stage maps; refuse the others clearly."""
    if feature_cls is None:
        return
    if not isinstance(feature_cls, str) or feature_cls.lower() not in FEATURE_CLS:
        raise ValueError(f"feature_cls={feature_cls!r} is not supported; expected None or one of "
                         f"{', '.join(repr(c) for c in FEATURE_CLS)} (each gives the list of stage feature maps; "
                         f"timm's 'dict' and custom classes are not available)")
    if not features_only:
        raise ValueError(f"feature_cls={feature_cls!r} is only used with features_only=True")


def _hub_folder(name_or_yaml: object) -> Path | None:
    """The folder of ``local-dir:DIR`` or of a directory holding ``config.json``; else ``None``."""
    if isinstance(name_or_yaml, (MixNetSpec, SearchSpace, MobileNetSpec)):
        return None
    text = str(name_or_yaml)
    if text.startswith("local-dir:"):
        return Path(text[len("local-dir:"):])
    return Path(text) if Path(text).is_dir() and text not in list_models() else None


def _finish(model: nn.Module, name: str, meta: ModelMeta, in_chans: int, pretrained: str | Path | None) -> nn.Module:
    """Name the model, attach its ``pretrained_cfg`` and load ``pretrained`` (whose preprocessing then wins)."""
    model.model_name = name
    set_pretrained_cfg(model, **cfg_from_meta(meta, architecture=name, num_classes=getattr(model, "num_classes", 0),
                                              in_chans=in_chans))
    if pretrained is not None:
        if str(pretrained).startswith("local-dir:"):  # timm's spelling of a local hub folder
            pretrained = str(pretrained)[len("local-dir:"):]
        load_pretrained(model, pretrained)
        if is_hub_folder(pretrained):
            set_pretrained_cfg(model, **read_hub_config(pretrained).preprocess_cfg(in_chans))
    return model


def _create_from_builder(
    name: str,
    num_classes: int,
    in_chans: int,
    drop_rate: float | None,
    drop_path_rate: float | None,
    features_only: bool,
    out_indices: Sequence[int] | int | None,
    global_pool: str,
) -> nn.Module:
    """A registered non-MixNet model (``ModelDef.builder``); MixNet-only options are refused clearly."""
    if drop_path_rate is not None:
        raise ValueError(f"drop_path_rate is not supported by {name!r} (only by MixNet models)")
    model = get_model_def(name).builder(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                        global_pool=global_pool)
    if features_only:
        if not isinstance(model, _MobileNetClassifier):
            raise ValueError(f"features_only is not supported by {name!r}")
        return MobileNetFeatures(model, out_indices)
    return model


def _load_strict(model: nn.Module, cfg: HubConfig) -> None:
    """Load the folder's weights into ``model``, which must match them exactly."""
    weights = hub_weights_file(cfg.folder)
    sd, _ = read_checkpoint(weights)
    where = (f"{weights} (config.json: architecture={cfg.architecture!r}, num_classes={cfg.num_classes}, "
             f"in_chans={cfg.in_chans})")
    if is_timm_state_dict(sd):
        try:
            sd = timm_to_mixconv(sd, model)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: the tensors do not fit the architecture: {e}") from None
        fill_batches_tracked(sd, model)
    check_state_dict(model, sd, where)
    model.load_state_dict(sd, strict=True)


def create_from_hub(path: str | Path, *, num_classes: Optional[int] = None, pretrained: Any = None,
                    in_chans: Optional[int] = None, architecture: Optional[str] = None,
                    drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None,
                    features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                    global_pool: Optional[str] = None) -> nn.Module:
    """``create_model(DIR)``: the folder's architecture, classes and preprocessing.

    ``pretrained=True`` (or the folder itself) loads its weights: exactly when the classes and channels are
    the folder's, else through :func:`mixconv.load_pretrained` (a new classifier, an adapted stem).
    ``architecture`` overrides ``config.json`` (e.g. ``tf_mixnet_s`` for a TF port saved under another name).
    The other arguments are :func:`mixconv.create_model`'s.
    """
    cfg = read_hub_config(path)
    n = cfg.num_classes if num_classes is None else num_classes
    c = cfg.in_chans if in_chans is None else in_chans
    model = create_model(architecture or cfg.architecture, num_classes=n, in_chans=c, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, features_only=features_only, out_indices=out_indices,
                         global_pool=None if features_only else (cfg.global_pool if global_pool is None
                                                                 else global_pool))
    own = pretrained is True or (pretrained is not None and pretrained is not False
                                 and _folder(pretrained).resolve() == cfg.folder.resolve())
    if own and (n, c) == (cfg.num_classes, cfg.in_chans) and hasattr(model, "classifier"):
        _load_strict(model, cfg)
    elif own:
        load_pretrained(model, cfg.folder)
    elif pretrained not in (None, False):
        load_pretrained(model, pretrained)
    set_pretrained_cfg(model, **cfg.preprocess_cfg(c))
    return model


def load_hub_model(path: str | Path, architecture: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a hub folder with its weights, and what a mixconv checkpoint's ``extra`` would say about it
    (``classes``, ``preprocess``)."""
    cfg = read_hub_config(path)
    model = create_from_hub(cfg.folder, pretrained=True, architecture=architecture)
    extra: dict[str, Any] = {"preprocess": cfg.preprocess(), "converted_from": str(cfg.folder)}
    if cfg.label_names:
        extra["classes"] = cfg.label_names
    return model, extra
