"""Deployment: ONNX metadata, validate/predict --onnx, int8 quantization, QAT and the onnxruntime benchmark."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from training_fixtures import TINY_YAML, run_cli, tiny_settings

import mixconv

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mixconv.data.datasets import DigitsDataset  # noqa: E402
from mixconv.deploy.quantize import QuantizeSettings, quantize_onnx  # noqa: E402
from mixconv.files.onnx_metadata import read_metadata  # noqa: E402
from mixconv.training.qat import (  # noqa: E402
    QatCalibration,
    calibrate_qat,
    fake_quant_weight,
    prepare_qat,
    qat_ranges,
    remove_qat,
    set_qat_mode,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and does not thrash a shared CPU
    yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MixNet trained on digits for three epochs (32 px), its checkpoint and its fp32 ONNX export.

    Three epochs at lr 0.05 reach about 50% top-1, so most predictions are not near-ties that int8 rounding flips.
    """
    root = tmp_path_factory.mktemp("deploy")
    (root / "tiny.yaml").write_text(TINY_YAML)
    torch.set_num_threads(1)
    summary = mixconv.train(None, **tiny_settings(str(root / "tiny.yaml"), "digits", root / "run", epochs=3,
                                                  batch_size=64, lr_base_size=64, lr=0.05))
    ckpt = summary["best_checkpoint"]
    fp32 = root / "fp32.onnx"
    r = run_cli("export", "--checkpoint", ckpt, "--format", "onnx", "--output", str(fp32), "--optimize")
    assert r.returncode == 0, r.stderr
    return root, ckpt, fp32


def _digit_pngs(tmp_path, n=3):
    ds = DigitsDataset("val")
    paths = []
    for i in range(n):
        p = tmp_path / f"digit_{i}.png"
        Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    return paths


def test_export_stores_the_checkpoints_preprocessing_classes_and_data(trained):
    _, ckpt, fp32 = trained
    meta = read_metadata(fp32)
    from mixconv.files.weights import read_training_checkpoint

    extra = read_training_checkpoint(ckpt)[1]
    assert meta.preprocess.to_dict() == extra["preprocess"]
    assert meta.classes == [str(i) for i in range(10)] and meta.data == "digits"


