"""The MixNet family: typed specs, the builder, the network, the registry and the factory."""
from . import mobilenet as _mobilenet  # noqa: F401  (registers the MixConv-MobileNets)
from . import variants as _variants  # noqa: F401  (registers the models)
from .builder import ResolvedBlock, ResolvedNet, make_divisible, resolve, round_channels
from .factory import create_model
from .mixnet import MixNet, MixNetBlock, MixNetFeatures
from .registry import UnknownModelError, get_model_def, list_models, register
from .specs import BlockRow, MixNetSpec, ModelDef, ModelMeta

__all__ = [
    "BlockRow", "MixNet", "MixNetBlock", "MixNetFeatures", "MixNetSpec", "ModelDef", "ModelMeta", "ResolvedBlock",
    "ResolvedNet", "UnknownModelError", "create_model", "get_model_def", "list_models", "make_divisible", "register",
    "resolve", "round_channels",
]
