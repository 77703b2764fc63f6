"""Model-independent layers: MixConv, grouped 1x1 conv, squeeze-excite, conv-norm-act, drop-path."""
from .activations import ACTIVATION_NAMES, canonical_act_name, create_act
from .conv2d_same import Conv2dSame, create_conv2d
from .conv_norm_act import ConvNormAct
from .drop_path import DropPath, drop_path
from .grouped_conv import grouped_conv1x1
from .mixed_conv import MixConv2d, split_channels
from .padding import pad_same
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ACTIVATION_NAMES",
    "Conv2dSame",
    "ConvNormAct",
    "DropPath",
    "MixConv2d",
    "SqueezeExcite",
    "canonical_act_name",
    "create_act",
    "create_conv2d",
    "drop_path",
    "grouped_conv1x1",
    "pad_same",
    "split_channels",
]
