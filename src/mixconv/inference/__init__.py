"""Running a trained model on images: a checkpoint, hub folder or ONNX file (in onnxruntime) with its classes
and preprocessing; the evaluation loop, mixed precision and the process group both validation and training use.
"""
