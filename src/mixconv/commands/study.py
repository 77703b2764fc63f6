"""``mixconv study``: rerun one of the MixConv paper's studies on your data."""
from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mixconv.studies.arms import FAMILIES, STUDIES
    from mixconv.studies.presets import PRESETS

    p = subparsers.add_parser(
        "study", help="rerun a MixConv paper study (kernel sizes, single layers, partition, dilation)",
        description="Train every arm of one of the paper's studies on MixConv-MobileNets with `mixconv train`'s "
                    "loop, then write STUDY.csv, STUDY.png (the paper's plot) and STUDY.md (the paper's claims "
                    "against the measurements) to --output. A stopped study resumes from there; studies sharing "
                    "--output share identical arms' runs.")
    p.add_argument("study", choices=STUDIES, help="kernels: kxk vs MixConv {3..k} (Figure 4); layers: one layer "
                   "at a time 9x9 or MixConv3579; partition: equal vs exponential; dilation: kxk vs dilated 3x3")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="tiny (tests), cpu (minutes on 2 cores; default), paper (ImageNet, GPU cluster)")
    p.add_argument("--output", default="runs/studies", help="study folder (resumed when it holds runs)")
    p.add_argument("--data", help="digit-pairs, digits or an ImageFolder root (default: the preset's)")
    p.add_argument("--config", dest="recipe", help="training recipe of every arm (default: the preset's)")
    p.add_argument("--family", dest="families", type=lambda t: tuple(v for v in t.split(",") if v),
                   help=f"comma-separated model families ({', '.join(FAMILIES)}; default: the preset's)")
    p.add_argument("--width-mult", type=float, help="width multiplier of every family (default: the preset's)")
    p.add_argument("--kernels", type=_ints, help="largest kernel sizes, e.g. 3,5,7,9,11,13")
    p.add_argument("--layers", type=_ints, help="layers study: the 1-based depthwise layers to change (default all)")
    p.add_argument("--seeds", type=_ints, help="training seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, help="epochs of every arm")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.files.config import ConfigError
    from mixconv.studies import StudyError, StudySettings, run_study
    from mixconv.training import TrainingError

    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers)) if v is not None}
    settings = StudySettings(study=args.study, output=args.output, preset=args.preset, data=args.data,
                             recipe=args.recipe, families=args.families, width_mult=args.width_mult,
                             kernels=args.kernels, layers=args.layers, seeds=args.seeds, epochs=args.epochs,
                             img_size=args.img_size, train_overrides=overrides)
    try:
        run_study(settings)
    except (StudyError, TrainingError, ConfigError) as e:
        print(f"mixconv study: error: {e}", file=sys.stderr)
        return 1
    return 0
