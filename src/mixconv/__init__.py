"""mixconv: MixConv (mixed depthwise convolution) and the MixNet family for PyTorch."""
from .config import ConfigError, load_config, save_config
from .layers import (
    ConvNormAct,
    DropPath,
    MixConv2d,
    SqueezeExcite,
    create_act,
    grouped_conv1x1,
    split_channels,
)
from .models import (
    BlockRow,
    MixNet,
    MixNetFeatures,
    MixNetSpec,
    ModelMeta,
    UnknownModelError,
    create_model,
    get_model_def,
    list_models,
)
from .optimize import optimize_for_inference
from .weights import CheckpointError, load_pretrained, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BlockRow", "CheckpointError", "ConfigError", "ConvNormAct", "DropPath", "MixConv2d", "MixNet", "MixNetFeatures",
    "MixNetSpec", "ModelMeta", "SqueezeExcite", "UnknownModelError", "__version__", "create_act", "create_model",
    "get_model_def", "grouped_conv1x1", "list_models", "load_config", "load_pretrained", "optimize_for_inference", "save_checkpoint",
    "save_config", "split_channels",
]
