"""Faster R-CNN with a MixNet-S + FPN backbone (torchvision), trained a few steps on synthetic boxes.

    python examples/detection_fasterrcnn.py --steps 5 --img-size 128
    python examples/detection_fasterrcnn.py --pretrained mixnet_s-a907afbc.pth --freeze-bn

Replace ``synthetic_batch`` with a real dataset (e.g. ``torchvision.datasets.CocoDetection`` wrapped with
``torchvision.datasets.wrap_dataset_for_transforms_v2``) for actual training.
"""
from __future__ import annotations

import argparse

import torch
from torchvision.models.detection import FasterRCNN

import mixconv


def synthetic_batch(n: int, size: int, num_classes: int, g: torch.Generator) -> tuple[list, list]:
    """``n`` random images, each with 1-3 random boxes of random classes."""
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, size, size, generator=g))
        k = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = torch.rand(k, 2, generator=g) * size * 0.35 + size * 0.05
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(1, num_classes, (k,), generator=g)})
    return images, targets


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    backbone = mixconv.detection_backbone(args.model, fpn=True, out_indices=(1, 2, 3, 4),
                                          pretrained=args.pretrained, freeze_bn=args.freeze_bn)
    model = FasterRCNN(backbone, num_classes=args.num_classes, min_size=args.img_size, max_size=args.img_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(args.steps):
        images, targets = synthetic_batch(args.batch_size, args.img_size, args.num_classes, g)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3f} (" + ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items()) + ")")
    model.eval()
    images, _ = synthetic_batch(2, args.img_size, args.num_classes, g)
    with torch.no_grad():
        for i, det in enumerate(model(images)):
            print(f"image {i}: {len(det['boxes'])} detections, top score "
                  f"{det['scores'].max().item() if len(det['scores']) else 0:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixnet_s", help="MixNet name or YAML config")
    parser.add_argument("--pretrained", help="local timm or mixconv checkpoint for the backbone")
    parser.add_argument("--freeze-bn", action="store_true", help="FrozenBatchNorm2d in the backbone")
    parser.add_argument("--num-classes", type=int, default=4, help="classes including background")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    main(parser.parse_args())
