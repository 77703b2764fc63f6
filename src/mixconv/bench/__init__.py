"""Measurements: the interleaved timing core, CPU, CUDA and onnxruntime benchmarks, model summaries."""
