"""Model-independent layers: MixConv, grouped 1x1 conv, squeeze-excite, conv-norm-act, drop-path, pooling."""
from mixconv.layers.activations import ACTIVATION_NAMES, canonical_act_name, create_act
from mixconv.layers.conv2d_same import Conv2dSame, create_conv2d
from mixconv.layers.conv_norm_act import ConvNormAct
from mixconv.layers.drop_path import DropPath, drop_path
from mixconv.layers.grouped_conv import grouped_conv1x1
from mixconv.layers.mixed_conv import MixConv2d, split_channels
from mixconv.layers.padding import pad_same
from mixconv.layers.pooling import POOL_TYPES, SelectAdaptivePool2d
from mixconv.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ACTIVATION_NAMES",
    "Conv2dSame",
    "ConvNormAct",
    "DropPath",
    "MixConv2d",
    "POOL_TYPES",
    "SelectAdaptivePool2d",
    "SqueezeExcite",
    "canonical_act_name",
    "create_act",
    "create_conv2d",
    "drop_path",
    "grouped_conv1x1",
    "pad_same",
    "split_channels",
]
