"""``mixconv train``: train a MixNet (defaults from a recipe YAML; every flag overrides it)."""
from __future__ import annotations

import argparse
import sys

# (flag, type, help); the TrainConfig field is the flag's name with dashes as underscores.
_MODEL = (
    ("--model", str, "registered name or YAML config (recipe: mixnet_s)"),
    ("--pretrained", str, "fine-tune from a local timm or mixconv checkpoint"),
    ("--num-classes", int, "classifier outputs (default: the data's classes; a new head when it differs)"),
    ("--drop-rate", float, "dropout before the classifier"),
    ("--drop-path-rate", float, "stochastic depth"),
    ("--bn-momentum", float, "BatchNorm momentum, PyTorch convention (TF's 0.99 is 0.01)"),
    ("--qat-activation", str, "with --qat: uint8 (default) or int8 activations, as `mixconv quantize "
                              "--activation-type` will quantize them"),
    ("--qat-calib-images", int, "with --qat: training images the activation ranges are calibrated on, as "
                                "`mixconv quantize --calib-images` (default 256)"),
)
_DATA = (
    ("--data", str, "built in: 'digits' (10 classes) or 'digit-pairs' (100 classes, harder; its own recipe "
                    "unless --config is given); an ImageFolder root with train/ and val/; or WebDataset shards "
                    "(a folder written by `mixconv shards`, or 'DIR/train-{000000..000099}.tar')"),
    ("--shuffle-buffer", int, "shards: samples each data stream shuffles through (default 1000)"),
    ("--holdout-fraction", float, "hold out this share of the training images and evaluate on it each epoch "
                                  "(the validation set stays untouched)"),
    ("--img-size", int, "input size (digits recipe: 64, digit-pairs: 32)"),
    ("--crop-pct", float, "eval resize is img_size / crop_pct, then a center crop"),
    ("--interpolation", str, "nearest, bilinear or bicubic"),
    ("--workers", int, "data loader worker processes per rank (default: min(8, CPUs per process - 1))"),
    ("--hflip", float, "horizontal flip probability"),
    ("--auto-augment", str, "none, randaugment, autoaugment or trivialaugment"),
    ("--randaugment-magnitude", int, "RandAugment magnitude"),
    ("--re-prob", float, "random erasing probability"),
    ("--mixup", float, "MixUp alpha (0: off)"),
    ("--cutmix", float, "CutMix alpha (0: off)"),
    ("--label-smoothing", float, "label smoothing"),
)
_OPTIM = (
    ("--epochs", int, "epochs"),
    ("--batch-size", int, "batch size per process"),
    ("--lr", float, "learning rate for --lr-base-size images (scaled linearly with the global batch)"),
    ("--lr-base-size", int, "the batch size --lr is given for"),
    ("--opt", str, "sgd, rmsproptf or adamw"),
    ("--momentum", float, "SGD/RMSprop momentum"),
    ("--opt-eps", float, "optimizer epsilon"),
    ("--weight-decay", float, "weight decay (never on norms and biases)"),
    ("--layer-decay", float, "layer-wise lr decay in (0, 1]: the classifier trains at --lr, each earlier group "
                             "of the model's group_matcher (blocks, stem) at this factor more"),
    ("--sched", str, "cosine or step (x decay_rate every decay_epochs)"),
    ("--warmup-epochs", float, "linear warmup epochs"),
    ("--min-lr", float, "cosine floor"),
    ("--clip-grad", float, "clip the gradient norm to this"),
    ("--accum-steps", int, "gradient accumulation steps"),
    ("--ema-decay", float, "EMA of the weights (0: off)"),
)
_RUNTIME = (
    ("--amp", str, "none, bf16 or fp16 autocast (warns on a CPU without native support: emulated, slow)"),
    ("--seed", int, "random seed"),
    ("--output", str, "run directory (default runs/<model>-<time>)"),
    ("--log-interval", int, "steps between progress lines when not on a terminal"),
    ("--checkpoint-every", int, "also write last.state.pt every N steps within an epoch (0: at epoch ends only); "
                                "SIGTERM/SIGUSR1 always write one and exit with 75"),
)
_BOOLS = (
    ("--deterministic", "deterministic algorithms (for exact resume/replay)"),
    ("--freeze-backbone", "train the classifier only"),
    ("--freeze-bn", "BatchNorm normalizes with its running statistics and does not update them (always on with "
                    "--qat)"),
    ("--qat", "quantization-aware fine-tuning (int8 fake quantization as onnxruntime's; start from --pretrained, "
              "then `mixconv quantize --checkpoint`)"),
    ("--qat-reduce-range", "with --qat: 7-bit weights, as `mixconv quantize --reduce-range`"),
    ("--nesterov", "Nesterov momentum (SGD)"),
    ("--channels-last", "channels-last memory format"),
    ("--grad-checkpointing", "recompute each block's activations in the backward: less activation memory, "
                             "about one more forward per step"),
    ("--compile", "torch.compile the model"),
    ("--sync-bn", "SyncBatchNorm across processes (CUDA only)"),
    ("--gpu-decode", "decode ImageFolder JPEGs and run the transforms on the GPU (CUDA only)"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a MixNet (default: mixnet_s on the built-in digits data)",
        description="Train a MixNet. With no arguments: MixNet-S on scikit-learn's digits (the 'digits' recipe). "
                    "Settings come from --config (a recipe), then from the flags given. Runs under torchrun "
                    "for multi-process training.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--config", default=None, metavar="RECIPE",
                   help="recipe: digits, tf-mixnet, mindcv-mixnet or a YAML path (default: digits)")
    p.add_argument("--resume", default=None, metavar="DIR|CHECKPOINT",
                   help="continue a run directory from its last checkpoint")
    for title, table in (("model", _MODEL), ("data and augmentation", _DATA), ("optimization", _OPTIM),
                         ("runtime", _RUNTIME)):
        group = p.add_argument_group(title)
        for flag, typ, help_ in table:
            group.add_argument(flag, type=typ, help=help_)
    group = p.add_argument_group("switches")
    for flag, help_ in _BOOLS:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    skip = {"command", "func", "config", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def run(args: argparse.Namespace) -> int:
    from mixconv.training import TrainingError
    from mixconv.training.config import default_recipe, make_config
    from mixconv.training.main import run as run_training
    from mixconv.training.preempt import EXIT_PREEMPTED, Preempted

    overrides = overrides_from_args(args)
    try:
        if args.resume:
            if args.config:
                print("mixconv train: error: --config cannot be combined with --resume (the run's config.yaml is "
                      "used)", file=sys.stderr)
                return 2
            run_training(make_config(None), resume=args.resume, resume_overrides=overrides)
        else:
            run_training(make_config(args.config or default_recipe(getattr(args, "data", None)), overrides))
    except Preempted as e:
        print(f"mixconv train: {e} (exit code {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingError as e:
        print(f"mixconv train: error: {e}", file=sys.stderr)
        return 1
    return 0
