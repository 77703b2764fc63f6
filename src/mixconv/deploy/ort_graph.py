"""Rewrites of an exported float32 ONNX graph for onnxruntime's CPU kernels: the same outputs, faster.

ORT's CPU provider runs convolutions in a blocked layout (NCHWc: 8 or 16 channels per block) and converts a
tensor into and out of it (``ReorderInput``/``ReorderOutput``, one full copy each) around every op that has no
blocked kernel. In a MixNet exported by ``mixconv export --optimize`` two kinds of ops left the blocked layout:

1. the squeeze-excite MLP on the pooled *vector* (``ReduceMean`` -> ``Gemm`` -> act -> ``Gemm`` -> ``Sigmoid`` ->
   ``Unsqueeze``, the form ``optimize_for_inference`` computes fastest in PyTorch) -> :func:`se_vector_to_map`
   makes it ``GlobalAveragePool`` -> 1x1 ``Conv`` -> act -> 1x1 ``Conv`` -> ``Sigmoid`` on a 1x1 map;
2. grouped (not depthwise) 1x1 convs, MixNet's group-2 expand/project convs, which ORT has no blocked kernel
   for -> :func:`mixconv.deploy.densify.densify_graph` makes those whose dense weight adds at most
   ``MAX_ZEROS`` zeros dense (block-diagonal weights): the high-resolution ones, where the layout changes cost
   more than the doubled multiply-adds; the wide late ones stay grouped.

Measured on MixNet-S 224 in ORT 1.32 (2 threads, quiet 2-core Xeon, AVX-512; interleaved medians against
timm's ONNX export in the same process), img/s ratio to timm's file, batch 1 / batch 32, idle threads not
spinning (the deploy benchmark's setting): before 1.81 / 1.99; both rewrites 1.98 / 2.32 (with every grouped
conv dense instead: 1.95 / 2.22). The SE rewrite alone changes nothing in float32, but after ``mixconv
quantize`` the SE then runs in int8 too (no float ``ReduceMean``/``Gemm`` islands with their conversions): the
int8 file got 11% / 17% faster than the one quantized from the dense-only graph. Tried and left
out: broadcasting the SE gate with a nearest ``Resize`` so that the multiply stays blocked (-2 to -3%, and
onnxruntime's quantization pre-processing cannot infer that graph's shapes); padding the SE width to a
multiple of 16 so its tiny vectors stay blocked (+0 to 2%, within noise).

Node names and their metadata (the module paths ``--exclude`` reads) are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixconv.deploy.densify import MAX_ZEROS, densify_graph


@dataclass(frozen=True)
class OrtRewrites:
    """How many of each rewrite :func:`tune_for_onnxruntime` made."""

    se_to_map: int
    dense_pointwise: int

    def __str__(self) -> str:
        return (f"onnxruntime rewrites: {self.se_to_map} squeeze-excite MLPs on 1x1 maps, {self.dense_pointwise} "
                "grouped 1x1 convs made dense")


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attrs(node: Any, **attrs: Any) -> None:
    from onnx import helper

    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            out.setdefault(name, []).append(n)
    return out


def _const_ints(graph: Any, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(_attr(n, "value")).reshape(-1)]
    return None


def _se_chain(node: Any, cons: dict[str, list[Any]]) -> list[Any] | None:
    """The ops from a pooled-vector ``ReduceMean`` to its ``Unsqueeze``: Gemms and elementwise activations
    (single consumers, an activation ``x * sigmoid(x)`` counted as both its nodes), or ``None``."""
    chain, cur = [], node
    while True:
        nxt = cons.get(cur.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Unsqueeze":
            chain.append(nxt[0])
            return chain if any(n.op_type == "Gemm" for n in chain) else None
        if len(nxt) == 1 and nxt[0].op_type in ("Gemm", "Sigmoid", "Relu", "HardSigmoid", "HardSwish"):
            cur = nxt[0]
        elif len(nxt) == 2 and {n.op_type for n in nxt} == {"Sigmoid", "Mul"}:  # swish: x * sigmoid(x)
            sig = next(n for n in nxt if n.op_type == "Sigmoid")
            mul = next(n for n in nxt if n.op_type == "Mul")
            if sig.output[0] not in mul.input or len(cons.get(sig.output[0], [])) != 1:
                return None
            chain.append(sig)
            cur = mul
        else:
            return None
        if cur.op_type == "Gemm" and (_attr(cur, "transA", 0) or not _attr(cur, "transB", 0)
                                      or _attr(cur, "alpha", 1.0) != 1.0 or _attr(cur, "beta", 1.0) != 1.0):
            return None
        chain.append(cur)


def se_vector_to_map(model: Any) -> int:
    """Rewrite (in place) each squeeze-excite MLP on the pooled vector as one on a 1x1 map; returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    cons = _consumers(graph)
    done, drop = 0, []
    for node in list(graph.node):
        if node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 0 or len(node.input) < 2:
            continue
        if sorted(_const_ints(graph, node.input[1]) or []) != [2, 3]:
            continue
        chain = _se_chain(node, cons)
        if chain is None or any(n.op_type == "Gemm" and n.input[1] not in inits for n in chain):
            continue
        unsqueeze = chain[-1]
        if sorted(_const_ints(graph, unsqueeze.input[1]) or []) != [2, 3]:
            continue
        if any(out.name == unsqueeze.output[0] for out in graph.output):
            continue  # the gate itself is a graph output: leave its shape alone
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        _set_attrs(node)
        for gemm in (n for n in chain if n.op_type == "Gemm"):
            w = numpy_helper.to_array(inits[gemm.input[1]])
            inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(w.reshape(*w.shape, 1, 1), gemm.input[1]))
            if len(gemm.input) > 2 and gemm.input[2] in inits:
                b = numpy_helper.to_array(inits[gemm.input[2]]).reshape(-1)
                if b.shape[0] != w.shape[0]:  # a broadcast scalar bias: a Conv wants one per output channel
                    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(
                        np.broadcast_to(b, (w.shape[0],)).copy(), gemm.input[2]))
            gemm.op_type = "Conv"
            _set_attrs(gemm, kernel_shape=[1, 1])
        for c in cons.get(unsqueeze.output[0], []):  # the gate is (N, C, 1, 1) already
            for i, name in enumerate(c.input):
                if name == unsqueeze.output[0]:
                    c.input[i] = unsqueeze.input[0]
        drop.append(unsqueeze)
        done += 1
    for n in drop:
        graph.node.remove(n)
    if done:
        del graph.value_info[:]  # the old (N, C) shapes: ORT infers the new ones
    return done


def drop_unused_initializers(graph: Any) -> int:
    """Remove the initializers no node or graph output reads (the rewrites above orphan the axes constants of
    the nodes they drop; onnxruntime would print a warning for each at every session). Returns how many."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return len(unused)


def tune_for_onnxruntime(model: Any) -> OrtRewrites:
    """All rewrites above, in place on an ``onnx.ModelProto`` (float32); returns what was done."""
    done = OrtRewrites(se_vector_to_map(model), densify_graph(model.graph, MAX_ZEROS))
    drop_unused_initializers(model.graph)
    return done
