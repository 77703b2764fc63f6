"""The studies' plots in the paper's form (matplotlib, the ``plots`` extra): accuracy against MACs and params
(kernel sweep), against the layer index (single-layer study), against the largest kernel (partition,
dilation). Points are means over seeds; error bars the seeds' standard deviation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mixconv.studies.claims import ArmStats, arm_stats

LABELS = {"depthwise": "depthwise kxk", "mixconv": "MixConv {3..k}", "exponential": "MixConv, exponential",
          "dilated": "3x3 dilated to k", "baseline": "all 3x3"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - the plots extra is part of dev
        raise ImportError("the study plots need matplotlib: pip install 'mixconv[plots]'") from e
    return plt


def _series(stats: list[ArmStats]) -> dict[tuple[str, str], list[ArmStats]]:
    out: dict[tuple[str, str], list[ArmStats]] = {}
    for a in stats:
        if a.layer is None and a.kind != "baseline":
            out.setdefault((a.family, a.kind), []).append(a)
    for key in out:
        out[key].sort(key=lambda a: a.kernel)
    return out


def _kernel_axes(axes, stats: list[ArmStats], xs: tuple[str, ...]) -> None:
    series = _series(stats)
    for (family, kind) in sorted(series):
        arms = series[(family, kind)]
        if kind == "mixconv":  # MixConv {3} is the 3x3 depthwise conv: the curves start together
            arms = [a for a in series.get((family, "depthwise"), []) if a.kernel == 3] + arms
        for ax, x in zip(axes, xs):
            vals = [getattr(a, x) / (1 if x == "kernel" else 1e6) for a in arms]
            ax.errorbar(vals, [a.top1 for a in arms], yerr=[a.std for a in arms], marker="o", capsize=2,
                        label=f"{family.upper()} {LABELS[kind]}")
            for a, v in zip(arms, vals):
                ax.annotate(str(a.kernel), (v, a.top1), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax, x in zip(axes, xs):
        ax.set_xlabel({"macs": "MMACs (one image)", "params": "params (M)", "kernel": "largest kernel k"}[x])
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def _layer_axes(ax, stats: list[ArmStats]) -> None:
    for family in sorted({a.family for a in stats}):
        base = next((a for a in stats if a.family == family and a.kind == "baseline"), None)
        if base is not None:
            ax.axhspan(base.top1 - base.std, base.top1 + base.std, alpha=0.15, color="gray")
            ax.axhline(base.top1, color="gray", ls="--", label=f"{family.upper()} all 3x3")
        for kind in ("depthwise", "mixconv"):
            arms = sorted((a for a in stats if a.family == family and a.kind == kind and a.layer), key=lambda a: a.layer)
            if arms:
                ax.errorbar([a.layer for a in arms], [a.top1 for a in arms], yerr=[a.std for a in arms], marker="o",
                            capsize=2, label=f"{family.upper()} one layer " + ("9x9" if kind == "depthwise" else
                                                                               "MixConv3579"))
        s2 = sorted({a.layer for a in stats if a.family == family and a.stride == 2})
        for i in s2:
            ax.axvline(i, color="red", alpha=0.15, lw=6)
    ax.set_xlabel("layer index (red: stride 2)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_study(study: str, rows: list[dict[str, Any]], path: Path) -> Path:
    """Draw ``study``'s plot from its CSV rows into ``path`` (PNG)."""
    plt = _pyplot()
    stats = arm_stats(rows)
    if study == "kernels":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        _kernel_axes(axes, stats, ("macs", "params"))
    elif study == "layers":
        fig, ax = plt.subplots(figsize=(8, 4.2))
        _layer_axes(ax, stats)
    else:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        _kernel_axes([ax], stats, ("kernel",))
    fig.suptitle(f"mixconv study {study}: final top-1, mean over seeds (bars: std)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
