"""``mixconv predict IMAGE... --cam DIR``: where the model looks, as Grad-CAM overlays.

The class activation maps come from the ``grad-cam`` package (``pip install 'mixconv[cam]'``), computed on the
last stage of the network by default, or on any module named with ``--cam-layer``. Each overlay is the image
as the model saw it (resized and cropped by the checkpoint's preprocessing) with the map for the predicted
class on top, saved next to the plain image as ``DIR/<image stem>_cam.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mixconv.files.config import ConfigError

MIN_SIDE = 224  # small inputs (digits: 64 px) are enlarged so the overlay is readable


def _gradcam() -> Any:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils import image as cam_image
        from pytorch_grad_cam.utils import model_targets
    except ImportError:
        raise ConfigError("--cam needs the grad-cam package: pip install 'mixconv[cam]'") from None
    return pytorch_grad_cam, cam_image, model_targets


def default_layer_name(model: nn.Module) -> str:
    """The last stage of a MixNet (``stages.N``); the last module with parameters otherwise."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return f"stages.{len(stages) - 1}"
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if not names:
        raise ConfigError(f"--cam: {type(model).__name__} has no layer to explain; pass --cam-layer NAME")
    return names[-1]


def find_layer(model: nn.Module, name: Optional[str]) -> tuple[str, nn.Module]:
    """The module called ``name`` (default: :func:`default_layer_name`); a clear error lists some choices."""
    name = name or default_layer_name(model)
    modules = dict(model.named_modules())
    if name not in modules:
        tops = [n for n in modules if n and n.count(".") <= 1]
        raise ConfigError(f"--cam-layer {name!r}: no such module in {getattr(model, 'model_name', 'the model')}; "
                          f"for example: {', '.join(tops[-12:])}")
    return name, modules[name]


def _enlarge(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = max(1, -(-MIN_SIDE // h))
    if scale == 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def save_cams(images: Sequence[str | Path], checkpoint: str | Path, out_dir: str | Path, *,
              model: Optional[str] = None, layer: Optional[str] = None, img_size: Optional[int] = None,
              crop_pct: Optional[float] = None, interpolation: Optional[str] = None) -> list[dict[str, Any]]:
    """Grad-CAM overlays of ``images`` for their predicted classes; one ``{"image", "cam", "class", "prob"}`` per
    readable image (unreadable ones get ``error``)."""
    from PIL import Image

    from mixconv.data.datasets import eval_transform
    from mixconv.inference.runner import load_model

    gradcam, cam_image, model_targets = _gradcam()
    loaded = load_model(checkpoint, model, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    net = loaded.model.eval()
    layer_name, target_layer = find_layer(net, layer)
    transform = eval_transform(loaded.preprocess)
    classes = loaded.classes or [str(i) for i in range(getattr(net, "num_classes", 0))]
    mean = torch.tensor(loaded.preprocess.mean).view(-1, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(-1, 1, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with gradcam.GradCAM(model=net, target_layers=[target_layer]) as cam:
        for path in images:
            try:
                with Image.open(path) as im:
                    x = transform(im.convert("RGB")).unsqueeze(0)
            except Exception as e:  # PIL's errors vary; the file name is what matters
                results.append({"image": str(path), "error": f"{type(e).__name__}: {e}"})
                continue
            with torch.no_grad():
                probs = net(x).float().softmax(1)[0]
            pred = int(probs.argmax())
            heat = cam(input_tensor=x, targets=[model_targets.ClassifierOutputTarget(pred)])[0]
            rgb = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)
            overlay = cam_image.show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.6)
            side_by_side = np.concatenate([(rgb * 255).round().astype(np.uint8), overlay], axis=1)
            dst = out / f"{Path(path).stem}_cam.png"
            Image.fromarray(_enlarge(side_by_side)).save(dst)
            results.append({"image": str(path), "cam": str(dst), "layer": layer_name, "class": classes[pred],
                            "prob": float(probs[pred])})
    return results


__all__ = ["default_layer_name", "find_layer", "save_cams"]
