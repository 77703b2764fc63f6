"""The CUDA paths of training and inference: their CPU-testable parts here, the GPU parts where CUDA exists.

CUDA graphs (bucketing and padding run eagerly on CPU), GPU JPEG decoding (the same pipeline with
``device="cpu"``), ``mixconv benchmark --device cuda`` (its timing, roofline and table on CPU; a clear error
without CUDA), cudnn.benchmark and an AMP fp16 + GradScaler step with the Triton kernels on CUDA.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg, encode_png

import mixconv
from mixconv.bench import cuda as bc
from mixconv.bench.core import Case
from mixconv.bench.graphs import GraphedInference, bucket
from mixconv.cli import main
from mixconv.data.datasets import SafeImageFolder, collate_skip, eval_transform
from mixconv.data.jpeg import DeviceDecodeLoader, EncodedImageFolder, collate_encoded
from mixconv.models.pretrained_cfg import Preprocess

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_bucket():
    assert [bucket(n, 16) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 16]
    with pytest.raises(ValueError, match="batch size"):
        bucket(0, 8)


def test_graphed_inference_pads_and_chunks_on_cpu():
    model = _tiny_model()
    runner = GraphedInference(model, capture=False, max_batch=4)
    x = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    out = runner(x)  # chunks of 4 and 3 (padded to 4)
    torch.testing.assert_close(out, expected)
    assert sorted(k[0] for k in runner.graphs) == [4]
    assert runner(x[:1]).shape == (1, 5) and sorted(k[0] for k in runner.graphs) == [1, 4]
    with pytest.raises(ValueError, match="CUDA graphs need CUDA"):
        GraphedInference(model)(x)


@cuda
def test_graphed_inference_replays_on_cuda():
    model = _tiny_model().cuda()
    runner = GraphedInference(model, dtype=torch.bfloat16)
    x = torch.randn(3, 3, 16, 16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(x)
    out = runner(x)
    assert runner.graphs[next(iter(runner.graphs))][0] is not None
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
    x2 = torch.randn(3, 3, 16, 16, device="cuda")  # replay reads the new input
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(runner(x2).float(), model(x2).float(), rtol=1e-2, atol=1e-2)


def _image_folder(root):
    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            img = (torch.rand(3, 20 + i, 24, generator=g) * 255).to(torch.uint8)
            (root / cls / f"{i}.jpg").write_bytes(bytes(encode_jpeg(img, quality=95).numpy()))
    png = (torch.rand(3, 18, 18, generator=g) * 255).to(torch.uint8)
    (root / "a" / "p.png").write_bytes(bytes(encode_png(png).numpy()))
    (root / "b" / "bad.jpg").write_bytes(b"not a jpeg")
    return root


def test_device_decode_pipeline_matches_cpu_pipeline(tmp_path, capsys):
    root = _image_folder(tmp_path / "data")
    pre = Preprocess(16, 0.875, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    tf = eval_transform(pre)
    enc = DataLoader(EncodedImageFolder(str(root)), batch_size=8, collate_fn=collate_encoded)
    loader = DeviceDecodeLoader(enc, tf, torch.device("cpu"))
    assert len(loader) == 1
    batches = list(loader)
    images, targets, skipped = batches[0]
    assert skipped == 1 and "bad.jpg" in capsys.readouterr().err
    ref_images, ref_targets, ref_skipped = collate_skip(
        [s for s in SafeImageFolder(str(root), transform=tf)])
    assert ref_skipped == 1 and images.shape == (7, 3, 16, 16) == ref_images.shape
    assert torch.equal(targets, ref_targets)
    # torchvision's libjpeg and PIL's decode alike up to a level or two; the transforms are the same.
    assert (images - ref_images).abs().mean() < 0.02


def test_gpu_decode_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    rc = main(["train", "--gpu-decode", "--epochs", "1", "--output", str(tmp_path / "run")])
    assert rc == 2 and "--gpu-decode" in capsys.readouterr().err


def test_gpu_benchmark_parts_run_on_cpu():
    """The CUDA benchmark's cases, timing, peak memory, roofline and ratios, on CPU with a tiny input."""
    cases = [bc.GpuCase(Case("mixnet_s", source="timm", channels_last=True)),
             bc.GpuCase(Case("mixnet_s", channels_last=True)),
             bc.GpuCase(Case("mixnet_s", mode="train", channels_last=True))]
    results = bc.run_gpu_cases(cases, batch_size=2, img_size=32, device="cpu", warmup=0, rounds=1, iters=1,
                               log=lambda s: None)
    bw = bc.copy_bandwidth_gbs(torch.device("cpu"), mbytes=8, iters=2)
    assert bw > 0
    rows = bc.gpu_rows(results, 28.7, bw)
    assert [r["case"] for r in rows] == [c.name for c in cases]
    # the row rounds the ratio to 2 decimals: at a ratio near 0.3 that alone is more than 1%
    assert rows[1]["vs_timm"] == pytest.approx(results[1].img_per_s / results[0].img_per_s, abs=0.0051)
    assert rows[2]["roofline_pct"] is None and rows[1]["roofline_pct"] > 0
    assert "mixnet_s" in bc.format_gpu_rows(rows)
    assert bc.roofline_pct(1000.0, 28.7, 2870.0) == pytest.approx(100 * 1000 / (2870e9 / 28.7e6))


