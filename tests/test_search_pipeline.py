"""mixconv search: latency tables and their cache, the outer loop (evolution finds a known optimum, random is
reproducible, a killed study resumes identically), bad input, and the CLI end to end on a tiny space."""
from __future__ import annotations

import json

import pytest
import torch

from mixconv.files.config import ConfigError, load_config
from mixconv.files.space import load_space, save_space, space_from_dict
from mixconv.models.space import PRESETS, Arch
from mixconv.search.latency import LatencyError, LatencyModel, TableKey, check_target
from mixconv.search.pipeline import SearchSettings, run_search
from mixconv.search.study import SearchError, run_study
from tests.training_fixtures import make_image_folder, run_cli

TINY = PRESETS["tiny"]


def _target_score(space):
    """A synthetic scorer whose unique optimum is known: the most kernel groups, ReLU, SE where offered, kept."""
    def score(arch: Arch) -> float:
        return float(sum((c.kernel_groups == max(s.kernel_groups)) + (c.act == "relu") + (c.se == max(s.se))
                         + c.keep for s, c in zip(space.layers, arch)))

    best = 4.0 * len(space.layers)
    return score, best


def _cost(arch: Arch) -> float:
    return float(sum(c.kernel_groups * c.expansion * c.keep for c in arch))


def test_latency_table_is_cached_by_key(tmp_path):
    key = TableKey("macs", 32, 1, 1)
    model = LatencyModel(TINY, key, tmp_path)
    n = model.measure()
    assert n == len(model.wanted()) and model.table.path.is_file()
    again = LatencyModel(TINY, key, tmp_path)
    assert again.table.loaded and again.measure() == 0  # reused, nothing measured
    assert again.predict(TINY.largest()) == model.predict(TINY.largest())
    # the prediction is the sum of the blocks plus stem and head: exact for MACs
    from mixconv.models.mixnet import MixNet
    from mixconv.models.profile import count_macs

    arch = TINY.largest()
    net = MixNet(TINY.to_spec(arch), num_classes=100)
    assert model.predict(arch) == pytest.approx(count_macs(net, (3, 32, 32)) / 1e6, rel=1e-3)
    # another key (batch, threads, size, target, runtime or CPU) is another file
    names = {TableKey("macs", 32, 1, 1).file_name(), TableKey("macs", 32, 2, 1).file_name(),
             TableKey("macs", 64, 1, 1).file_name(), TableKey("macs", 32, 1, 2).file_name(),
             TableKey("torch-cpu", 32, 1, 1).file_name(), TableKey("macs", 32, 1, 1, device="other").file_name()}
    assert len(names) == 6
    model.table.path.write_text("{not json")
    with pytest.raises(ConfigError, match=model.table.path.name):
        LatencyModel(TINY, key, tmp_path)


def test_timed_table_predicts_end_to_end(tmp_path):
    torch.set_num_threads(1)
    model = LatencyModel(TINY, TableKey("torch-cpu", 32, 1, 1), tmp_path, rounds=3)
    model.measure()
    fastest, arch = model.fastest()
    assert fastest == pytest.approx(model.predict(arch)) and fastest <= model.predict(TINY.largest())
    assert model.measure_arch(arch) > 0


def test_evolution_finds_the_known_optimum_and_random_is_reproducible():
    score, best = _target_score(TINY)
    found = run_study(TINY, score, _cost, 1e9, evaluations=60, seed=0, population=8, sample_size=3)
    assert max(e.score for e in found) == best
    r1 = run_study(TINY, score, _cost, 30, strategy="random", evaluations=20, seed=5)
    r2 = run_study(TINY, score, _cost, 30, strategy="random", evaluations=20, seed=5)
    assert [e.arch for e in r1] == [e.arch for e in r2]
    assert all(_cost(e.arch) <= 30 for e in r1)  # the hard budget: nothing over it is ever evaluated
    r3 = run_study(TINY, score, _cost, 30, strategy="random", evaluations=20, seed=6)
    assert [e.arch for e in r3] != [e.arch for e in r1]


def test_killed_study_resumes_like_an_uninterrupted_one(tmp_path):
    score, _ = _target_score(TINY)
    ref = run_study(TINY, score, _cost, 40, evaluations=24, seed=2, population=6,
                    storage=f"sqlite:///{tmp_path / 'a.db'}")
    calls = {"n": 0}

    def dying(arch):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt  # the process is killed while scoring trial 14
        return score(arch)

    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_study(TINY, dying, _cost, 40, evaluations=24, seed=2, population=6, storage=storage)
    resumed = run_study(TINY, score, _cost, 40, evaluations=24, seed=2, population=6, storage=storage)
    assert [(e.arch, e.score) for e in resumed] == [(e.arch, e.score) for e in ref]
    with pytest.raises(SearchError, match="was run with"):  # the same file, other settings
        run_study(TINY, score, _cost, 41, evaluations=24, seed=2, population=6, storage=storage)


