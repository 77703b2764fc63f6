"""GPU kernels: a Triton MixConv (every kernel-size group in one launch) as the custom op
``torch.ops.mixconv.mixconv2d``.

Importing this package does not import Triton; :mod:`mixconv.kernels.ops` does. ``MixConv2d(impl="triton")``
(or :func:`mixconv.surgery.use_triton` on a model) runs the kernels on CUDA tensors only; on CPU it falls back to the
``merged``/``split`` impls, unless :func:`force_interpreter` is on and Triton runs its interpreter
(``TRITON_INTERPRET=1`` before triton's first import), which is what the CPU tests do.
"""
from mixconv.kernels.routing import force_interpreter, triton_available, wants_triton

__all__ = ["force_interpreter", "triton_available", "wants_triton"]
