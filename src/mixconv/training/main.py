"""The training run: ``main(args)`` for the CLI and ``train(...)`` for Python, one process or many (torchrun)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
import yaml
from torch import nn

from mixconv.factory.create import create_model
from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError
from mixconv.files.inputs import CheckpointError, read_yaml
from mixconv.files.integrity import tensors_sha256
from mixconv.files.weights import load_pretrained
from mixconv.inference.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    cleanup,
    gather_objects,
    group_exists,
    init_distributed,
    sync_buffers,
)
from mixconv.inference.engine import evaluate, quiet_cpu_compile, warn_amp
from mixconv.models.pretrained_cfg import Preprocess
from mixconv.training import elastic, preempt
from mixconv.training import state as ckpt
from mixconv.training.config import TrainConfig, auto_workers, check_overrides, make_config
from mixconv.training.data import TrainData, build_data, resolve_preprocess
from mixconv.training.grad_layout import match_grad_strides
from mixconv.training.ema import ModelEma
from mixconv.training.engine import EpochTotals, NonFiniteLossError, StepSettings, train_one_epoch
from mixconv.training.preempt import Preempted
from mixconv.training.errors import TrainingError, WriteError, writing
from mixconv.training.optim import create_optimizer, create_scheduler, scaled_lr

if TYPE_CHECKING:
    from mixconv.training.qat import QatCalibration

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s", "seconds",
                 "skipped_images")
# Settings a resumed run may change; anything else must match the run being resumed.
RESUME_CHANGEABLE = ("epochs", "workers", "log_interval", "checkpoint_every", "grad_checkpointing", "resume")


@dataclass
class RunState:
    """Mutable bookkeeping of a run (what the resume state stores besides module/optimizer states)."""

    epoch: int = 0  # completed epochs
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list = None  # metrics rows as dicts

    def __post_init__(self) -> None:
        self.history = list(self.history or [])


def log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, num_classes: int, info: DistInfo) -> nn.Module:
    model = create_model(cfg.model, num_classes=num_classes, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate)
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        # A zero classifier starts every class at equal odds (loss ln(N)); the TF init's large random logits
        # cost a short run its first epochs.
        nn.init.zeros_(model.classifier.weight)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)  # a classifier of another size stays as initialised above
    if cfg.qat:  # quantization-aware fine-tuning: fake quantization as onnxruntime's int8 (mixconv.training.qat)
        from mixconv.training.qat import setup_qat

        setup_qat(model, cfg)
    if cfg.grad_checkpointing:
        if not callable(getattr(model, "set_grad_checkpointing", None)):
            raise TrainingError(f"--grad-checkpointing: {cfg.model} ({type(model).__name__}) has no "
                                f"set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    if cfg.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("--sync-bn needs CUDA (nccl); using plain BatchNorm on CPU", stacklevel=2)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def resolved_config(cfg: TrainConfig, pre: Preprocess, num_classes: int, model: nn.Module, out_dir: Path) -> TrainConfig:
    return replace(cfg, num_classes=num_classes, img_size=pre.img_size, crop_pct=pre.crop_pct,
                   interpolation=pre.interpolation, mean=pre.mean, std=pre.std,
                   drop_rate=float(getattr(model, "drop_rate", 0.0)), output=str(out_dir))


def default_output(cfg: TrainConfig, info: DistInfo) -> Path:
    """``--output``, else ``runs/<model>-<data>`` (``runs/mixnet_s-digits`` for the quick start), or the first of
    ``runs/<model>-<data>-2``, ``-3``, ... that does not exist yet: a new run never writes into an old one."""
    if cfg.output:
        return Path(cfg.output)
    base = f"{Path(cfg.model).stem}-{Path(cfg.data.rstrip('/')).name or 'data'}"
    name, n = base, 1
    while (Path("runs") / name).exists():
        n += 1
        name = f"{base}-{n}"
    if info.distributed:  # every rank must use rank 0's choice (a rank may look after rank 0 created it)
        obj = [name]
        torch.distributed.broadcast_object_list(obj, src=0)
        name = obj[0]
    return Path("runs") / name


def write_metrics(out_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRIC_FIELDS})
    write_text(out_dir / "metrics.csv", buf.getvalue())


def write_text(path: Path, text: str) -> None:
    """Write a text file of the run directory atomically; a failed write raises :class:`WriteError`."""
    with writing(path):
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_curves(out_dir: Path, history: list[dict]) -> None:
    """``curves.png`` (loss and top-1 per epoch) when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [r["train_loss"] for r in history], label="train")
    a.plot(epochs, [r["val_loss"] for r in history], label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(epochs, [r["val_top1"] for r in history], label="top-1")
    b.plot(epochs, [r["val_top5"] for r in history], label="top-5")
    b.set_xlabel("epoch"), b.set_ylabel("val accuracy (%)"), b.legend()
    fig.tight_layout()
    try:
        with writing(out_dir / "curves.png"):
            atomic_write(out_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


class _TensorBoard:
    """Scalars to TensorBoard event files when tensorboard is installed; otherwise nothing."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def add(self, row: dict) -> None:
        if self.writer is not None:
            for k in METRIC_FIELDS[1:]:
                self.writer.add_scalar(k, row[k], row["epoch"])
            self.writer.flush()

    def add_examples(self, dataset: Any, pre: Preprocess, n: int = 8) -> None:
        """A few training images, as augmented and (with the normalisation undone) as the model sees them."""
        if self.writer is not None and len(dataset):
            from mixconv.data.datasets import denormalizer

            image_of = denormalizer(dataset, pre.mean, pre.std)
            imgs = [im for im in map(image_of, range(min(n, len(dataset)))) if im is not None]
            if not imgs:
                return
            batch = np.stack([im[..., None] if im.ndim == 2 else im for im in imgs])
            self.writer.add_images("train/examples", batch, 0, dataformats="NHWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _batch_mix(cfg: TrainConfig, num_classes: int) -> Optional[Callable]:
    from torchvision.transforms import v2

    ops = []
    if cfg.mixup > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def prepare_resume(target: str, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any], Path]:
    """The saved settings of the run being resumed (only ``RESUME_CHANGEABLE`` may differ) and its state."""
    state_path = ckpt.find_resume_state(target)
    out_dir = state_path.parent
    cfg = resumed_config(out_dir, overrides, f"--resume {target}")
    return cfg, ckpt.load_state(state_path), out_dir


def resumed_config(out_dir: Path, overrides: dict[str, Any], label: str) -> TrainConfig:
    """``out_dir/config.yaml`` with ``overrides`` on top; only ``RESUME_CHANGEABLE`` settings may differ."""
    config_path = out_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{label}: {config_path} is missing; a run directory written by "
                              "`mixconv train` holds it")
    doc = read_yaml(config_path, "the run's settings (config.yaml)", ConfigError)
    saved = make_config(None, {} if doc is None else doc, source=str(config_path))
    changes = check_overrides(overrides, "command line")
    conflicts = [k for k, v in changes.items() if k not in RESUME_CHANGEABLE and getattr(saved, k) != v]
    if conflicts:
        raise TrainingError(f"{label}: cannot change {', '.join(conflicts)} when resuming (the run was "
                            f"started with {', '.join(f'{k}={getattr(saved, k)!r}' for k in conflicts)}); only "
                            f"{', '.join(RESUME_CHANGEABLE[:-1])} may change")
    return replace(saved, output=str(out_dir), **{k: v for k, v in changes.items() if k in RESUME_CHANGEABLE[:-1]})


def open_run_dir(cfg: TrainConfig, info: DistInfo) -> tuple[TrainConfig, Optional[dict[str, Any]], Path, str]:
    """The run directory of a run started without ``--resume``: ``(cfg, saved state or None, dir, how)``.

    A directory that already holds a checkpoint is refused, except after a torchrun elastic restart with an
    explicit ``--output``: then the run continues from that checkpoint as ``--resume`` would (see
    :mod:`mixconv.training.elastic`). ``how`` says which, for the log.
    """
    out_dir = default_output(cfg, info)
    state_path = ckpt.checkpoint_paths(out_dir, "last")[1]
    restarts = elastic.restart_count(info)
    if restarts and not cfg.output:
        log(info, f"elastic restart {restarts}: no --output was given, so a new run directory is started; pass "
                  "--output to continue the interrupted run instead")
    if not state_path.exists():
        return cfg, None, out_dir, ""
    if not (restarts and cfg.output):
        raise TrainingError(f"{out_dir} already holds a training run; continue it with --resume {out_dir} or "
                            "choose another --output")
    label = f"elastic restart {restarts}: {out_dir}"
    saved = ckpt.load_state(state_path)
    why = elastic.foreign_run(saved)
    if why:
        raise TrainingError(f"{label} holds a training run this job did not start ({why}); continue it with "
                            "--resume or choose another --output")
    command_line = {k: v for k, v in cfg.to_dict().items() if v is not None and k != "output"}
    return resumed_config(out_dir, command_line, label), saved, out_dir, f"elastic restart {restarts}: "


def run(cfg: TrainConfig, *, resume: Optional[str] = None, resume_overrides: Optional[dict[str, Any]] = None,
        on_epoch_end: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Train (or resume) a run; returns the summary (also written to ``summary.json``).

    Under torchrun the run joins the process group, or uses the caller's where one exists (a study trains its
    arms one after another in one group: a group torn down and set up again would find stale addresses)."""
    owned = not group_exists()
    info = init_distributed()
    try:
        with preempt.watching():
            return _run(cfg, info, resume, resume_overrides or {}, on_epoch_end)
    finally:
        if owned:
            cleanup(info)


@dataclass
class Trainer:
    """Everything a run holds while it trains (built by :func:`_setup`)."""

    cfg: TrainConfig
    info: DistInfo
    out_dir: Path
    pre: Preprocess
    classes: list
    model: nn.Module
    train_model: nn.Module
    ema: Optional[ModelEma]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    data: TrainData
    peak_lr: float
    rs: RunState
    saved_epoch: int = 0  # the epoch of the checkpoint on disk
    qat: Optional[QatCalibration] = None  # --qat: keeps the model's int8 ranges those ORT will calibrate
    totals: EpochTotals = field(default_factory=EpochTotals)  # the epoch in progress: steps done, sums
    resumed_from: Optional[dict[str, int]] = None  # {"epoch": E, "step": S} of a resumed run

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def path(self, name: str, kind: int = 0) -> Path:
        return ckpt.checkpoint_paths(self.out_dir, name)[kind]


def _setup(cfg: TrainConfig, info: DistInfo, out_dir: Path) -> Trainer:
    if cfg.workers is None:  # the recipe leaves it to the machine; config.yaml records the number used
        cfg = replace(cfg, workers=auto_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == "cuda":  # fixed input sizes: let cuDNN time its algorithms once per shape
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)  # the same initial weights on every rank (EMA copies them before DDP would)
    pre = resolve_preprocess(cfg)
    data = build_data(cfg, pre, info)
    num_classes = cfg.num_classes or len(data.classes)
    if num_classes != len(data.classes):
        raise TrainingError(f"--num-classes {num_classes} but the data has {len(data.classes)} classes")
    model = build_model(cfg, num_classes, info)
    cfg = resolved_config(cfg, pre, num_classes, model, out_dir)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    peak_lr = scaled_lr(cfg, info.world_size)
    optimizer = create_optimizer(model, cfg, peak_lr)
    scheduler = create_scheduler(optimizer, cfg, peak_lr, math.ceil(data.steps_per_epoch / cfg.accum_steps))
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    t = Trainer(cfg, info, out_dir, pre, data.classes, model, model, ema, optimizer, scheduler, scaler, data,
                peak_lr, RunState())
    if cfg.qat:
        from mixconv.training.qat import qat_calibration

        t.qat = qat_calibration(model, cfg, pre, info.device)
    return t


def _restore(t: Trainer, saved: dict[str, Any]) -> None:
    t.model.load_state_dict(saved["model"])
    if t.ema is not None:
        t.ema.load_state_dict(saved["ema"])
    t.optimizer.load_state_dict(saved["optimizer"])
    t.scheduler.load_state_dict(saved["scheduler"])
    if t.scaler is not None and saved.get("scaler"):
        t.scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    t.rs = RunState(int(saved["epoch"]), float(saved["best_top1"]), int(saved["best_epoch"]), list(saved["history"]))
    t.saved_epoch = t.rs.epoch
    _restore_position(t, saved)


def _restore_position(t: Trainer, saved: dict[str, Any]) -> None:
    """A step checkpoint's position in its epoch: steps done, the epoch's sums so far (on rank 0: they were
    summed over ranks when saved), every rank's random state and QAT's ranges."""
    pos = saved.get("position") or {}
    step = int(pos.get("step", 0))
    t.resumed_from = {"epoch": t.rs.epoch, "step": step}
    if not step:
        return
    if step > t.data.steps_per_epoch:
        raise TrainingError(f"{t.path('last', 1)} was written at step {step} of an epoch of {pos.get('steps')} "
                            f"steps; this run's epochs have {t.data.steps_per_epoch} (the data or batch size "
                            "changed)")
    sums = pos["sums"] if t.info.is_main else [0.0, 0.0, 0.0, 0.0]
    t.totals = EpochTotals(step, float(sums[0]), int(sums[1]), int(sums[2]), float(sums[3]))
    rngs = pos.get("rng_by_rank") or []
    same = len(rngs) == t.info.world_size and (pos.get("workers") == t.cfg.workers or t.data.source != "shards")
    if len(rngs) == t.info.world_size:
        ckpt.set_rng_state(rngs[t.info.rank])
    if not same:
        log(t.info, f"warning: the step checkpoint was written by {len(rngs)} process(es) with {pos.get('workers')} "
                    f"data workers, this run has {t.info.world_size} with {t.cfg.workers}: the rest of epoch "
                    f"{t.rs.epoch + 1} continues from step {step}, but not as the interrupted run would have")
    if t.qat is not None and pos.get("qat_ranges"):
        t.qat.load_state_dict(pos["qat_ranges"])


def _start(t: Trainer) -> None:
    """Wrap the model for training (compile, DDP) and write the run directory's starting files."""
    cfg, info = t.cfg, t.info
    if cfg.compile:
        quiet_cpu_compile(info.device)
        t.train_model = torch.compile(t.train_model)
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # A supernet's step uses one sampled path: the other choices' parameters get no gradient that step.
        unused = bool(getattr(t.model, "samples_paths", False))
        match_grad_strides(t.model)  # else DDP warns on every rank that oneDNN's weight grads have other strides
        t.train_model = nn.parallel.DistributedDataParallel(t.train_model, device_ids=device_ids,
                                                            find_unused_parameters=unused)

    def write() -> None:
        with writing(t.out_dir):
            t.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(t.out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_metrics(t.out_dir, t.rs.history)  # a resumed run keeps exactly the rows of its checkpoint

    _main_writes(t, write)  # also the barrier: no rank starts before the directory is ready
    log(info, f"training {cfg.model} on {cfg.data} ({len(t.classes)} classes, {t.pre.img_size} px) for "
              f"{cfg.epochs} epochs on {info.world_size} process(es), {info.device.type}; "
              f"global batch {cfg.batch_size * info.world_size}, lr {t.peak_lr:.4g}; output {t.out_dir}")


def _main_writes(t: Trainer, write: Callable[[], None]) -> None:
    """Rank 0 runs ``write``; when it fails (disk full, I/O error) every rank stops, with the reason on rank 0.

    A collective: every rank calls it.
    """
    error: Optional[WriteError] = None
    if t.info.is_main:
        try:
            write()
        except WriteError as e:
            error = e
    if not broadcast_flag(error is not None, t.info):
        return
    if error is None:
        raise TrainingError("rank 0 could not write to the run directory; stopping (rank 0 says why)")
    if t.saved_epoch:
        kept = (f"the checkpoint of epoch {t.saved_epoch} ({t.path('last', 1)}) and the files written before "
                f"are intact; free space, then continue with --resume {t.out_dir}")
    else:
        kept = "no checkpoint was written yet"
    raise TrainingError(f"{error}; stopping: {kept}") from None


def _warn_amp(amp: str, info: DistInfo) -> None:
    """A LowPrecisionWarning and a log line where ``--amp`` runs emulated on this CPU (a capability check)."""
    msg = warn_amp(info.device, amp, stacklevel=3)
    if msg is not None:
        log(info, f"warning: {msg}")


def _run(cfg: TrainConfig, info: DistInfo, resume: Optional[str], resume_overrides: dict[str, Any],
         on_epoch_end: Optional[Callable[[dict], None]]) -> dict[str, Any]:
    how = ""
    if resume:
        cfg, saved, out_dir = prepare_resume(resume, resume_overrides)
    else:
        cfg, saved, out_dir, how = open_run_dir(cfg, info)
    _warn_amp(cfg.amp, info)
    t = _setup(cfg, info, out_dir)
    if saved is not None:
        _restore(t, saved)
        if t.rs.epoch >= t.cfg.epochs:
            log(info, f"{how}the run in {out_dir} is finished ({t.rs.epoch} of {t.cfg.epochs} epochs); nothing "
                      "to do")
            # metrics.csv may have missed the last rows (a write that failed after the checkpoint's)
            _main_writes(t, lambda: _write_history(t))
            return _finish(t)
        log(info, f"{how}resumed at epoch {t.rs.epoch}, step {t.totals.step} from {t.path('last', 1)}: "
                  f"continuing with epoch {t.rs.epoch + 1} of {t.cfg.epochs}"
                  + (f" at step {t.totals.step + 1} of {t.data.steps_per_epoch}" if t.totals.step else ""))
    _start(t)
    tb = _TensorBoard(out_dir, info.is_main)
    if info.is_main and t.rs.epoch == 0:
        tb.add_examples(t.data.examples, t.pre)
    try:
        for epoch in range(t.rs.epoch, t.cfg.epochs):
            row = _one_epoch(t, epoch)
            if info.is_main:
                tb.add(row)
            barrier(info)
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
            if epoch + 1 < t.cfg.epochs and broadcast_flag(preempt.requested() is not None, info):
                raise _preempted(t, f"after epoch {epoch + 1}", 0)
    finally:
        tb.close()
    summary = _finish(t)
    log(info, f"done: best top-1 {summary['best_top1']:.2f} (epoch {t.rs.best_epoch}), final top-1 "
              f"{summary['final_top1']:.2f}; checkpoints in {out_dir}")
    return summary


def _finish(t: Trainer) -> dict[str, Any]:
    """The final summary, with every rank's sha256 of its final weights (equal on all ranks; DDP keeps them so)."""
    hashes = gather_objects(tensors_sha256(t.eval_model.state_dict()), t.info)
    if len(set(hashes)) > 1:
        log(t.info, f"warning: the final weights differ between ranks (sha256 by rank: {', '.join(hashes)})")
    summary = _summary(t, finished=True, write=False)
    summary["final_weights_sha256"] = hashes
    _main_writes(t, lambda: write_json(t.out_dir / "summary.json", summary))
    return summary


def _one_epoch(t: Trainer, epoch: int) -> dict[str, Any]:
    """Train, evaluate (no autocast; under --qat, as simulated int8) and checkpoint epoch ``epoch`` (0-based)."""
    cfg, info = t.cfg, t.info
    if not t.totals.step:  # (a resumed epoch goes on with the random state of its step checkpoint)
        # Every epoch's randomness derives from (seed, epoch, rank): a resumed run replays it exactly.
        seed_everything(cfg.seed + 1000 * (epoch + 1) + info.rank)
    t.data.set_position(epoch, t.totals.step)
    desc = f"epoch {epoch + 1}/{cfg.epochs}"
    # --qat freezes BatchNorm: training then computes what the int8 file will (BatchNorm folded with its
    # running statistics); with batch statistics the fine-tune did not improve the int8 model at all.
    settings = StepSettings(cfg.amp, cfg.accum_steps, cfg.clip_grad, cfg.channels_last, cfg.log_interval,
                            cfg.freeze_bn or cfg.qat)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    try:
        ts = train_one_epoch(t.train_model, criterion, t.optimizer, t.scheduler, t.data.train_loader, epoch + 1,
                             info, settings, t.scaler, t.ema, _batch_mix(cfg, len(t.classes)), desc=desc,
                             before_step=t.qat.before_step if t.qat is not None else None, totals=t.totals,
                             n_batches=t.data.steps_per_epoch, after_step=lambda tot: _after_step(t, tot))
    except NonFiniteLossError as e:
        kept = f"the last good checkpoint is intact: {t.path('last')}" if t.rs.epoch else "no checkpoint was written yet"
        raise TrainingError(f"{e}: stopping ({kept}); lower --lr or enable --clip-grad") from None
    sync_buffers(t.eval_model, info)
    if t.qat is not None:  # evaluated as int8 (simulated) with the ranges ORT will calibrate from these weights
        t.qat.calibrate()
    t.totals = EpochTotals()
    vs = evaluate(t.eval_model, t.data.val_loader, info, "none", cfg.channels_last, desc=f"{desc} val",
                  log_interval=cfg.log_interval)
    row = {"epoch": epoch + 1, "train_loss": round(ts.loss, 6), "val_loss": round(vs.loss, 6),
           "val_top1": round(vs.top1, 4), "val_top5": round(vs.top5, 4), "lr": ts.lr,
           "images_per_s": round(ts.images_per_s, 2), "seconds": round(ts.seconds + vs.seconds, 2),
           "skipped_images": ts.skipped + vs.skipped}
    t.rs.epoch = epoch + 1
    t.rs.history.append(row)
    is_best = vs.top1 > t.rs.best_top1
    if is_best:
        t.rs.best_top1, t.rs.best_epoch = vs.top1, epoch + 1
    _main_writes(t, lambda: _save(t, {"epoch": epoch + 1, "val_top1": vs.top1, "val_top5": vs.top5,
                                      "val_loss": vs.loss}, is_best))
    if info.is_main:
        log(info, f"{desc}: train_loss {ts.loss:.4f} val_loss {vs.loss:.4f} top1 {vs.top1:.2f} top5 {vs.top5:.2f} "
                  f"({ts.images_per_s:.1f} img/s, {row['seconds']:.1f} s, {row['skipped_images']} skipped)")
    return row


def _state(t: Trainer, position: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The resume state: module, optimizer and run states; ``position`` within the epoch for a step checkpoint."""
    rs = t.rs
    return {
        "epoch": rs.epoch, "best_top1": rs.best_top1, "best_epoch": rs.best_epoch, "history": rs.history,
        "model": t.model.state_dict(), "ema": t.ema.state_dict() if t.ema is not None else None,
        "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None, "rng": ckpt.rng_state(),
        "position": position or {"step": 0}, elastic.RUN_ID_KEY: elastic.run_id(),
    }


def _save(t: Trainer, results: dict[str, Any], is_best: bool) -> None:
    """The checkpoint first (weights and resume state, as one unit), then the files derived from the history."""
    extra = {"classes": t.classes, "preprocess": t.pre.to_dict(), "data": t.cfg.data, "ema": t.ema is not None,
             "train_config": t.cfg.to_dict(), **results}
    if t.qat is not None:  # the number above was measured as simulated int8 with these ranges: validate uses them
        extra["qat"] = {"activation_type": t.cfg.qat_activation, "reduce_range": t.cfg.qat_reduce_range,
                        "ranges": t.qat.state_dict()}
    ckpt.commit_checkpoint(t.out_dir, t.eval_model, extra, ("last", "best") if is_best else ("last",), _state(t))
    t.saved_epoch = t.rs.epoch
    _write_history(t)


def _after_step(t: Trainer, tot: EpochTotals) -> None:
    """After every optimizer step: a step checkpoint every ``--checkpoint-every`` steps, and on a stop signal
    (any rank's) a step checkpoint and :class:`Preempted`. Every rank calls it at the same step."""
    stop = broadcast_flag(preempt.requested() is not None, t.info)
    every = t.cfg.checkpoint_every
    if stop or (every and tot.step % every == 0 and tot.step < t.data.steps_per_epoch):
        _step_checkpoint(t, tot)
    if stop:
        raise _preempted(t, f"at epoch {t.rs.epoch}, step {tot.step}", tot.step)


def _preempted(t: Trainer, where: str, step: int) -> Preempted:
    """The stop after a signal (on this rank or another), once the checkpoint that holds it is written."""
    return Preempted(f"stopped by {preempt.requested() or 'a signal on another rank'} {where}: the checkpoint "
                     f"{t.path('last', 1)} holds it; continue with --resume {t.out_dir}", t.rs.epoch, step)


def _step_checkpoint(t: Trainer, tot: EpochTotals) -> None:
    """``last.state.pt`` at step ``tot.step`` of the epoch in progress (a collective: every rank calls it)."""
    sums = all_reduce_sum([tot.loss_sum, float(tot.images), float(tot.skipped)], t.info) + [tot.seconds]
    position = {"step": tot.step, "steps": t.data.steps_per_epoch, "sums": sums, "workers": t.cfg.workers,
                "rng_by_rank": gather_objects(ckpt.rng_state(), t.info),
                "qat_ranges": t.qat.state_dict() if t.qat is not None else None}
    _main_writes(t, lambda: ckpt.commit_checkpoint(t.out_dir, t.eval_model, {}, (), _state(t, position)))


def _write_history(t: Trainer) -> None:
    """The files derived from the checkpoint's history: metrics.csv, curves.png and summary.json."""
    write_metrics(t.out_dir, t.rs.history)
    write_curves(t.out_dir, t.rs.history)
    _summary(t, finished=t.rs.epoch >= t.cfg.epochs)


def _summary(t: Trainer, finished: bool, write: bool = True) -> dict[str, Any]:
    rs = t.rs
    summary = {
        "model": t.cfg.model, "data": t.cfg.data, "epochs": rs.epoch, "planned_epochs": t.cfg.epochs,
        "finished": finished, "world_size": t.info.world_size,
        "best_top1": round(rs.best_top1, 4) if rs.history else None, "best_epoch": rs.best_epoch,
        "final_top1": rs.history[-1]["val_top1"] if rs.history else None,
        "best_checkpoint": str(t.path("best").resolve()), "last_checkpoint": str(t.path("last").resolve()),
        "output": str(t.out_dir.resolve()),
    }
    if t.resumed_from is not None:
        summary["resumed_from"] = dict(t.resumed_from)
    if write and t.info.is_main:
        write_json(t.out_dir / "summary.json", summary)
    return summary


def train(recipe: Optional[str] = "digits", *, resume: Optional[str] = None,
          on_epoch_end: Optional[Callable[[dict], None]] = None, **settings: Any) -> dict[str, Any]:
    """Train from Python (a notebook): ``mixconv.train(epochs=3, output="runs/x")``.

    ``recipe`` is a shipped recipe name or YAML path; ``settings`` are :class:`TrainConfig` fields on top.
    ``resume`` continues a run directory (only ``epochs``, ``workers`` and ``log_interval`` may change).
    Returns the summary dict (``best_top1``, ``final_top1``, checkpoints, ...).
    """
    if resume:
        return run(TrainConfig(), resume=resume, resume_overrides=settings, on_epoch_end=on_epoch_end)
    return run(make_config(recipe, settings), on_epoch_end=on_epoch_end)
