"""Files: bytes to state dicts, configs and records, and back. Nothing here builds a model.

* :mod:`~mixconv.files.inputs`: the safe readers (size limits, clear errors naming the file);
* :mod:`~mixconv.files.integrity`: hashes of files and tensors; :mod:`~mixconv.files.verify`: ``mixconv verify``;
* :mod:`~mixconv.files.weights`: checkpoints (safetensors, ``.pth``), timm <-> mixconv keys;
* :mod:`~mixconv.files.atomic`: atomic writes;
* :mod:`~mixconv.files.config`: the YAML schema of MixNet configs;
* :mod:`~mixconv.files.hub`: folders in timm's Hugging Face hub layout (``config.json`` + weights);
* :mod:`~mixconv.files.onnx_metadata`: what an exported ONNX file says about its model.
"""
