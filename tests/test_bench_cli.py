"""``mixconv benchmark``: runs, reports every field, writes JSON/CSV, compares with timm; clear errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from helpers import load_repo_module

from mixconv.bench.core import Case, Result, result_rows
from mixconv.cli import main

SMALL = ["--batch-size", "2", "--img-size", "32", "--rounds", "2", "--warmup", "1"]


def test_benchmark_with_timm_json(tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "r.json"
    assert main(["benchmark", "--model", "mixnet_s", "--mode", "infer", "--compare", "timm", "--peak-gflops", "100",
                 "--results-file", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "vs_timm" in printed and "img_per_s" in printed
    rows = json.loads(out.read_text())
    assert [(r["source"], r["mode"]) for r in rows] == [("timm", "infer"), ("mixconv", "infer")]
    for r in rows:
        assert r["img_per_s"] > 0 and r["ms_per_batch"] > 0 and r["rounds"] == 2 and r["batch_size"] == 2
        assert r["gflops"] >= 0 and abs(r["roofline_pct"] - r["gflops"]) <= 0.1  # peak 100 GFLOP/s: % == GFLOP/s
        assert r["peak_mem_mb"] is not None
    mixconv_rows = [r for r in rows if r["source"] == "mixconv"]
    assert all(r["vs_timm"] > 0 for r in mixconv_rows)


def test_benchmark_both_modes_optimize_bf16_csv_and_yaml(tmp_path):
    from mixconv import create_model, save_config

    yaml_path = tmp_path / "net.yaml"
    save_config(create_model("mixnet_s"), yaml_path)
    out = tmp_path / "r.csv"
    proc = subprocess.run([sys.executable, "-m", "mixconv", "benchmark", "--model", str(yaml_path), "--optimize",
                           "--mode", "both",
                           "--dtype", "bfloat16", "--channels-last", "--results-file", str(out), *SMALL],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["mode"], r["optimize"], r["dtype"]) for r in rows] == [("train", "False", "bfloat16"),
                                                                      ("infer", "True", "bfloat16")]
    assert all(float(r["img_per_s"]) > 0 for r in rows)


def test_benchmark_bad_arguments(capsys):
    with pytest.raises(SystemExit, match="--optimize is for inference"):
        main(["benchmark", "--optimize", "--mode", "train"])
    with pytest.raises(SystemExit, match="batch-size must be >= 1"):
        main(["benchmark", "--batch-size", "0"])
    assert main(["benchmark", "--model", "mixnet_q", *SMALL]) == 2
    assert "unknown model 'mixnet_q'" in capsys.readouterr().err


def test_ratio_pairs_same_model_mode_and_settings():
    def res(source, mode, seconds, **kw):
        r = Result(Case(model="mixnet_s", source=source, mode=mode, **kw), batch_size=4, img_size=32)
        r.times_s = [seconds, seconds * 2, seconds]
        return r

    rows = result_rows([res("timm", "infer", 2.0), res("mixconv", "infer", 1.0), res("timm", "train", 4.0),
                        res("mixconv", "train", 1.0), res("mixconv", "infer", 0.5, compile=True)])
    assert [r["vs_timm"] for r in rows] == [None, 2.0, None, 4.0, None]
    assert rows[1]["img_per_s"] == 4.0 and rows[1]["ms_per_batch"] == 1000.0


def test_ablation_and_layer_impl_scripts_run(capsys):
    # benchmarks/ablation.py and benchmarks/layer_impls.py at a tiny size: every case runs and is reported.
    import torch

    tiny = ["--batch-size", "2", "--img-size", "32", "--rounds", "1", "--threads", str(torch.get_num_threads())]
    ablation = load_repo_module("benchmarks/ablation.py")
    assert ablation.main(tiny) == 0
    out = capsys.readouterr().out
    assert all(f"| train | {label} |" in out for label in ablation.STEPS)
    assert "| infer | optimized |" in out
    assert load_repo_module("benchmarks/layer_impls.py").main(["--models", "mixnet_s", *tiny]) == 0
    out = capsys.readouterr().out
    assert "| mixconv (3, 5) 1 240 |" in out and "| grouped1x1 16 96 2 |" in out
