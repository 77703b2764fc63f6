"""Export to ONNX, TorchScript and ExportedProgram, each verified against PyTorch after writing."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import ALL_MODELS, randomize_bn
from torch import nn

import mixconv
from mixconv.cli import main
from mixconv.deploy.export import ExportError, export_model, onnx_op_counts

onnx = pytest.importorskip("onnx", reason="export extra")
pytest.importorskip("onnxruntime", reason="export extra")

SIZE = 64


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = mixconv.create_model(name, **kwargs)
    return randomize_bn(model, torch.randn(4, 3, SIZE, SIZE))  # BN statistics that are not identities


def _assert_check(check, fmt, name):
    print(f"{name}: {check}")
    assert check.format == fmt and check.passed and check.rel_err <= 1e-4
    assert check.input_shape == (3, 3, SIZE, SIZE) and check.export_batch == 2  # verified at another batch


@pytest.mark.parametrize("name", ALL_MODELS)
def test_onnx_every_variant(name, tmp_path):
    # The legacy exporter is about twice as fast; the default (dynamo) one is tested below.
    check = mixconv.export_onnx(_model(name), tmp_path / "m.onnx", img_size=SIZE, exporter="torchscript")
    _assert_check(check, "onnx", name)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]


@pytest.mark.parametrize("name", ["tf_mixnet_s"])
def test_onnx_dynamo_exporter_static_graph(name, tmp_path):
    check = mixconv.export_onnx(_model(name), tmp_path / "m.onnx", img_size=SIZE)
    _assert_check(check, "onnx", name)
    counts = onnx_op_counts(tmp_path / "m.onnx")
    print(f"{name} ONNX nodes: {counts}")
    # TF SAME padding is frozen at the export size: nothing computes pads from shapes.
    assert not {"Shape", "Gather", "ConstantOfShape", "Pad"} & set(counts)
    assert counts["Conv"] > 0
    # One self-contained file with the mode open() would give it: no weights left in a hidden ".data" file
    # beside it, and not mkstemp's 0600.
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert not [t.name for t in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_every_variant(name, tmp_path):
    check = mixconv.export_torchscript(_model(name), tmp_path / "m.ts", img_size=SIZE)
    _assert_check(check, "torchscript", name)


@pytest.mark.parametrize("name", ["tf_mixnet_s", "mobilenet_v2_mixconv"])  # test_models exports every MixNet
def test_exported_program(name, tmp_path):
    check = mixconv.export_program(_model(name), tmp_path / "m.pt2", img_size=SIZE)
    _assert_check(check, "exported-program", name)


def test_features_only_and_fixed_batch(tmp_path):
    model = _model("tf_mixnet_s", features_only=True, out_indices=(2, 3, 4))
    check = mixconv.export_onnx(model, tmp_path / "f.onnx", img_size=(SIZE, 48), dynamic_batch=False,
                                exporter="torchscript")
    assert check.passed and check.input_shape == (2, 3, SIZE, 48)  # a fixed batch is checked at that batch
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    assert len(graph.output) == 3 and graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


class _BatchBaked(nn.Module):
    """Multiplies by the batch size: a trace bakes it in, so the export does not generalise."""

    in_chans = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[0])


def test_verification_catches_a_wrong_export_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="verification failed, so the file was not written"):
        export_model(_BatchBaked(), tmp_path / "bad.ts", "torchscript", img_size=8)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.parametrize("fmt", ["onnx", "exported-program"])
def test_a_bound_not_met_writes_nothing_in_every_format(tmp_path, fmt):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    net.in_chans = 3
    with pytest.raises(ExportError, match=r"exceeds the bound -1e\+00 \(a larger tol, --tol in the CLI"):
        export_model(net, tmp_path / "m.out", fmt, img_size=8, tol=-1.0)  # no error is below a negative bound
    assert list(tmp_path.iterdir()) == []
    assert export_model(net, tmp_path / "m.out", fmt, img_size=8).passed and (tmp_path / "m.out").is_file()


def test_a_failed_check_keeps_the_previous_file(tmp_path):
    out = tmp_path / "bad.ts"
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="--tol"):
        export_model(_BatchBaked(), out, "torchscript", img_size=8)
    assert out.read_bytes() == b"the previous export" and list(tmp_path.iterdir()) == [out]


def test_cli_export_random_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "tf_mixnet_s", "--format", "onnx", "--exporter", "torchscript",
                 "--output", str(out), "--img-size", str(SIZE)]) == 0
    cap = capsys.readouterr()
    assert "random weights" in cap.err and "check onnx: onnxruntime" in cap.out and "OK" in cap.out
    assert "onnx nodes" in cap.out and out.is_file()
    # A mixconv checkpoint describes its model: no --model needed, and the export computes its function.
    model = _model("mixnet_s", num_classes=7)
    ckpt = mixconv.save_checkpoint(model, tmp_path / "w.safetensors")
    ts = tmp_path / "m.ts"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(ts),
                 "--img-size", str(SIZE), "--no-dynamic-batch"]) == 0
    cap = capsys.readouterr()
    assert "random weights" not in cap.err and "check torchscript" in cap.out
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model.eval()(x)
        assert (torch.jit.load(str(ts))(x) - ref).abs().max() <= 1e-4 * ref.abs().max()  # the export check's bound
    assert main(["export", "--format", "onnx", "--output", str(out)]) == 2


def test_optimized_onnx_has_no_split_or_concat(tmp_path, capsys):
    """MixNet-S through the inference optimizer: every MixConv is one depthwise conv, BN is folded."""
    plain = tmp_path / "plain.onnx"
    optimized = tmp_path / "optimized.onnx"
    model = _model("mixnet_s")
    mixconv.export_onnx(model, plain, img_size=SIZE)
    mixconv.export_onnx(mixconv.optimize_for_inference(model), optimized, img_size=SIZE)
    before, after = onnx_op_counts(plain), onnx_op_counts(optimized)
    print(f"mixnet_s ONNX nodes before {sum(before.values())}: {before}\nafter {sum(after.values())}: {after}")
    assert before["Split"] == 13 and before["Concat"] == 13
    assert "Split" not in after and "Concat" not in after and "BatchNormalization" not in after
    assert after["Conv"] < before["Conv"]
    assert main(["export", "--model", "mixnet_s", "--format", "onnx", "--optimize", "--img-size", str(SIZE),
                 "--output", str(tmp_path / "cli.onnx")]) == 0
    assert "OK" in capsys.readouterr().out
    assert "Split" not in onnx_op_counts(tmp_path / "cli.onnx")
