"""The paper's claims, checked against a study's measurements (means over seeds; the spread is shown).

A claim ``holds`` when the measured means point the paper's way; ``None`` where the study lacks the arms to
tell. The margin of "barely changes" is twice the seed spread of the baseline, at least 0.5 points.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Optional

PAPER = {
    "kernels": ("accuracy falls for large single kernels",
                "MixConv holds or improves accuracy with fewer params and MACs than the kxk depthwise conv"),
    "layers": ("most layers barely change with a 9x9 or MixConv3579 in place of their 3x3",
               "stride-2 layers gain more from large kernels than stride-1 layers",
               "MixConv3579 matches or beats DepthwiseConv9x9 with about half its params"),
    "partition": ("exponential partition is slightly better than equal on MobileNetV1; no clear winner overall",),
    "dilation": ("dilated kernels fall behind large kernels as the kernel grows",),
}


@dataclass(frozen=True)
class Claim:
    study: str
    claim: str
    measured: str
    holds: Optional[bool]


@dataclass(frozen=True)
class ArmStats:
    family: str
    arm: str
    kind: str
    kernel: int
    layer: Optional[int]
    stride: Optional[int]
    params: int
    macs: int
    top1: float
    std: float
    seeds: int


def arm_stats(rows: list[dict[str, Any]]) -> list[ArmStats]:
    """One entry per (family, arm), in first-seen order: mean and spread of the final top-1 over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["arm"]), []).append(r)
    out = []
    for (family, arm), rs in groups.items():
        top = [float(r["top1"]) for r in rs]
        layer, stride = rs[0]["layer"], rs[0]["stride"]
        out.append(ArmStats(family, arm, rs[0]["kind"], int(rs[0]["kernel"]), int(layer) if layer != "" else None,
                            int(stride) if stride != "" else None, int(rs[0]["params"]), int(rs[0]["macs"]),
                            statistics.fmean(top), statistics.stdev(top) if len(top) > 1 else 0.0, len(top)))
    return out


def _fmt(a: ArmStats) -> str:
    return f"{a.top1:.2f}" + (f"±{a.std:.2f}" if a.seeds > 1 else "")


def _by(stats: list[ArmStats], family: str, kind: str) -> dict[int, ArmStats]:
    return {a.kernel: a for a in stats if a.family == family and a.kind == kind and a.layer is None}


def _kernels(stats: list[ArmStats], family: str) -> list[Claim]:
    dw, mx = _by(stats, family, "depthwise"), _by(stats, family, "mixconv")
    claims = []
    if len(dw) >= 2:
        best = max(dw.values(), key=lambda a: a.top1)
        largest = dw[max(dw)]
        claims.append(Claim("kernels", PAPER["kernels"][0] + f" ({family})",
                            f"best single kernel {best.kernel}x{best.kernel} {_fmt(best)}; largest "
                            f"{largest.kernel}x{largest.kernel} {_fmt(largest)}", largest.top1 < best.top1))
    pairs = [(dw[k], mx[k]) for k in sorted(mx) if k in dw]
    if pairs:
        wins = sum(m.top1 >= d.top1 for d, m in pairs)
        cheaper = all(m.params < d.params and m.macs < d.macs for d, m in pairs)
        detail = ", ".join(f"{k}: {m.top1 - d.top1:+.2f}" for (d, m), k in zip(pairs, sorted(mx)))
        claims.append(Claim("kernels", PAPER["kernels"][1] + f" ({family})",
                            f"MixConv {{3..k}} minus kxk top-1 by k: {detail} ({wins}/{len(pairs)} at or above; "
                            f"{'fewer' if cheaper else 'not always fewer'} params and MACs)",
                            wins * 2 >= len(pairs) and cheaper))
    return claims


