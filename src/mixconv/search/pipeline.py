"""``mixconv search`` end to end: latency table, supernet, scoring, the study, finalists measured, outputs.

Phases, each resumable from the output directory:

1. the latency model of the target (cached table; its error on random architectures, ``predictor.json``);
   an impossible budget stops here, before anything is trained or written;
2. the supernet, trained by the training loop of ``mixconv train`` (``supernet/``: checkpoints, resume); or a
   supernet run trained elsewhere (``--supernet DIR``, e.g. under torchrun);
3. the study (Optuna, ``study.db``) and, for comparison, random search with the same number of evaluations;
4. the finalists measured end to end; ``best.yaml``, ``top/``, ``pareto.png`` and ``summary.json``.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from mixconv.files.config import config_to_yaml
from mixconv.files.space import load_space, save_space
from mixconv.files.weights import read_checkpoint
from mixconv.models.profile import count_macs, count_params
from mixconv.models.space import MIXNET_S_SLOTS, Arch, SearchSpace, mixnet_s_choices
from mixconv.models.supernet import Supernet
from mixconv.search.evaluate import Scorer, ScoringData
from mixconv.search.latency import LatencyModel, PredictorError, TableKey, check_target, predictor_error
from mixconv.search.study import Evaluated, SearchError, run_study
from mixconv.training.config import TrainConfig, make_config
from mixconv.training.main import resolve_preprocess, write_json, write_text
from mixconv.training.main import run as run_training
from mixconv.training.state import checkpoint_paths


@dataclass(frozen=True)
class SearchSettings:
    """Every setting of a search (the ``mixconv search`` options)."""

    output: str = "runs/search"
    space: str = "small"  # a preset (mixnet-s, small, tiny) or a search-space YAML
    data: str = "digit-pairs"
    recipe: str = "digit-pairs"  # the training recipe of the supernet (and of retraining the winner)
    target: str = "onnxruntime"
    latency_ms: Optional[float] = None
    macs: Optional[float] = None  # millions of multiply-accumulates (the macs target)
    strategy: str = "evolution"
    evaluations: int = 64
    population: int = 16
    sample_size: int = 4
    seed: int = 0  # the search's seed (the supernet's training seed is the recipe's)
    compare_random: bool = True
    supernet: Optional[str] = None  # a trained supernet run directory to reuse
    supernet_epochs: int = 10
    holdout_fraction: float = 0.1
    train_overrides: dict = field(default_factory=dict)  # more TrainConfig fields for the supernet's run
    batch_size: int = 1  # of the latency measurements
    threads: int = 0  # of the latency measurements (0: torch's)
    latency_cache: Optional[str] = None
    predictor_archs: int = 30
    finalists: int = 5
    recal_images: int = 512
    heldout_images: Optional[int] = None

    def budget(self) -> tuple[float, str]:
        """``(budget, unit)``; exactly one of ``latency_ms`` and ``macs``, matching the target."""
        if (self.latency_ms is None) == (self.macs is None):
            raise SearchError("give exactly one budget: --latency-ms (a timed target) or --macs (millions)")
        if self.macs is not None:
            if self.target != "macs":
                raise SearchError(f"--macs is a budget for --target macs, not {self.target}; use --latency-ms")
            return float(self.macs), "MMACs"
        if self.target == "macs":
            raise SearchError("--target macs takes --macs (millions), not --latency-ms")
        return float(self.latency_ms), "ms"  # type: ignore[arg-type]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bar(desc: str) -> Callable[[int, int], None]:
    state: dict[str, Any] = {}

    def update(n: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.update(n - bar.n)
        if n >= total:
            bar.close()

    return update


def supernet_config(s: SearchSettings, out: Path) -> TrainConfig:
    overrides = {"model": str(out / "space.yaml"), "data": s.data, "holdout_fraction": s.holdout_fraction,
                 "epochs": s.supernet_epochs, "output": str(out / "supernet"), **s.train_overrides}
    return make_config(s.recipe, overrides)


def latency_model(s: SearchSettings, space: SearchSpace, img_size: int) -> LatencyModel:
    threads = s.threads or torch.get_num_threads()
    key = TableKey(check_target(s.target), img_size, s.batch_size, threads)
    return LatencyModel(space, key, Path(s.latency_cache) if s.latency_cache else None)


def _predictor(s: SearchSettings, model: LatencyModel, out: Path) -> PredictorError:
    path = out / "predictor.json"
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("table") == model.table.path.name and doc.get("n") == s.predictor_archs:
            return PredictorError(doc["n"], doc["mape"], doc["within_10"], doc["kendall_tau"],
                                  tuple(tuple(p) for p in doc["pairs"]))
    err = predictor_error(model, s.predictor_archs, seed=s.seed, progress=_bar("predictor check"))
    write_json(path, {**err.to_dict(), "table": model.table.path.name})
    return err


def train_supernet(s: SearchSettings, out: Path) -> tuple[Path, TrainConfig]:
    """The supernet run directory (trained or resumed here, or the one given) and its settings."""
    from mixconv.training.main import resumed_config

    if s.supernet:
        run_dir = Path(s.supernet)
        return run_dir, resumed_config(run_dir, {}, f"--supernet {run_dir}")
    run_dir = out / "supernet"
    if checkpoint_paths(run_dir, "last")[1].exists():
        run_training(TrainConfig(), resume=str(run_dir))
    else:
        run_training(supernet_config(s, out))
    return run_dir, resumed_config(run_dir, {}, str(run_dir))


def load_supernet(run_dir: Path, space: SearchSpace, cfg: TrainConfig) -> Supernet:
    state, _ = read_checkpoint(checkpoint_paths(run_dir, "last")[0])
    net = Supernet(space, int(cfg.num_classes or 0), 3)
    net.load_state_dict(state)
    return net.eval()


def _in_mixnet_s_skeleton(space: SearchSpace) -> Optional[Arch]:
    """MixNet-S's own choices where ``space`` has its skeleton and offers them (the pareto mark)."""
    same = [(a.out_channels, a.stride) for a in space.layers] == [(b.out_channels, b.stride) for b in MIXNET_S_SLOTS]
    if not same:
        return None
    try:
        return space.check(mixnet_s_choices())
    except ValueError:
        return None