def test_default_gpu_cases():
    cases = bc.default_cases("mixnet_s", ["infer", "train"], "bfloat16", True, True, True, cuda_graphs=True)
    names = [c.name for c in cases]
    assert sum(c.cuda_graphs for c in cases) == 2 and all(c.case.mode == "infer" for c in cases if c.cuda_graphs)
    assert sum(c.case.source == "timm" for c in cases) == 4  # eager and compiled, both modes
    assert any(c.fuse and c.case.compile for c in cases) and not any(c.fuse and c.case.mode == "train" for c in cases)
    assert len(set(names)) == len(names)
    with pytest.raises(ValueError, match="inference"):
        bc.build_gpu_model(bc.GpuCase(Case("mixnet_s", mode="train"), fuse=True), torch.device("cpu"),
                           torch.randn(1, 3, 32, 32))


def test_cuda_graph_step_runs_eagerly_on_cpu():
    model = _tiny_model()
    x = torch.randn(3, 3, 8, 8)
    gc = bc.GpuCase(Case("tiny", mode="infer", channels_last=True), cuda_graphs=True)
    step = bc.make_gpu_step(gc, model, x)
    step()
    with pytest.raises(ValueError, match="inference"):
        bc.make_gpu_step(bc.GpuCase(Case("tiny", mode="train"), cuda_graphs=True), model, x)


def test_benchmark_device_cuda_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    assert main(["benchmark", "--device", "cuda", "--compare", "timm"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@cuda
@pytest.mark.skipif(not mixconv.kernels.triton_available(), reason="needs triton")
def test_amp_fp16_gradscaler_step_with_triton_kernels():
    torch.backends.cudnn.benchmark = True
    model = mixconv.kernels.use_triton(mixconv.create_model("mixnet_s", num_classes=10)).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(4, 3, 64, 64).pin_memory().to("cuda", non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss) and all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_gpu_targets_script_without_cuda_and_its_arithmetic():
    from helpers import load_repo_module

    gt = load_repo_module("benchmarks/gpu_targets.py")
    if not torch.cuda.is_available():
        assert gt.main([]) == 2
    row = lambda v, roof=None: {"img_per_s": v, "roofline_pct": roof}  # noqa: E731
    infer = {"timm eager": row(100), "timm compiled": row(150), "mixconv eager": row(90),
             "mixconv eager+kernels": row(135), "mixconv eager+kernels+epilogue": row(162),
             "mixconv compiled": row(120), "mixconv compiled+kernels+epilogue": row(210, 45.0)}
    train = {"timm eager": row(40), "timm compiled": row(50), "mixconv eager": row(50),
             "mixconv compiled+kernels": row(70)}
    met = {name: (v, ok) for name, v, _, ok in gt.targets({"infer": infer, "train": train})}
    assert met["inference vs timm eager AMP channels_last"] == (2.1, True)
    assert met["inference vs timm compiled"] == (1.4, True)
    assert met["inference % of memory roofline"] == (45.0, True)
    assert met["training vs timm eager AMP channels_last"] == (1.75, True)
    assert met["training img/s"] == (70, False)
    contrib = gt.contributions(infer)
    assert contrib["kernels (eager+kernels / eager)"] == pytest.approx(1.5)
    assert contrib["epilogue (eager+kernels+epilogue / eager+kernels)"] == pytest.approx(1.2)