def _layers(stats: list[ArmStats], family: str) -> list[Claim]:
    base = next((a for a in stats if a.family == family and a.kind == "baseline"), None)
    arms = [a for a in stats if a.family == family and a.layer is not None]
    if base is None or not arms:
        return []
    margin = max(0.5, 2 * base.std)
    small = sum(abs(a.top1 - base.top1) <= margin for a in arms)
    claims = [Claim("layers", PAPER["layers"][0] + f" ({family})",
                    f"{small}/{len(arms)} single-layer arms within {margin:.2f} points of the all-3x3 baseline "
                    f"{_fmt(base)}", small * 2 > len(arms))]
    s2 = [a.top1 - base.top1 for a in arms if a.stride == 2]
    s1 = [a.top1 - base.top1 for a in arms if a.stride == 1]
    if s2 and s1:
        m2, m1 = statistics.fmean(s2), statistics.fmean(s1)
        claims.append(Claim("layers", PAPER["layers"][1] + f" ({family})",
                            f"mean change from the baseline: stride-2 layers {m2:+.2f}, stride-1 layers {m1:+.2f}",
                            m2 > m1 and m2 > 0))
    dw = {a.layer: a for a in arms if a.kind == "depthwise"}
    mx = {a.layer: a for a in arms if a.kind == "mixconv"}
    both = sorted(set(dw) & set(mx))
    if both:
        ok = sum(mx[i].top1 >= dw[i].top1 - margin for i in both)
        ratio = statistics.fmean((mx[i].params - base.params) / max(1, dw[i].params - base.params) for i in both)
        claims.append(Claim("layers", PAPER["layers"][2] + f" ({family})",
                            f"MixConv3579 at or above 9x9 (within {margin:.2f}) in {ok}/{len(both)} layers; it adds "
                            f"{ratio:.2f}x the params 9x9 adds", ok * 2 > len(both)))
    return claims


def _deltas(stats: list[ArmStats], family: str, base: str, other: str) -> tuple[list[int], list[float], str]:
    """The kernels both kinds have, ``other - base`` top-1 at each, and those as text."""
    a, b = _by(stats, family, base), _by(stats, family, other)
    ks = sorted(set(a) & set(b))
    deltas = [b[k].top1 - a[k].top1 for k in ks]
    return ks, deltas, ", ".join(f"{k}: {d:+.2f}" for k, d in zip(ks, deltas))


def _partition(stats: list[ArmStats], family: str) -> list[Claim]:
    ks, deltas, detail = _deltas(stats, family, "mixconv", "exponential")
    if not ks:
        return []
    mean = statistics.fmean(deltas)
    return [Claim("partition", PAPER["partition"][0] + f" ({family})",
                  f"exponential minus equal top-1 by largest kernel: {detail} (mean {mean:+.2f})",
                  mean > 0 if family == "v1" else None)]


def _dilation(stats: list[ArmStats], family: str) -> list[Claim]:
    ks, deltas, detail = _deltas(stats, family, "depthwise", "dilated")
    if not ks:
        return []
    holds = deltas[-1] < 0 and (len(ks) == 1 or deltas[-1] < deltas[0])
    return [Claim("dilation", PAPER["dilation"][0] + f" ({family})",
                  f"dilated 3x3 minus kxk top-1 by receptive field k: {detail}", holds)]


CHECKS = {"kernels": _kernels, "layers": _layers, "partition": _partition, "dilation": _dilation}


def study_claims(study: str, rows: list[dict[str, Any]]) -> list[Claim]:
    """Each of the paper's claims for ``study``, per model family, against ``rows`` (the study's CSV rows)."""
    stats = arm_stats(rows)
    families = sorted({a.family for a in stats})
    return [c for f in families for c in CHECKS[study](stats, f)]


def claims_markdown(study: str, claims: list[Claim]) -> str:
    verdict = {True: "held", False: "did not hold", None: "not tested"}
    lines = [f"## {study}: the paper's claims against this run", "", "| paper's claim | measured | verdict |",
             "| --- | --- | --- |"]
    lines += [f"| {c.claim} | {c.measured} | {verdict[c.holds]} |" for c in claims]
    return "\n".join(lines) + "\n"
