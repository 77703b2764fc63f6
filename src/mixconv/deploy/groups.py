"""Naming the nodes of an exported MixNet for ``--exclude``: groups (``stem``, ``se``, ...), module paths, names.

``mixconv export`` (the dynamo exporter) records each node's module path in its ``pkg.torch.onnx.name_scopes``
metadata, e.g. ``['', 'stages.2.0', 'stages.2.0.se', 'linear']``. A group or module path selects every node
whose module path is that module or inside it; a plain ONNX node name selects that node.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterable

from mixconv.files.config import ConfigError

# Named groups of modules kept in float by ``--exclude``; a tuple of (module-path predicate, description).
GROUPS: dict[str, tuple[Any, str]] = {
    "stem": (lambda path: path == "stem" or path.startswith("stem."), "the first conv (input statistics)"),
    "head": (lambda path: path == "head" or path.startswith("head."), "the last 1x1 conv before pooling"),
    "classifier": (lambda path: path in ("classifier", "global_pool"), "pooling and the final linear layer"),
    "se": (lambda path: "se" in path.split("."), "every squeeze-excite block (pool, two linears, the sigmoid gate)"),
}


def module_path(node: Any) -> str:
    """The dotted module path of an ONNX node from the exporter's metadata ('' when it has none)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            mods = [s for s in scopes[:-1] if s]  # the last entry is the op itself
            return mods[-1] if mods else ""
    return ""


def resolve_excludes(model_path: str | Path, names: Iterable[str]) -> list[str]:
    """ONNX node names for ``names`` (groups, module paths or node names) in the exported model at
    ``model_path``; raises :class:`ConfigError` naming what matched nothing."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    paths = {n.name: module_path(n) for n in graph.node}
    out: list[str] = []
    for name in names:
        if name in GROUPS:
            pred = GROUPS[name][0]
            hit = [n for n, p in paths.items() if p and pred(p)]
        elif name in paths:
            hit = [name]
        else:
            hit = [n for n, p in paths.items() if p == name or p.startswith(name + ".")]
        if not hit:
            known = ", ".join(GROUPS)
            detail = "" if any(paths.values()) else " (the file has no module paths: export it with `mixconv export`)"
            raise ConfigError(f"--exclude {name}: matches no node of {model_path}{detail}; expected a group "
                              f"({known}), a module path such as stages.1.0 or an ONNX node name")
        out += [h for h in hit if h not in out]
    return out
