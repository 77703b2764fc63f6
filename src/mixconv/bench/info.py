"""Model summaries: parameters, MACs (``torch.utils.flop_counter``), feature channels, per-stage layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixconv.factory.create import create_model, resolve_model_name
from mixconv.models.builder import resolve
from mixconv.models.profile import count_macs, count_params


def model_summary(name_or_yaml: str | Path, *, with_layout: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of one model."""
    name, spec, meta = resolve_model_name(name_or_yaml)
    model = create_model(name_or_yaml)
    if spec is None:  # a registered non-MixNet model (e.g. a MixConv-MobileNet): no MixNet layout
        return _builder_summary(name, model, meta)
    net = resolve(spec)
    summary: dict[str, Any] = {
        "name": name,
        "params": count_params(model),
        "macs": count_macs(model, meta.input_size),
        "paper_macs": meta.paper_macs,
        "input_size": list(meta.input_size),
        "crop_pct": meta.crop_pct,
        "interpolation": meta.interpolation,
        "feature_channels": [f["num_chs"] for f in net.feature_info()],
        "feature_reductions": [f["reduction"] for f in net.feature_info()],
        "num_features": net.num_features,
        "top1": meta.top1,
        "top5": meta.top5,
        "padding": spec.padding,
        "bn_eps": spec.bn_eps,
    }
    if with_layout:
        summary["stages"] = [
            {
                "stage": i,
                "reduction": red,
                "blocks": [
                    {
                        "in": b.in_channels, "mid": b.mid_channels, "out": b.out_channels,
                        "kernel_sizes": list(b.kernel_sizes), "stride": b.stride, "exp_groups": b.exp_groups,
                        "poi_groups": b.poi_groups, "se": b.se_channels, "act": b.act,
                    }
                    for b in stage
                ],
            }
            for i, (stage, red) in enumerate(zip(net.stages, net.reductions))
        ]
    return summary


def _builder_summary(name: str, model: torch.nn.Module, meta: Any) -> dict[str, Any]:
    return {
        "name": name, "params": count_params(model), "macs": count_macs(model, meta.input_size),
        "paper_macs": meta.paper_macs, "input_size": list(meta.input_size), "crop_pct": meta.crop_pct,
        "interpolation": meta.interpolation, "feature_channels": [], "feature_reductions": [],
        "num_features": getattr(model, "num_features", None), "top1": meta.top1, "top5": meta.top5,
        "stages": [],
    }


def _fmt_m(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of model summaries."""
    header = ["model", "params", "MACs", "paper MACs", "features", "top-1", "top-5"]
    body = [
        [
            r["name"], f"{r['params']:,}", _fmt_m(r["macs"]), _fmt_m(r["paper_macs"]),
            "/".join(str(c) for c in r["feature_channels"]) or "-",
            "-" if r["top1"] is None else f"{r['top1']:.2f}", "-" if r["top5"] is None else f"{r['top5']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_layout(summary: dict[str, Any]) -> str:
    lines = [format_table([summary]), "", "stage  stride  block  in -> mid -> out  kernels        exp/poi groups  SE   act"]
    for stage in summary["stages"]:
        for j, b in enumerate(stage["blocks"]):
            lines.append(
                f"{stage['stage']:<5}  {stage['reduction']:<6}  {j:<5}  {b['in']:>4} -> {b['mid']:>4} -> {b['out']:<4}  "
                f"{','.join(map(str, b['kernel_sizes'])):<13}  {b['exp_groups']}/{b['poi_groups']}"
                f"{'':<12}  {b['se'] or '-':<4} {b['act']}"
            )
    return "\n".join(lines)