def _describe(space: SearchSpace, arch: Arch, img_size: int, num_classes: int) -> dict[str, Any]:
    from mixconv.models.mixnet import MixNet

    net = MixNet(space.to_spec(arch), num_classes=num_classes)
    return {"layers": [c.describe() for c in arch], "params": count_params(net),
            "macs": count_macs(net, (3, img_size, img_size))}


def _finalists(space: SearchSpace, evaluated: list[Evaluated], model: LatencyModel, k: int) -> list[dict[str, Any]]:
    seen, rows = set(), []
    for e in sorted(evaluated, key=lambda e: (-e.score, e.number)):
        if e.arch in seen:
            continue
        seen.add(e.arch)
        rows.append({"arch": e.arch, "score": e.score, "predicted": e.predicted, "measured": model.measure_arch(e.arch)})
        if len(rows) == k:
            break
    return rows


def write_top(out: Path, space: SearchSpace, rows: list[dict[str, Any]], unit: str, budget: float) -> Path:
    """``top/N.yaml`` for every finalist (a comment header with its numbers) and ``best.yaml``."""
    best: Optional[Path] = None
    for n, row in enumerate(rows, 1):
        header = (f"# found by mixconv search: rank {n}; supernet top-1 {row['score']:.2f} (held-out); "
                  f"predicted {row['predicted']:.3f} {unit}, measured {row['measured']:.3f} {unit} "
                  f"(budget {budget:g}); params {row['params']:,}, MACs {row['macs']:,}\n")
        text = header + config_to_yaml(space.to_spec(row["arch"]))
        path = out / "top" / f"{n}.yaml"
        write_text(path, text)
        if row.get("best"):
            best = out / "best.yaml"
            write_text(best, text)
    assert best is not None
    return best


