"""The MixNet family: typed specs, the builder, the network, the registry, and model sizes.

Pure: nothing here reads or writes files (that is :mod:`mixconv.files`); models are built from names, YAML
files and checkpoints by :mod:`mixconv.factory`."""
from mixconv.models import mobilenet as _mobilenet  # noqa: F401  (registers the MixConv-MobileNets)
from mixconv.models import variants as _variants  # noqa: F401  (registers the models)
from mixconv.models.builder import (
    ResolvedBlock,
    ResolvedNet,
    make_divisible,
    resolve,
    round_channels,
)
from mixconv.models.contract import ContractClassifier
from mixconv.models.feature_info import FeatureInfo, take_indices
from mixconv.models.mixnet import MixNet, MixNetBlock, MixNetFeatures
from mixconv.models.mobilenet import Depthwise, MobileNetFeatures, MobileNetSpec, mobilenet_from_spec
from mixconv.models.param_groups import group_parameters, layer_decay_scales
from mixconv.models.registry import (
    UnknownModelError,
    get_model_def,
    list_models,
    register,
)
from mixconv.models.specs import BlockRow, MixNetSpec, ModelDef, ModelMeta

__all__ = [
    "BlockRow", "ContractClassifier", "Depthwise", "FeatureInfo", "MobileNetFeatures", "group_parameters",
    "layer_decay_scales", "take_indices", "MixNet", "MixNetBlock", "MixNetFeatures", "MixNetSpec", "MobileNetSpec", "ModelDef", "ModelMeta",
    "ResolvedBlock",
    "ResolvedNet", "UnknownModelError", "get_model_def", "list_models", "make_divisible", "mobilenet_from_spec", "register",
    "resolve", "round_channels",
]