def test_validate_onnx_equals_the_checkpoint(trained):
    _, ckpt, fp32 = trained
    ref = mixconv.evaluate(ckpt, device="cpu")
    got = mixconv.evaluate(onnx=fp32)
    assert got["images"] == ref["images"] == 360
    assert got["top1"] == pytest.approx(ref["top1"], abs=0.3)  # float32 both; at most one image may flip
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-3)
    r = run_cli("validate", "--onnx", str(fp32), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top1"] == pytest.approx(got["top1"])
    r = run_cli("validate", "--onnx", str(fp32), "--checkpoint", ckpt)
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_predict_onnx_fp32_and_int8_agree_with_the_checkpoint(trained, tmp_path):
    root, ckpt, fp32 = trained
    paths = _digit_pngs(tmp_path)
    int8 = root / "predict-int8.onnx"
    mixconv.quantize_onnx(fp32, int8, verify=False)
    ref = mixconv.predict(paths, ckpt, top_k=2)
    for path in (fp32, int8):
        r = run_cli("predict", *paths, "--onnx", str(path), "--top-k", "2", "--format", "json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        if path == fp32:
            assert [g["top"][0]["class"] for g in got] == [g["top"][0]["class"] for g in ref]
            assert got[0]["top"][0]["prob"] == pytest.approx(ref[0]["top"][0]["prob"], abs=1e-4)
            continue
        # int8 rounding may swap a near-tie; where the checkpoint is clear (margin > 0.05) the class must hold
        clear = [i for i, g in enumerate(ref) if g["top"][0]["prob"] - g["top"][1]["prob"] > 0.05]
        assert clear, "the fixture model should be clear on at least one image"
        assert [got[i]["top"][0]["class"] for i in clear] == [ref[i]["top"][0]["class"] for i in clear]
        for g, want in zip(got, ref):
            assert g["top"][0]["prob"] == pytest.approx(want["top"][0]["prob"], abs=0.1)


def _dq_weight_inputs(path):
    """{initializer name: axis} of the DequantizeLinear nodes that dequantize weights (initializers)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            scale = onnx.numpy_helper.to_array(inits[n.input[1]])
            out[n.input[0]] = (axis, scale.size, inits[n.input[0]].data_type)
    return out


def test_quantize_cli_writes_per_channel_qdq_int8_and_reports(trained):
    root, _, fp32 = trained
    int8 = root / "int8.onnx"
    r = run_cli("quantize", "--onnx", str(fp32), "--output", str(int8), "--calib-images", "64", "--val-images", "120",
                "--speed-batches", "1", "--max-drop", "100", "--min-agreement", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    for text in ("top-1 on 120 validation images: fp32", "agreement", "largest logit difference", "file sizes",
                 "int8 vs fp32 in onnxruntime on this machine: batch 1", "OK: within the bound"):
        assert text in r.stdout
    weights = _dq_weight_inputs(int8)
    convs = [v for k, v in weights.items() if "weight" in k]
    assert len(convs) >= 8
    # int8 weights, one scale per output channel (axis 0) for every conv with more than one channel
    assert all(dtype == onnx.TensorProto.INT8 for _, _, dtype in convs)
    assert sum(1 for axis, n, _ in convs if n > 1 and axis == 0) >= len(convs) - 1
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert read_metadata(int8) == read_metadata(fp32)  # the int8 file keeps the preprocessing


def test_quantize_excludes_groups(trained):
    root, _, fp32 = trained
    int8 = root / "int8-excl.onnx"
    r = run_cli("quantize", "--onnx", str(fp32), "--output", str(int8), "--calib-images", "32", "--val-images",
                "60", "--speed-batches", "--exclude", "stem", "se", "classifier", "--max-drop", "100",
                "--min-agreement", "0", "--method", "percentile")
    assert r.returncode == 0, r.stderr + r.stdout
    weights = _dq_weight_inputs(int8)
    assert not any(k.startswith(("stem.", "classifier.")) or ".se." in k for k in weights), sorted(weights)
    assert any(k.startswith("stages.") and ".se." not in k for k in weights)
    bad = run_cli("quantize", "--onnx", str(fp32), "--output", str(root / "x.onnx"), "--exclude", "nosuchlayer")
    assert bad.returncode == 2 and "--exclude nosuchlayer" in bad.stderr and "stem" in bad.stderr


def test_a_failed_quantize_leaves_nothing_and_names_value_bound_and_flag(trained, tmp_path):
    _, _, fp32 = trained
    out_dir = tmp_path / "out"
    int8 = out_dir / "int8.onnx"
    r = run_cli("quantize", "--onnx", str(fp32), "--output", str(int8), "--calib-images", "32", "--val-images",
                "60", "--speed-batches", "--min-agreement", "101")
    assert r.returncode == 1, r.stderr  # an impossible bound: nothing written, the sensitivity report printed
    assert r.stderr.startswith("FAILED: "), r.stderr
    assert re.search(r"the top-1 agreement \d+\.\d\d% is below --min-agreement 101.0 \(a smaller "
                     r"--min-agreement accepts it\)\. Nothing was written to .*int8\.onnx", r.stderr), r.stderr
    assert "dB" in r.stdout and "quantized" not in r.stdout
    assert not int8.exists() and list(out_dir.iterdir()) == []  # no int8 file and no temporary one
    # the library says the same without the CLI
    report = quantize_onnx(fp32, int8, settings=QuantizeSettings(calib_images=16), val_images=30,
                           speed_batches=(), min_agreement=101.0)
    assert not report.written and not int8.exists() and report.sensitivity


def test_fake_quant_weight_is_onnxruntimes_per_channel_symmetric_int8():
    w = torch.randn(6, 3, 3, 3) * torch.tensor([1e-3, 0.1, 1, 10, 100, 1])[:, None, None, None]
    scale = w.abs().flatten(1).amax(1) / 127
    expected = (w / scale[:, None, None, None]).round().clamp(-127, 127) * scale[:, None, None, None]
    assert torch.allclose(fake_quant_weight(w), expected, rtol=1e-6, atol=0)
    # per-channel symmetric rounding ignores a per-channel rescaling (what BatchNorm folding does)
    s = torch.tensor([0.5, 2.0, 3.0, 0.1, 7.0, 1.5])[:, None, None, None]
    assert torch.allclose(fake_quant_weight(w * s), fake_quant_weight(w) * s, rtol=1e-5)


def test_prepare_qat_keeps_the_state_dict_and_trains_through_fake_quant(tmp_path):
    torch.manual_seed(1)  # a fixed draw: over 30 seeds the bound below held for 27 (used at 0.2 of it here)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    model = mixconv.create_model(str(tmp_path / "tiny.yaml"), num_classes=4)
    x = torch.randn(4, 3, 32, 32)
    keys = list(model.state_dict())
    prepare_qat(model)
    assert list(model.state_dict()) == keys
    model.train()
    with pytest.raises(RuntimeError, match="never calibrated"):
        model(x)
    assert calibrate_qat(model, [x[:2], x[2:]]) == 4 and model.training  # the train/eval mode is kept
    model(x).sum().backward()  # every weight gets a gradient through the rounding
    assert all(p.grad is not None for p in model.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for n, p in model.named_parameters())
    ranges = qat_ranges(model)
    # one range per tensor ORT quantizes: input, BatchNorm outputs, ReLU, swish's sigmoid and product, the SE
    # pool/convs/gate/product, the residual sum, the classifier's input and output
    for name in ("input", "stem.act:out", "stages.1.0.expand.bn:out", "stages.0.0:out", "stages.1.0.se:pool", "stages.1.0.se.conv_reduce:out",
                 "stages.1.0.se.gate:out", "stages.1.0.se:mul", "classifier:in", "classifier:out"):
        assert name in ranges and ranges[name].calibrated, name
    assert not any(n.startswith("stages.1.0:") for n in ranges)  # no residual in the stride-2 block
    assert "stem.bn:out" not in ranges  # a conv output that only a ReLU reads is rounded once, after the ReLU
    model.eval()
    with torch.no_grad():
        fq = model(x)
        set_qat_mode(model, "float")
        flt = model(x)
        set_qat_mode(model, "quantize")
        remove_qat(model)
        ref = model(x)
    assert torch.allclose(flt, ref, atol=1e-5)  # float mode: the float model (up to summation order)
    assert not torch.equal(fq, ref) and torch.allclose(fq, ref, atol=0.1 * ref.abs().max().item() + 1e-3)
    assert list(model.state_dict()) == keys and not qat_ranges(model)
    with pytest.raises(ValueError, match="activation_type"):
        prepare_qat(mixconv.create_model(str(tmp_path / "tiny.yaml"), num_classes=4), "int4")
    from mixconv.deploy.quantize import ACTIVATION_TYPES
    from mixconv.training.config import QAT_ACTIVATIONS

    assert QAT_ACTIVATIONS == ACTIVATION_TYPES  # --qat-activation offers what `quantize --activation-type` does


def test_fake_quant_weight_rounds_as_ort_reduce_range():
    # ORT: --reduce-range weights in [-64, 64] with scale max|w| / 64
    w = torch.randn(4, 3, 3, 3)
    scale = w.abs().flatten(1).amax(1)[:, None, None, None] / 64
    assert torch.allclose(fake_quant_weight(w, reduce_range=True), (w / scale).round().clamp(-64, 64) * scale)


@pytest.mark.parametrize("act,reduce_range", [("uint8", False), ("int8", True)])
def test_qat_simulates_the_int8_graph_ort_runs(trained, tmp_path, act, reduce_range):
    """The simulation is ORT's int8 file tensor by tensor: as many rounded tensors, the same scales (both
    calibrated on the same images), and logits much closer to ORT's int8 than the float model's are."""
    from onnx import numpy_helper

    from mixconv.data.datasets import image_batches, sample_subset
    from mixconv.deploy.quantize import QuantizeSettings, data_splits
    from mixconv.inference.ort import ort_session

    root, ckpt, fp32 = trained
    int8 = tmp_path / "int8.onnx"
    mixconv.quantize_onnx(fp32, int8, settings=QuantizeSettings(calib_images=64, activation_type=act,
                                                                reduce_range=reduce_range), verify=False)
    calib, val = data_splits("digits", read_metadata(fp32), str(fp32))
    model = mixconv.create_model(str(root / "tiny.yaml"), num_classes=10)
    mixconv.load_pretrained(model, ckpt)
    prepare_qat(model.eval(), act, reduce_range)
    calibrate_qat(model, image_batches(sample_subset(calib, 64), 16))
    graph = onnx.load(int8).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    ort_scales = sorted(float(inits[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear")
    sim_scales = sorted(r.qparams(act)[0] for r in qat_ranges(model).values())
    if act == "uint8":  # int8 keeps each ReLU and rounds its input with its output's range: one scale, twice
        assert len(sim_scales) == len(ort_scales)
    distinct = lambda scales: sorted({float(f"{s:.4g}") for s in scales})  # noqa: E731
    assert len(distinct(sim_scales)) == len(distinct(ort_scales)) > 10
    assert np.allclose(distinct(sim_scales), distinct(ort_scales), rtol=1e-3)
    x = next(image_batches(sample_subset(val, 64, seed=1), 64))
    ort_logits = torch.from_numpy(ort_session(int8, 1).run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        sim = model(x)
        set_qat_mode(model, "float")
        flt = model(x)
    assert (sim - ort_logits).abs().mean() < 0.5 * (flt - ort_logits).abs().mean()


def test_qat_calibration_recalibrates_on_schedule_and_keeps_frozen_batchnorm(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    model = prepare_qat(mixconv.create_model(str(tmp_path / "tiny.yaml"), num_classes=4))
    calls = []
    cal = QatCalibration(model, [torch.randn(2, 3, 32, 32)], every=3)
    cal.calibrate = lambda: calls.append(1)  # type: ignore[method-assign]
    for step in range(1, 8):
        cal.before_step(step)
    assert len(calls) == 3  # steps 1, 4, 7
    model.train()
    model.stem.bn.eval()
    images = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    QatCalibration(model, images).calibrate()
    assert model.training and not model.stem.bn.training  # each module's mode restored, frozen BN too
    with pytest.raises(ValueError, match="not prepared"):
        QatCalibration(mixconv.create_model(str(tmp_path / "tiny.yaml"), num_classes=4), [])


def test_train_qat_fine_tunes_a_checkpoint_that_quantizes(trained, tmp_path):
    root, ckpt, _ = trained
    summary = mixconv.train(None, **tiny_settings(str(root / "tiny.yaml"), "digits", tmp_path / "qat", epochs=1,
                                                  batch_size=128, lr_base_size=128, lr=0.001, qat=True,
                                                  pretrained=ckpt))
    from mixconv.files.weights import read_training_checkpoint

    before, after = read_training_checkpoint(ckpt)[0], read_training_checkpoint(summary["best_checkpoint"])[0]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # BatchNorm frozen under --qat
    assert not torch.equal(before["stem.conv.weight"], after["stem.conv.weight"])
    out = tmp_path / "qat-int8.onnx"
    r = run_cli("quantize", "--checkpoint", summary["best_checkpoint"], "--output", str(out), "--calib-images",
                "32", "--val-images", "60", "--speed-batches", "--max-drop", "100", "--min-agreement", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    assert (tmp_path / "qat-int8.fp32.onnx").is_file() and out.is_file()
    assert mixconv.evaluate(onnx=out)["images"] == 360
    bad = run_cli("train", "--model", str(root / "tiny.yaml"), "--qat", "--compile", "--epochs", "1",
                  "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--qat cannot be combined with --compile" in bad.stderr
    bad = run_cli("train", "--model", str(root / "tiny.yaml"), "--qat", "--ema-decay", "0.99", "--epochs", "1",
                  "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--qat cannot be combined with --ema-decay" in bad.stderr


def test_benchmark_runtime_onnxruntime_smoke(trained):
    root, _, _ = trained
    r = run_cli("benchmark", "--runtime", "onnxruntime", "--model", str(root / "tiny.yaml"), "--img-size", "32",
                "--batch-size", "2", "--rounds", "1", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert set(rows) == {"ort-fp32", "ort-int8", "torch-optimize"}
    assert all(float(v[2]) > 0 for v in rows.values())


def test_onnx_commands_reject_bad_files_without_a_traceback(tmp_path):
    missing = tmp_path / "missing.onnx"
    r = run_cli("validate", "--onnx", str(missing))
    assert r.returncode == 2 and f"{missing}: no such file; expected an ONNX model" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = run_cli("predict", "x.png", "--onnx", str(junk))
    assert r.returncode == 2 and "junk.onnx" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("quantize", "--onnx", str(missing), "--output", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "missing.onnx" in r.stderr


def test_densify_grouped_pointwise_keeps_outputs_and_leaves_depthwise_and_big_convs(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mixconv.deploy.densify import densify_grouped_pointwise

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in (
        ("pw", (12, 4, 1, 1)), ("pwb", (12,)), ("dw", (12, 1, 3, 3)), ("big", (9, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "pw", "pwb"], ["a"], group=2, name="pw"),  # 8 -> 12, 2 groups
             helper.make_node("Conv", ["a", "dw"], ["b"], group=12, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Conv", ["b", "big"], ["y"], group=3, name="big")]  # 12 -> 9, 3 groups
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9, 5, 5])], inits)
    src, dst = tmp_path / "g.onnx", tmp_path / "d.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    # "pw" adds 48 zeros, "big" 72: a limit of 50 rewrites only "pw"
    assert densify_grouped_pointwise(src, dst, max_zeros=50) == 1
    groups = {n.name: next(a.i for a in n.attribute if a.name == "group") for n in onnx.load(str(dst)).graph.node}
    assert groups == {"pw": 1, "dw": 12, "big": 3}
    x = rng.standard_normal((1, 8, 5, 5)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0] for p in (src, dst)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-5)
    assert densify_grouped_pointwise(src, dst, max_zeros=10**6) == 2
