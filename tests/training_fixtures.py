"""Shared fixtures of the training/validation/prediction tests: a tiny MixNet and tiny image folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY_YAML = """\
backbone:
  name: mixnet
  params: {stem_channels: 8, num_features: 32, dropout_rate: 0.0}
  stage_params:
    - expansion_ratio: [1, 3]
      out_channels: [8, 16]
      num_blocks: [1, 1]
      kernel_sizes: [[3], [3, 5]]
      num_exp_groups: [1, 1]
      num_poi_groups: [1, 1]
      stride: [1, 2]
      act_type: [relu, swish]
      se_reduction_ratio: [~, 4]
"""

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_model(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return str(path)


def make_image_folder(root: Path, classes=(0, 1, 2), n_train: int = 16, n_val: int = 8) -> Path:
    """Digits images (as 16x16 RGB PNGs) in ``root/train/<class>`` and ``root/val/<class>``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        imgs = digits.images[digits.target == c]
        for split, chunk in (("train", imgs[:n_train]), ("val", imgs[n_train:n_train + n_val])):
            d = root / split / f"digit{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(chunk):
                arr = (img * (255 / 16)).astype(np.uint8)
                Image.fromarray(arr).resize((16, 16), Image.BILINEAR).convert("RGB").save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


def tiny_settings(model: str, data: str, out: Path, **extra) -> dict:
    """Settings of a run that takes a second or two on a CPU."""
    settings = dict(model=model, data=data, output=str(out), img_size=32, crop_pct=1.0, epochs=2, batch_size=8,
                    workers=0, opt="adamw", lr=0.003, lr_base_size=8, warmup_epochs=0, hflip=0.0,
                    scale=(0.7, 1.0), seed=0, deterministic=True, log_interval=1000)
    settings.update(extra)
    return settings


def cli_args(settings: dict) -> list[str]:
    """Command-line flags for ``settings`` (booleans as --flag / --no-flag)."""
    args = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, (tuple, list)):
            continue  # no CLI flag; the recipe's value is used
        else:
            args += [flag, str(v)]
    return args


def run_cli(*args: str, timeout: int = 300, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """Run ``mixconv ARGS``: in this process (fast), or as ``python -m mixconv`` with ``subprocess_``."""
    if not subprocess_:
        import contextlib
        import io

        from mixconv.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse errors
                code = e.code if isinstance(e.code, int) else 1
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "mixconv", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
