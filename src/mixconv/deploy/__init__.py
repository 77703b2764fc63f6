"""Deployment: onnxruntime as a runtime, int8 quantization (post-training and quantization-aware)."""
from .metadata import MetadataError, OnnxMetadata, read_metadata, write_metadata
from .quantize import QuantizeReport, QuantizeSettings, quantize_onnx, verify_int8

__all__ = ["MetadataError", "OnnxMetadata", "QuantizeReport", "QuantizeSettings", "quantize_onnx", "read_metadata",
           "verify_int8", "write_metadata"]
