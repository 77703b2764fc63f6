"""mixconv: MixConv (mixed depthwise convolution) and the MixNet family for PyTorch."""
from mixconv.convert.checkpoint import convert_checkpoint
from mixconv.convert.hub import save_pretrained
from mixconv.deploy.export import (
    ExportCheck,
    ExportError,
    export_onnx,
    export_program,
    export_torchscript,
)
from mixconv.factory.checkpoint import model_from_checkpoint
from mixconv.factory.create import create_model
from mixconv.factory.detection import detection_backbone
from mixconv.files.config import ConfigError, load_config, save_config
from mixconv.files.inputs import CheckpointError, MixconvInputError
from mixconv.files.weights import load_pretrained, save_checkpoint
from mixconv.kernels.capability import LowPrecisionWarning, cpu_info
from mixconv.layers import (
    ConvNormAct,
    DropPath,
    MixConv2d,
    SqueezeExcite,
    create_act,
    grouped_conv1x1,
    split_channels,
)
from mixconv.models import (
    BlockRow,
    MixNet,
    MixNetFeatures,
    MixNetSpec,
    ModelMeta,
    UnknownModelError,
    get_model_def,
    list_models,
)
from mixconv.surgery.mixify import mixify
from mixconv.surgery.optimize import optimize_for_inference

__version__ = "0.1.0"


def train(recipe: str | None = "digits", **settings):
    """Train a MixNet (see :func:`mixconv.training.train`); ``mixconv.train()`` is ``mixconv train``."""
    from mixconv.training import (
        train as _train,  # lazy: torchvision and scikit-learn load only when training
    )

    return _train(recipe, **settings)


def evaluate(checkpoint=None, **options):
    """Evaluate a checkpoint (see :func:`mixconv.inference.runner.evaluate`): top-1, top-5, loss, images/s."""
    from mixconv.inference.runner import evaluate as _evaluate

    return _evaluate(checkpoint, **options)


def quantize_onnx(model, output, **options):
    """int8 post-training quantization of an exported ONNX file (see :func:`mixconv.deploy.quantize_onnx`)."""
    from mixconv.deploy.quantize import (
        quantize_onnx as _quantize_onnx,  # lazy: onnxruntime is the `export` extra
    )

    return _quantize_onnx(model, output, **options)


def predict(images, checkpoint=None, **options):
    """Top-k classes of images (see :func:`mixconv.inference.runner.predict`)."""
    from mixconv.inference.runner import predict as _predict

    return _predict(images, checkpoint, **options)

__all__ = [
    "BlockRow", "CheckpointError", "evaluate", "predict", "train", "ConfigError", "ConvNormAct", "DropPath", "MixConv2d", "MixNet", "MixNetFeatures",
    "MixNetSpec", "ModelMeta", "SqueezeExcite", "UnknownModelError", "__version__", "create_act", "create_model",
    "get_model_def", "grouped_conv1x1", "list_models", "load_config", "load_pretrained", "optimize_for_inference", "save_checkpoint",
    "save_config", "split_channels",
    "ExportCheck", "ExportError", "convert_checkpoint", "detection_backbone", "export_onnx", "export_program",
    "export_torchscript", "mixify", "model_from_checkpoint", "MixconvInputError",
    "LowPrecisionWarning", "cpu_info",
    "save_pretrained",
    "quantize_onnx",
]