def test_space_yaml_round_trips_and_bad_files_are_named(tmp_path):
    for name in PRESETS:
        path = save_space(PRESETS[name], tmp_path / f"{name}.yaml")
        assert load_space(path) == PRESETS[name]
    assert load_space("small") == PRESETS["small"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("search_space:\n  layers:\n    - {out_channels: 16, kernel_groups: [1, 7]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: search_space.layers\[0\].*kernel_groups"):
        load_space(bad)
    bad.write_text("search_space:\n  layers:\n    - {out_channels: 16, colour: red}\n")
    with pytest.raises(ConfigError, match=r"layers\[0\]\.colour"):
        load_space(bad)
    with pytest.raises(ConfigError, match="preset"):
        space_from_dict({"search_space": {"preset": "huge"}}, "x.yaml")
    assert space_from_dict({"search_space": {"preset": "small", "width_mult": 0.75}}).width_mult == 0.75


def test_bad_targets_and_budgets(tmp_path, monkeypatch):
    with pytest.raises(LatencyError, match="--target: got 'tpu'"):
        check_target("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LatencyError, match="no CUDA GPU"):
        check_target("cuda")
    out = tmp_path / "search"
    settings = SearchSettings(output=str(out), space="tiny", data="digits", recipe="digits", target="macs",
                              macs=0.01, latency_cache=str(tmp_path / "cache"))
    with pytest.raises(SearchError, match=r"fastest achievable is \d+\.\d+ MMACs"):
        run_search(settings)
    assert not out.exists()  # nothing half-written
    with pytest.raises(SearchError, match="exactly one budget"):
        SearchSettings(target="macs").budget()
    with pytest.raises(SearchError, match="--latency-ms"):
        SearchSettings(target="onnxruntime", macs=10).budget()


def test_cli_end_to_end_on_a_tiny_space(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=(0, 1, 2, 3), n_train=24, n_val=4)
    out = tmp_path / "search"
    args = ["search", "--space", "tiny", "--data", str(data), "--target", "onnxruntime", "--latency-ms", "50",
            "--output", str(out), "--supernet-epochs", "2", "--evaluations", "6", "--population", "3",
            "--predictor-archs", "3", "--finalists", "2", "--train-batch-size", "16", "--workers", "0",
            "--threads", "1", "--latency-cache", str(tmp_path / "cache")]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixconv train --config digit-pairs --model" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {"latency", "supernet", "search", "finalists"} <= set(summary["phases_seconds"])
    assert summary["best"]["measured"] <= 50 and summary["predictor"]["n"] == 3
    assert len(summary["evaluated"]["evolution"]) == 6 and len(summary["evaluated"]["random"]) == 6
    assert (out / "pareto.png").stat().st_size > 1000
    spec = load_config(out / "best.yaml")
    assert "supernet top-1" in (out / "best.yaml").read_text().splitlines()[0]
    info = run_cli("info", "--model", str(out / "best.yaml"))
    assert info.returncode == 0, info.stderr
    assert len(list((out / "top").glob("*.yaml"))) == 2 and spec.stages
    # run again: every phase is found done and reused (the study is resumed, nothing is trained again)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stderr
    best_again = json.loads((out / "summary.json").read_text())["best"]
    assert (best_again["layers"], best_again["score"]) == (summary["best"]["layers"], summary["best"]["score"])


def test_train_on_digit_pairs_uses_its_recipe():
    from mixconv.data.datasets import PAIRS_TRAIN_DIGITS, DigitPairsDataset, _digit_split
    from mixconv.training.config import default_recipe, make_config

    assert make_config(default_recipe("digit-pairs")).img_size == 32 and default_recipe("x/y") == "digits"
    train, val = DigitPairsDataset("train"), DigitPairsDataset("val")
    assert len(train.classes) == 100 and (len(train), len(val)) == (10000, 2000)
    assert train.images.shape[1:] == (3, 32, 32) and sorted(set(val.targets)) == list(range(100))
    # the val pairs are built from digit images no training pair uses
    tr, _ = _digit_split("train", 0.2)
    va, _ = _digit_split("val", 0.2)
    assert not any((v == t).all() for v in va[:40] for t in tr)
    assert PAIRS_TRAIN_DIGITS < 144
    # holding out never leaks: the held-out pairs are made of training-split digits no training pair uses
    from mixconv.data.datasets import holdout_split

    rest, held = holdout_split(train, 0.1)
    assert (len(rest), len(held), held.classes) == (10000, 1000, train.classes)
    train_halves = {bytes(train.images[i, 0, :, :16].numpy()) for i in range(0, 10000, 7)}
    assert not any(bytes(held.dataset.images[i, 0, :, :16].numpy()) in train_halves for i in range(0, 1000, 3))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_supernet_trains_under_torchrun_and_search_reuses_it(tmp_path):
    """The supernet is an ordinary model to `mixconv train`: 2 processes (gloo), the same path on every rank,
    equal final weights; `mixconv search --supernet RUN` then searches with it."""
    import os
    import subprocess
    import sys

    from tests.training_fixtures import REPO

    data = make_image_folder(tmp_path / "data", classes=(0, 1, 2), n_train=16, n_val=4)
    space = save_space(TINY, tmp_path / "space.yaml")
    run_dir = tmp_path / "supernet"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mixconv",
           "train", "--config", "digit-pairs", "--model", str(space), "--data", str(data), "--holdout-fraction",
           "0.25", "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0", "--output", str(run_dir)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["final_weights_sha256"])) == 1
    out = tmp_path / "search"
    result = run_cli("search", "--space", str(space), "--data", str(data), "--supernet", str(run_dir), "--target",
                     "macs", "--macs", "1000", "--output", str(out), "--evaluations", "4", "--population", "2",
                     "--no-compare-random", "--predictor-archs", "2", "--finalists", "1",
                     "--latency-cache", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["supernet_run"] == str(run_dir)
