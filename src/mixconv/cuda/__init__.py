"""CUDA-only runtime pieces: CUDA-graph inference (:mod:`.graphs`) and GPU JPEG decoding (:mod:`.jpeg`). Their
pure-Python parts (batch bucketing, decode pipeline) also run on CPU, for tests."""
