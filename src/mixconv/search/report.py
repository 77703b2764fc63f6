"""``pareto.png``: supernet accuracy against predicted latency for every evaluated candidate."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mixconv.files.atomic import atomic_write
from mixconv.search.study import Evaluated


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points no other point beats on both, by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front


def pareto_plot(path: Path, evaluated: Sequence[Evaluated], marks: dict[str, dict[str, Any]], budget: float,
                unit: str, strategy: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs, ys = [e.predicted for e in evaluated], [e.score for e in evaluated]
    ax.scatter(xs, ys, s=14, alpha=0.6, label=f"{strategy} candidates")
    front = pareto_front(list(zip(xs, ys)))
    ax.plot([p[0] for p in front], [p[1] for p in front], color="C0", lw=1)
    for (name, m), marker, color in zip(marks.items(), ("*", "D", "s"), ("C3", "C2", "C4")):
        ax.scatter([m["predicted"]], [m["score"]], marker=marker, s=90, color=color, label=name, zorder=3)
    ax.axvline(budget, color="grey", ls="--", lw=1, label=f"budget {budget:g} {unit}")
    ax.set_xlabel(f"predicted latency ({unit})")
    ax.set_ylabel("supernet top-1 on held-out training images (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
