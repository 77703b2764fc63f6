"""The onnxruntime graph rewrites of ``mixconv export --optimize`` (mixconv.deploy.ort_graph): same outputs,
the squeeze-excite MLP on 1x1 maps, no grouped 1x1 convs, fewer layout changes in ORT's optimized graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mixconv

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mixconv.deploy.export import export_onnx, onnx_op_counts  # noqa: E402
from mixconv.deploy.groups import resolve_excludes  # noqa: E402
from mixconv.deploy.ort_graph import tune_for_onnxruntime  # noqa: E402

# Two SE blocks with group-2 expand/project convs; channels are multiples of 16 so that ORT's blocked layout
# (8 or 16 channels a block, by CPU) takes every conv.
YAML = """\
backbone:
  name: mixnet
  params: {stem_channels: 16, num_features: 64, dropout_rate: 0.0}
  stage_params:
    - expansion_ratio: [1, 3]
      out_channels: [16, 32]
      num_blocks: [1, 2]
      kernel_sizes: [[3], [3, 5]]
      num_exp_groups: [1, 2]
      num_poi_groups: [1, 2]
      stride: [1, 2]
      act_type: [relu, swish]
      se_reduction_ratio: [~, 4]
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("ortgraph")
    (root / "m.yaml").write_text(YAML)
    torch.manual_seed(0)
    model = mixconv.create_model(str(root / "m.yaml"), num_classes=7).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folded weights differ from the raw ones
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    opt = mixconv.optimize_for_inference(model)
    plain, tuned = root / "plain.onnx", root / "tuned.onnx"
    export_onnx(opt, plain, img_size=32)  # both verified against PyTorch by the export itself (rel. 1e-4)
    check = export_onnx(opt, tuned, img_size=32, ort_rewrites=True)
    return model, plain, tuned, check


def _grouped_pointwise(path):
    out = []
    for n in onnx.load(str(path)).graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and attrs.get("group", 1) > 1 and attrs.get("kernel_shape") == [1, 1]:
            out.append(n.name)
    return out


def _reorders_in(path, tmp_path):
    """Feature maps converted into the blocked layout in ORT's optimized graph (ORT_ENABLE_ALL adds the
    blocked-layout transformer); conversions out of it include the SE's tiny (N, C, 1, 1) vectors."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    opts.log_severity_level = 3  # the "hardware specific" warning about saving a blocked-layout graph
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts = onnx_op_counts(opts.optimized_model_filepath)
    return counts.get("ReorderInput", 0)


def test_rewrites_keep_the_outputs(exports):
    model, plain, tuned, check = exports
    assert check.passed and check.rel_err < 1e-5
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ys = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
          for p in (plain, tuned)]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ys[1], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(ys[1], ys[0], rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_se_runs_on_1x1_maps_and_no_grouped_pointwise_conv_is_left(exports):
    _, plain, tuned, _ = exports
    before, after = onnx_op_counts(plain), onnx_op_counts(tuned)
    assert before.get("GlobalAveragePool", 0) == 0 and before["Gemm"] == 2 * 2 + 1  # two SE MLPs + classifier
    assert after["GlobalAveragePool"] == 2 and after["Gemm"] == 1  # only the classifier stays a Gemm
    assert after["Conv"] == before["Conv"] + 4 and after.get("Unsqueeze", 0) == before["Unsqueeze"] - 2
    assert len(_grouped_pointwise(plain)) == 4 and _grouped_pointwise(tuned) == []
    # a second pass finds nothing left to rewrite
    proto = onnx.load(str(tuned))
    rewrites = tune_for_onnxruntime(proto)
    assert (rewrites.se_to_map, rewrites.dense_pointwise) == (0, 0)
    assert "0 squeeze-excite" in str(rewrites)


def test_rewritten_graph_keeps_module_paths_and_changes_layout_less(exports, tmp_path):
    _, plain, tuned, _ = exports
    se_nodes = {n.name: n.op_type for n in onnx.load(str(tuned)).graph.node
                if n.name in set(resolve_excludes(tuned, ["se"]))}
    assert sorted(v for v in se_nodes.values() if v in ("Conv", "GlobalAveragePool")) == [
        "Conv", "Conv", "Conv", "Conv", "GlobalAveragePool", "GlobalAveragePool"]
    assert _reorders_in(tuned, tmp_path) < _reorders_in(plain, tmp_path)


def test_export_cli_rewrites_with_optimize_only(tmp_path):
    from training_fixtures import run_cli

    (tmp_path / "m.yaml").write_text(YAML)
    for flags, grouped in (([], 4), (["--optimize"], 0), (["--optimize", "--no-ort-rewrites"], 4)):
        out = tmp_path / f"m{len(flags)}.onnx"
        r = run_cli("export", "--model", str(tmp_path / "m.yaml"), "--format", "onnx", "--output", str(out),
                    "--img-size", "32", "--num-classes", "7", *flags)
        assert r.returncode == 0, r.stderr
        assert len(_grouped_pointwise(out)) == grouped, flags
    r = run_cli("export", "--model", str(tmp_path / "m.yaml"), "--format", "torchscript", "--output",
                str(tmp_path / "m.ts"), "--ort-rewrites")
    assert r.returncode == 2 and "--ort-rewrites applies to --format onnx only, not torchscript" in r.stderr
