"""Model surgery: transforms of built models that keep their weights' meaning.

:func:`optimize_for_inference` (BatchNorm folded, MixConvs merged, NHWC), :func:`mixify` (MixConv as a drop-in
for the depthwise convs of any model), :func:`use_triton` and the Triton epilogue fusion. Above
:mod:`mixconv.models`, below everything that reads files.
"""
from mixconv.surgery.mixify import mixify
from mixconv.surgery.optimize import optimize_for_inference
from mixconv.surgery.triton import use_triton

__all__ = ["mixify", "optimize_for_inference", "use_triton"]