def run_search(s: SearchSettings) -> dict[str, Any]:
    """Run (or resume) a search; returns the summary (also written to ``summary.json``)."""
    budget, unit = s.budget()
    space = load_space(s.space)
    out = Path(s.output)
    phases: dict[str, float] = {}
    img_size = supernet_config(s, out).img_size or 224
    t0 = time.perf_counter()
    model = latency_model(s, space, img_size)
    measured = model.measure(_bar(f"latency table ({s.target})"))
    fastest, _ = model.fastest()
    if budget < fastest:
        raise SearchError(f"no architecture of the space fits the budget of {budget:g} {unit} on {s.target}: "
                          f"the fastest achievable is {fastest:.3f} {unit} (predicted); raise the budget")
    out.mkdir(parents=True, exist_ok=True)
    _check_space(out, space)
    _log(f"latency table {model.table.path} ({len(model.table.entries)} entries, {measured} measured now)")
    err = _predictor(s, model, out)
    _log(err.describe(unit))
    if err.mape > 0.10:
        warnings.warn(f"the latency predictor is off by {100 * err.mape:.1f}% on average (above 10%); the "
                      "finalists are measured end to end before the YAML is written", stacklevel=2)
    phases["latency"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_dir, cfg = train_supernet(s, out)
    supernet = load_supernet(run_dir, space, cfg)
    phases["supernet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = ScoringData.from_dataset(cfg.data, resolve_preprocess(cfg), cfg.holdout_fraction, cfg.val_fraction,
                                    s.recal_images, s.heldout_images, seed=s.seed)
    scorer = Scorer(supernet, data)
    studies = _studies(s, space, scorer, model, budget, out)
    phases["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = _finish(s, space, model, studies, scorer, budget, unit, img_size, int(cfg.num_classes or 0), out)
    phases["finalists"] = time.perf_counter() - t0
    summary.update(phases_seconds={k: round(v, 1) for k, v in phases.items()}, predictor=err.to_dict(),
                   fastest_achievable=fastest, table=str(model.table.path), supernet_run=str(run_dir))
    write_json(out / "summary.json", summary)
    return summary


def _check_space(out: Path, space: SearchSpace) -> None:
    path = out / "space.yaml"
    if path.is_file() and load_space(path) != space:
        raise SearchError(f"{out} holds a search over another space ({path}); choose another --output")
    save_space(space, path)


def _studies(s: SearchSettings, space: SearchSpace, scorer: Scorer, model: LatencyModel, budget: float,
             out: Path) -> dict[str, list[Evaluated]]:
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    strategies = [s.strategy] + (["random"] if s.compare_random and s.strategy != "random" else [])
    result = {}
    for strategy in strategies:
        result[strategy] = run_study(
            space, scorer.score, model.predict, budget, strategy=strategy, evaluations=s.evaluations, seed=s.seed,
            storage=storage, study_name=f"{strategy}-seed{s.seed}", population=s.population,
            sample_size=s.sample_size, progress=_bar(f"search ({strategy})"))
        best = max(result[strategy], key=lambda e: e.score)
        _log(f"{strategy}: best supernet top-1 {best.score:.2f} at {best.predicted:.3f} predicted")
    return result


def _finish(s: SearchSettings, space: SearchSpace, model: LatencyModel, studies: dict[str, list[Evaluated]],
            scorer: Scorer, budget: float, unit: str, img_size: int, num_classes: int, out: Path) -> dict[str, Any]:
    from mixconv.search.report import pareto_plot

    evaluated = studies[s.strategy]
    rows = _finalists(space, evaluated, model, s.finalists)
    within = [r for r in rows if r["measured"] <= budget]
    if not within:
        warnings.warn(f"no finalist measured within the budget ({budget:g} {unit}); best.yaml is the finalist "
                      "measured fastest", stacklevel=2)
    best_row = within[0] if within else min(rows, key=lambda r: r["measured"])
    best_row["best"] = True
    for row in rows:
        row.update(_describe(space, row["arch"], img_size, num_classes))
    best_path = write_top(out, space, rows, unit, budget)
    marks: dict[str, dict[str, Any]] = {}
    ms = _in_mixnet_s_skeleton(space)
    if ms is not None:
        marks["MixNet-S"] = {"score": scorer.score(ms), "predicted": model.predict(ms)}
    if "random" in studies and s.strategy != "random":
        rb = max(studies["random"], key=lambda e: e.score)
        marks["random best"] = {"score": rb.score, "predicted": rb.predicted}
    pareto_plot(out / "pareto.png", evaluated, marks, budget, unit, s.strategy)
    command = (f"mixconv train --config {s.recipe} --model {best_path} --data {s.data} "
               f"--output {out / 'retrain'}")
    summary = {
        "settings": asdict(s), "space": space.name, "space_size": space.size(), "budget": budget, "unit": unit,
        "best": _row_json(best_row), "finalists": [_row_json(r) for r in rows], "marks": marks,
        "evaluated": {k: [{"trial": e.number, "layers": [c.describe() for c in e.arch], "score": e.score,
                           "predicted": e.predicted} for e in v] for k, v in studies.items()},
        "train_command": command,
    }
    _log(f"best: supernet top-1 {best_row['score']:.2f}, predicted {best_row['predicted']:.3f} {unit}, measured "
         f"{best_row['measured']:.3f} {unit}; written to {best_path}")
    print(f"train the winner: {command}")
    return summary


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "arch"}
