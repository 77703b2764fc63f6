"""Deployment: export (ONNX, TorchScript, ExportedProgram), onnxruntime graph rewrites, int8 quantization.

Running an exported file is :mod:`mixconv.inference.ort`; quantization-aware training is
:mod:`mixconv.training.qat`."""
from mixconv.deploy.quantize import (
    QuantizeReport,
    QuantizeSettings,
    quantize_onnx,
           verify_int8,
)
from mixconv.files.onnx_metadata import (
    MetadataError,
    OnnxMetadata,
    read_metadata,
    write_metadata,
)

__all__ = ["MetadataError", "OnnxMetadata", "QuantizeReport", "QuantizeSettings", "quantize_onnx", "read_metadata",
           "verify_int8", "write_metadata"]
