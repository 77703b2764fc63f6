"""``mixconv search``: find the MixNet for this machine's runtime, a latency (or MACs) budget and the data."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mixconv.search.latency import TARGETS
    from mixconv.search.study import STRATEGIES

    p = subparsers.add_parser(
        "search", help="hardware-aware architecture search over MixConv choices (the paper's method)",
        description="Train a weight-sharing supernet over the search space, measure a per-block latency table "
                    "for --target on this machine (cached), then search under the budget (regularized "
                    "evolution, or random) scoring candidates on held-out training images. Writes best.yaml, "
                    "top/, pareto.png and summary.json to --output; a killed search resumes from there.")
    p.add_argument("--data", default="digit-pairs", help="digit-pairs (default), digits or an ImageFolder root")
    p.add_argument("--space", default="small", help="preset (mixnet-s, small, tiny) or a search-space YAML")
    p.add_argument("--target", default="onnxruntime", choices=TARGETS, help="what the latency is measured on")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", type=float, help="latency budget in milliseconds (timed targets)")
    budget.add_argument("--macs", type=float, help="budget in millions of multiply-accumulates (--target macs)")
    p.add_argument("--output", default="runs/search", help="output directory (resumed when it holds a search)")
    p.add_argument("--strategy", default="evolution", choices=STRATEGIES)
    p.add_argument("--evaluations", type=int, default=64, help="candidates scored by each strategy")
    p.add_argument("--population", type=int, default=16, help="regularized evolution's population")
    p.add_argument("--seed", type=int, default=0, help="the search's seed (training seeds are the recipe's)")
    p.add_argument("--no-compare-random", dest="compare_random", action="store_false",
                   help="skip the random-search baseline with the same number of evaluations")
    p.add_argument("--recipe", default="digit-pairs", help="training recipe of the supernet")
    p.add_argument("--supernet", metavar="RUN_DIR", help="reuse a supernet trained by `mixconv train --model "
                                                         "SPACE.yaml --holdout-fraction F` (e.g. under torchrun)")
    p.add_argument("--supernet-epochs", type=int, default=10)
    p.add_argument("--holdout-fraction", type=float, default=0.1,
                   help="training images held out for scoring candidates (the validation set stays untouched)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the latency measurements")
    p.add_argument("--threads", type=int, default=0, help="threads of the latency measurements (0: all)")
    p.add_argument("--latency-cache", metavar="DIR", help="latency tables (default ~/.cache/mixconv/latency)")
    p.add_argument("--predictor-archs", type=int, default=30, help="random architectures the predictor is "
                                                                   "checked on, end to end")
    p.add_argument("--finalists", type=int, default=5, help="top candidates measured end to end and written")
    p.add_argument("--train-batch-size", type=int, help="supernet training batch (default: the recipe's)")
    p.add_argument("--workers", type=int, help="supernet training data workers (default: the recipe's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixconv.search.pipeline import SearchSettings, run_search
    from mixconv.training import TrainingError

    overrides = {k: v for k, v in (("batch_size", args.train_batch_size), ("workers", args.workers)) if v is not None}
    settings = SearchSettings(
        output=args.output, space=args.space, data=args.data, recipe=args.recipe, target=args.target,
        latency_ms=args.latency_ms, macs=args.macs, strategy=args.strategy, evaluations=args.evaluations,
        population=args.population, seed=args.seed, compare_random=args.compare_random, supernet=args.supernet,
        supernet_epochs=args.supernet_epochs, holdout_fraction=args.holdout_fraction, train_overrides=overrides,
        batch_size=args.batch_size, threads=args.threads, latency_cache=args.latency_cache,
        predictor_archs=args.predictor_archs, finalists=args.finalists)
    try:
        run_search(settings)
    except TrainingError as e:
        print(f"mixconv search: error: {e}", file=sys.stderr)
        return 1
    return 0
