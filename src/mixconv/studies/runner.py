"""Run a study: every arm trained the same way by ``mixconv train``'s loop, then a CSV, plots and verdicts.

Output folder layout (shared by the studies that use it, so identical arms train once)::

    study.yaml             the training settings every arm uses (a second study must use the same)
    arms/NAME.yaml         each arm's network (``mixconv train --model arms/NAME.yaml`` retrains it)
    runs/NAME-sSEED/       each arm's training run (checkpoints, metrics.csv, summary.json)
    STUDY.csv              one row per arm and seed
    STUDY.png              the paper's plot
    STUDY.md               the paper's claims against what was measured

A stopped study resumes: finished runs are read back, a run stopped mid-way continues from its last
checkpoint, and the rest train. Under torchrun every rank trains every arm (DDP); rank 0 writes the files.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from mixconv.files.inputs import read_yaml
from mixconv.files.mobilenet import save_mobilenet
from mixconv.inference.distributed import DistInfo, barrier, cleanup, group_exists, init_distributed
from mixconv.models.mobilenet import mobilenet_from_spec
from mixconv.models.profile import count_macs, count_params
from mixconv.studies.arms import Arm, StudyError, study_arms
from mixconv.studies.presets import get_preset
from mixconv.training.config import TrainConfig, make_config
from mixconv.training.main import run as run_training
from mixconv.training.main import write_json, write_text
from mixconv.training.state import checkpoint_paths

COLUMNS = ("study", "family", "arm", "kind", "kernel", "layer", "stride", "seed", "params", "macs", "top1",
           "best_top1", "epochs", "run")


@dataclass(frozen=True)
class StudySettings:
    """One study run (the ``mixconv study`` options); ``None`` takes the preset's value."""

    study: str
    output: str = "runs/studies"
    preset: str = "cpu"
    data: Optional[str] = None
    recipe: Optional[str] = None
    families: Optional[tuple[str, ...]] = None
    width_mult: Optional[float] = None
    kernels: Optional[tuple[int, ...]] = None
    layers: Optional[tuple[int, ...]] = None
    seeds: Optional[tuple[int, ...]] = None
    epochs: Optional[int] = None
    img_size: Optional[int] = None
    train_overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A study resolved against its preset: the arms, the seeds and the training settings of every arm."""

    study: str
    out: Path
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    recipe: str
    training: dict  # TrainConfig fields every arm shares (the model and seed come per run)

    def config(self, arm: Arm, seed: int) -> TrainConfig:
        return make_config(self.recipe, {**self.training, "model": str(self.arm_path(arm)), "seed": seed,
                                         "output": str(self.run_dir(arm, seed))}, source="study")

    def arm_path(self, arm: Arm) -> Path:
        return self.out / "arms" / f"{arm.name}.yaml"

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / f"{arm.name}-s{seed}"


def plan_study(s: StudySettings) -> Plan:
    """Check the settings and list the arms (nothing is written)."""
    preset = get_preset(s.preset)
    families = tuple(s.families) if s.families is not None else preset.families
    widths = {f: s.width_mult for f in families} if s.width_mult is not None else dict(preset.widths)
    arms = study_arms(s.study, families, widths, s.kernels if s.kernels is not None else preset.kernels,
                      s.layers if s.layers is not None else preset.layers)
    seeds = tuple(s.seeds) if s.seeds is not None else preset.seeds
    if not seeds:
        raise StudyError("the study has no runs: give at least one seed")
    data = s.data or preset.data
    if data is None:
        raise StudyError(f"preset {s.preset!r} needs --data (an ImageFolder root with train/ and val/)")
    training = {**preset.train, **s.train_overrides, "data": data,
                "epochs": s.epochs if s.epochs is not None else preset.epochs}
    img_size = s.img_size if s.img_size is not None else preset.img_size
    if img_size is not None:
        training["img_size"] = img_size
    recipe = s.recipe or preset.recipe
    make_config(recipe, training, source="study")  # every setting checked before anything trains
    return Plan(s.study, Path(s.output), tuple(arms), seeds, recipe, training)


def _check_settings(plan: Plan, write: bool) -> None:
    """A folder holds runs of one training setting: refuse another (its runs would not be comparable); a new
    folder records it (``write``: rank 0)."""
    path = plan.out / "study.yaml"
    if path.is_file():
        saved = read_yaml(path, "the study folder's training settings (study.yaml)", StudyError) or {}
        diff = sorted(k for k in set(saved.get("training", {})) | set(plan.training)
                      if saved.get("training", {}).get(k) != plan.training.get(k))
        if saved.get("recipe") != plan.recipe:
            diff.insert(0, "recipe")
        if diff:
            raise StudyError(f"{plan.out} holds study runs trained with other settings ({', '.join(diff)} differ, "
                             f"see {path}); use another --output")
    elif write:
        write_text(path, yaml.safe_dump({"recipe": plan.recipe, "training": plan.training}, sort_keys=False))


def _finished(run_dir: Path) -> Optional[dict[str, Any]]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = read_yaml(path, "a training run's summary", StudyError)  # JSON is YAML
    return summary if isinstance(summary, dict) and summary.get("finished") else None


def train_arm(plan: Plan, arm: Arm, seed: int) -> dict[str, Any]:
    """The run of ``arm`` with ``seed``: read back when finished, resumed when stopped, else trained."""
    run_dir = plan.run_dir(arm, seed)
    done = _finished(run_dir)
    if done is not None:
        return done
    if checkpoint_paths(run_dir, "last")[1].exists():
        return run_training(TrainConfig(), resume=str(run_dir))
    return run_training(plan.config(arm, seed))


def arm_row(plan: Plan, arm: Arm, seed: int, summary: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    stride = arm.spec.strides()[arm.layer - 1] if arm.layer is not None else ""
    return {"study": plan.study, "family": arm.family, "arm": arm.name, "kind": arm.kind, "kernel": arm.kernel,
            "layer": arm.layer or "", "stride": stride, "seed": seed, "params": size[0], "macs": size[1],
            "top1": summary["final_top1"], "best_top1": summary["best_top1"], "epochs": summary["epochs"],
            "run": str(plan.run_dir(arm, seed))}


def model_size(arm: Arm, num_classes: int, img_size: int) -> tuple[int, int]:
    """Parameters and MACs of one image at ``img_size``."""
    model = mobilenet_from_spec(arm.spec, num_classes)
    return count_params(model), count_macs(model, (3, img_size, img_size))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    return path


def run_study(s: StudySettings, log=print) -> dict[str, Any]:
    """Run (or resume) a study; returns ``{"csv", "plot", "claims", "rows"}`` (``plot`` on rank 0 only)."""
    plan = plan_study(s)
    owned = not group_exists()
    info = init_distributed()  # one process group for every arm (torchrun); nothing to do in one process
    try:
        return _run(plan, info, log)
    finally:
        if owned:
            cleanup(info)


def _quiet(*_: Any) -> None:
    pass


def _run(plan: Plan, info: DistInfo, log) -> dict[str, Any]:
    from mixconv.studies.claims import claims_markdown, study_claims
    from mixconv.studies.plots import plot_study

    if info.is_main:
        plan.out.mkdir(parents=True, exist_ok=True)
        _check_settings(plan, write=True)
        for arm in plan.arms:
            if not plan.arm_path(arm).exists():
                save_mobilenet(arm.spec, plan.arm_path(arm), f"mixconv study {plan.study}: arm {arm.name} ({arm.kind})")
    barrier(info)  # the other ranks read the arm files rank 0 wrote (a shared folder)
    if not info.is_main:
        _check_settings(plan, write=False)
        log = _quiet
    rows: list[dict[str, Any]] = []
    runs = len(plan.arms) * len(plan.seeds)
    log(f"study {plan.study}: {len(plan.arms)} arms x {len(plan.seeds)} seeds = {runs} runs in {plan.out}")
    for arm in plan.arms:
        for seed in plan.seeds:
            t0 = time.perf_counter()
            summary = train_arm(plan, arm, seed)
            size = model_size(arm, num_classes(plan.run_dir(arm, seed)), plan.config(arm, seed).img_size or 224)
            rows.append(arm_row(plan, arm, seed, summary, size))
            log(f"[{len(rows)}/{runs}] {arm.name} seed {seed}: top-1 {summary['final_top1']:.2f} "
                f"({size[0] / 1e6:.3f} M params, {size[1] / 1e6:.1f} M MACs; {time.perf_counter() - t0:.0f} s)")
            if info.is_main:
                write_csv(plan.out / f"{plan.study}.csv", rows)
    claims = study_claims(plan.study, rows)
    result = {"csv": str(plan.out / f"{plan.study}.csv"), "claims": [asdict(c) for c in claims], "rows": rows}
    if info.is_main:
        result["plot"] = str(plot_study(plan.study, rows, plan.out / f"{plan.study}.png"))
        text = claims_markdown(plan.study, claims)
        write_text(plan.out / f"{plan.study}.md", text)
        write_json(plan.out / f"{plan.study}.json", {k: v for k, v in result.items() if k != "rows"})
        log(text)
    barrier(info)
    return result


def num_classes(run_dir: Path) -> int:
    """The classifier size of a run (its last checkpoint's header)."""
    from mixconv.files.weights import read_training_checkpoint

    _, extra = read_training_checkpoint(checkpoint_paths(run_dir, "last")[0])
    return int(extra.get("num_classes") or len(extra.get("classes", [])) or 1000)
