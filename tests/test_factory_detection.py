"""MixNet backbones in torchvision detection models: a training step and inference on a tiny batch."""
from __future__ import annotations

import pytest
import torch

import mixconv

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import FasterRCNN, RetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

SIZE = 128


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 40.0, 120.0, 100.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[30.0, 20.0, 100.0, 110.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def _train_step_and_infer(model):
    images, targets = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and all({"boxes", "labels", "scores"} <= d.keys() for d in dets)
    assert all(d["boxes"].shape[-1] == 4 for d in dets)
    return losses


def test_backbone_levels():
    backbone = mixconv.detection_backbone("mixnet_s").eval()
    assert backbone.out_channels == 256 and backbone.body.channels() == [24, 40, 120, 200]
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, SIZE, SIZE))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [v.shape[-1] for v in out.values()] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32, SIZE // 64]
    plain = mixconv.detection_backbone("mixnet_s", fpn=False, freeze_bn=True)
    assert plain.out_channels == 200 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_faster_rcnn_train_step_and_inference():
    torch.manual_seed(0)
    backbone = mixconv.detection_backbone("mixnet_s", fpn=True, out_indices=(1, 2, 3, 4))
    model = FasterRCNN(backbone, num_classes=3, min_size=SIZE, max_size=SIZE, rpn_batch_size_per_image=32,
                       box_batch_size_per_image=32, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    losses = _train_step_and_infer(model)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)


def test_retinanet_with_p6p7():
    torch.manual_seed(0)
    backbone = mixconv.detection_backbone("mixnet_s", out_indices=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256))
    anchors = AnchorGenerator(tuple((s,) for s in (16, 32, 64, 128, 256)), ((0.5, 1.0, 2.0),) * 5)
    model = RetinaNet(backbone, num_classes=3, anchor_generator=anchors, min_size=SIZE, max_size=SIZE)
    losses = _train_step_and_infer(model)
    assert set(losses) == {"classification", "bbox_regression"}
