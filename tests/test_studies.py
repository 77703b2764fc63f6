"""The paper's studies: arms build the intended networks, each study runs end to end on the tiny preset,
a stopped study resumes without redoing finished arms, and bad input gets a clear error."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import mixconv
from mixconv.cli import main
from mixconv.files.config import ConfigError
from mixconv.files.mobilenet import load_mobilenet, mobilenet_from_dict, save_mobilenet
from mixconv.layers import MixConv2d
from mixconv.models import Depthwise, MobileNetSpec, mobilenet_from_spec
from mixconv.models.builder import make_divisible
from mixconv.models.mobilenet import V1_BLOCKS, depthwise_count
from mixconv.models.profile import count_params
from mixconv.studies import StudyError, StudySettings, plan_study, run_study, study_arms
from mixconv.studies import runner as study_runner
from mixconv.studies.arms import mix

WIDTH = 0.25


def v1_depthwise_channels(width: float) -> list[int]:
    """The channels of MobileNetV1's 13 depthwise convs, from the paper's table (not from the model)."""
    c, out = make_divisible(32 * width), []
    for cout, _ in V1_BLOCKS:
        out.append(c)
        c = make_divisible(cout * width)
    return out


def mixconv_params(c: int, kernels: tuple[int, ...], split: str = "equal") -> int:
    sizes = mixconv.split_channels(c, len(kernels), split)
    return sum(n * k * k for n, k in zip(sizes, kernels))


def test_kernel_arms_have_the_params_a_formula_predicts():
    arms = study_arms("kernels", ["v1"], {"v1": WIDTH}, [3, 5, 7, 9])
    assert [a.name for a in arms] == ["v1-3x3", "v1-5x5", "v1-mix35", "v1-7x7", "v1-mix357", "v1-9x9", "v1-mix3579"]
    base = count_params(mobilenet_from_spec(arms[0].spec, 10))
    channels = v1_depthwise_channels(WIDTH)
    for arm in arms[1:]:
        ks = arm.spec.layers[0].kernel_sizes
        predicted = sum(mixconv_params(c, ks) - 9 * c for c in channels)  # only the depthwise kernels differ
        assert count_params(mobilenet_from_spec(arm.spec, 10)) - base == predicted, arm.name
        if arm.kind == "mixconv":  # the paper: MixConv {3..k} is smaller than kxk
            dw = next(a for a in arms if a.kind == "depthwise" and a.kernel == arm.kernel)
            assert count_params(mobilenet_from_spec(arm.spec, 10)) < count_params(mobilenet_from_spec(dw.spec, 10))


def test_layer_arm_differs_from_the_baseline_in_that_layer_alone():
    arms = study_arms("layers", ["v1"], {"v1": WIDTH}, [], layers=[7])
    base, dw9, mix9 = arms
    assert base.kind == "baseline" and (dw9.name, mix9.name) == ("v1-L07-9x9", "v1-L07-mix3579")
    ref = mobilenet_from_spec(base.spec, 10).state_dict()
    for arm, kernels in ((dw9, (9,)), (mix9, mix(9))):
        assert [i + 1 for i, (a, b) in enumerate(zip(base.spec.layers, arm.spec.layers)) if a != b] == [7]
        model = mobilenet_from_spec(arm.spec, 10)
        sd = model.state_dict()
        changed = {k.split(".")[1] for k in sd if k not in ref or sd[k].shape != ref[k].shape}
        changed |= {k.split(".")[1] for k in ref if k not in sd}
        assert changed == {"6"}, arm.name  # features.6 is the 7th block
        assert model.features[6][0].conv.kernel_sizes == kernels
    v2 = study_arms("layers", ["v2"], {"v2": 0.35}, [], layers=None)
    assert len(v2) == 1 + 2 * depthwise_count(2) == 35


def test_partition_and_dilation_arms():
    part = study_arms("partition", ["v1"], {"v1": WIDTH}, [7])
    eq, ex = (mobilenet_from_spec(a.spec, 10) for a in part)
    c = v1_depthwise_channels(WIDTH)[1]  # 16 channels: equal 6/5/5, exponential 8/4/4
    assert eq.features[1][0].conv.split_sizes == mixconv.split_channels(c, 3, "equal")
    assert ex.features[1][0].conv.split_sizes == mixconv.split_channels(c, 3, "exponential") == (8, 4, 4)
    dil = study_arms("dilation", ["v1"], {"v1": WIDTH}, [5, 9])
    assert [(a.kind, a.kernel, a.name) for a in dil] == [("depthwise", 5, "v1-5x5"), ("dilated", 5, "v1-3x3-d2"),
                                                       ("depthwise", 9, "v1-9x9"), ("dilated", 9, "v1-3x3-d4")]
    dilated = mobilenet_from_spec(dil[3].spec, 10)
    convs = [m for m in dilated.modules() if isinstance(m, MixConv2d)]
    assert {(m.kernel_sizes, m.dilation) for m in convs} == {((3,), 4)}
    plain = mobilenet_from_spec(MobileNetSpec.uniform(1, Depthwise((3,)), WIDTH), 10)
    assert count_params(dilated) == count_params(plain)  # the same weights, a 9x9 receptive field
    x = torch.randn(1, 3, 32, 32)
    assert dilated.eval()(x).shape == (1, 10)


@pytest.mark.parametrize("kwargs,match", [
    ({"study": "sizes"}, "unknown study 'sizes'"),
    ({"study": "kernels", "kernels": ()}, "no arms"),
    ({"study": "partition", "kernels": (3,)}, "odd ints >= 5"),
    ({"study": "layers", "layers": (14,)}, "layer index 14 is out of range: MobileNetV1 has 13"),
    ({"study": "layers", "layers": ()}, "no arms"),
    ({"study": "kernels", "families": ("v3",)}, "unknown model family 'v3'"),
    ({"study": "kernels", "families": ()}, "no arms"),
    ({"study": "kernels", "seeds": ()}, "at least one seed"),
    ({"study": "kernels", "preset": "huge"}, "unknown study preset 'huge'"),
    ({"study": "kernels", "preset": "paper"}, "needs --data"),
])
def test_bad_studies_are_refused_clearly(kwargs, match):
    with pytest.raises(StudyError, match=match):
        plan_study(StudySettings(**{"preset": "tiny", **kwargs}))


def test_bad_training_settings_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        plan_study(StudySettings("kernels", str(tmp_path), "tiny", train_overrides={"batchsize": 3}))


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["study", "layers", "--preset", "tiny", "--layers", "0", "--output", str(tmp_path)]) == 1
    assert "layer index 0 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "widths"])
    assert "invalid choice: 'widths'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_mobilenet_yaml_round_trip_and_errors(tmp_path):
    spec = MobileNetSpec.uniform(2, Depthwise(mix(7), "exponential"), 0.35).with_layer(3, Depthwise((3,), dilation=2))
    path = save_mobilenet(spec, tmp_path / "arm.yaml", "an arm")
    assert load_mobilenet(path) == spec
    model = mixconv.create_model(str(path), num_classes=4)
    assert model.model_name == "arm" and model.mobilenet_spec == spec
    bad = [({"mobilenet": {"version": 3}}, "mobilenet.version: got 3; expected 1"),
           ({"mobilenet": {"version": 1, "layers": {14: {"kernel_sizes": [9]}}}}, r"layers.14.*1..13"),
           ({"mobilenet": {"version": 1, "depthwise": {"kernel": [3]}}}, "depthwise.kernel: .* one of the fields"),
           ({"mobilenet": {"version": 1, "depthwise": {"kernel_sizes": [4]}}}, "depthwise: kernel sizes must be odd"),
           ({"mobilenet": {"version": 1, "width": 2}}, "mobilenet.width: .* one of the fields")]
    for doc, match in bad:
        with pytest.raises(ConfigError, match=match):
            mobilenet_from_dict(doc, "x.yaml")


def test_arm_checkpoint_rebuilds_its_network(tmp_path):
    spec = MobileNetSpec.uniform(1, Depthwise((3,)), WIDTH).with_layer(2, Depthwise(mix(9)))
    model = mixconv.create_model(spec, num_classes=5)
    path = mixconv.save_checkpoint(model, tmp_path / "arm.safetensors")
    again = mixconv.model_from_checkpoint(path)
    assert again.mobilenet_spec == spec
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_studies(tmp_path_factory):
    """Every study on the tiny preset, in one shared folder (identical arms train once)."""
    out = tmp_path_factory.mktemp("studies")
    results = {}
    for study, extra in (("kernels", {}), ("partition", {"kernels": (5,)}), ("dilation", {"kernels": (5,)}),
                         ("layers", {"layers": (1, 2)})):
        results[study] = run_study(StudySettings(study, str(out), "tiny", **extra), log=lambda *_: None)
    return out, results


@pytest.mark.parametrize("study,arms", [("kernels", ["v1-3x3", "v1-5x5", "v1-mix35"]),
                                        ("partition", ["v1-mix35", "v1-mix35-exp"]),
                                        ("dilation", ["v1-5x5", "v1-3x3-d2"]),
                                        ("layers", ["v1-3x3", "v1-L01-9x9", "v1-L01-mix3579", "v1-L02-9x9",
                                                    "v1-L02-mix3579"])])
def test_each_study_runs_end_to_end(tiny_studies, study, arms):
    out, results = tiny_studies
    rows = _rows(out / f"{study}.csv")
    assert [r["arm"] for r in rows] == arms
    for r in rows:
        assert 0 <= float(r["top1"]) <= 100 and int(r["params"]) > 0 and int(r["macs"]) > 0
        summary = json.loads((out / "runs" / f"{r['arm']}-s0" / "summary.json").read_text())
        assert summary["finished"] and summary["final_top1"] == float(r["top1"])
        assert load_mobilenet(out / "arms" / f"{r['arm']}.yaml") is not None
    png = (out / f"{study}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    claims = results[study]["claims"]
    assert claims and all(c["study"] == study for c in claims)
    assert "| paper's claim | measured | verdict |" in (out / f"{study}.md").read_text()
    if study == "layers":
        assert {r["stride"] for r in rows if r["layer"]} == {"1", "2"}  # layer 1 stride 1, layer 2 stride 2


def test_shared_arms_train_once(tiny_studies):
    out, _ = tiny_studies
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(f"{a}-s0" for a in ["v1-3x3", "v1-5x5", "v1-mix35", "v1-mix35-exp", "v1-3x3-d2",
                                              "v1-L01-9x9", "v1-L01-mix3579", "v1-L02-9x9", "v1-L02-mix3579"])


def test_a_folder_refuses_other_training_settings(tiny_studies):
    out, _ = tiny_studies
    with pytest.raises(StudyError, match="epochs differ"):
        run_study(StudySettings("kernels", str(out), "tiny", epochs=2), log=lambda *_: None)


def test_a_stopped_study_resumes_without_redoing_finished_arms(tmp_path, monkeypatch):
    settings = StudySettings("kernels", str(tmp_path), "tiny", kernels=(3, 5), epochs=2)
    real = study_runner.run_training
    calls = []

    class Stop(Exception):
        pass

    def stop_second_arm(cfg, **kw):  # the 2nd arm is killed after its first epoch
        calls.append(("resume" if kw.get("resume") else "new", cfg.output if cfg.output else kw["resume"]))

        def after(row):
            if len(calls) == 2 and row["epoch"] == 1:
                raise Stop

        return real(cfg, on_epoch_end=after, **kw)

    monkeypatch.setattr(study_runner, "run_training", stop_second_arm)
    with pytest.raises(Stop):
        run_study(settings, log=lambda *_: None)
    first = tmp_path / "runs" / "v1-3x3-s0" / "last.safetensors"
    stamp = first.stat().st_mtime_ns
    assert [r["arm"] for r in _rows(tmp_path / "kernels.csv")] == ["v1-3x3"]
    calls.clear()
    monkeypatch.setattr(study_runner, "run_training", lambda cfg, **kw: calls.append(kw) or real(cfg, **kw))
    result = run_study(settings, log=lambda *_: None)
    assert len(calls) == 2 and calls[0]["resume"].endswith("v1-5x5-s0") and "resume" not in calls[1]
    assert first.stat().st_mtime_ns == stamp  # the finished arm was read back, not retrained
    metrics = _rows(tmp_path / "runs" / "v1-5x5-s0" / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2]  # the stopped arm continued from epoch 1
    assert [r["arm"] for r in result["rows"]] == ["v1-3x3", "v1-5x5", "v1-mix35"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_a_study_runs_under_torchrun(tmp_path):
    """2 processes (gloo): every arm in one process group (set up once), equal weights on both ranks."""
    import os
    import subprocess
    import sys

    from tests.training_fixtures import REPO

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mixconv",
           "study", "kernels", "--preset", "tiny", "--kernels", "3,5", "--output", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(tmp_path / "kernels.csv")
    assert [row["arm"] for row in rows] == ["v1-3x3", "v1-5x5", "v1-mix35"]
    for row in rows:
        summary = json.loads((tmp_path / "runs" / f"{row['arm']}-s0" / "summary.json").read_text())
        assert summary["world_size"] == 2 and len(set(summary["final_weights_sha256"])) == 1
    assert r.stdout.count("[3/3] v1-mix35") == 1  # rank 0 reports; rank 1 trains quietly
