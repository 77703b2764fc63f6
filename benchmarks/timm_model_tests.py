"""Run timm's own model test suite (``tests/test_models.py`` of timm's repository) on mixconv's models.

    git clone https://github.com/huggingface/pytorch-image-models /tmp/timm-repo   # any recent checkout
    python benchmarks/timm_model_tests.py /tmp/timm-repo/tests/test_models.py

The script copies that test file into a scratch folder with a ``conftest.py`` that registers every mixconv model
in timm's registry as ``mixconv_<name>`` (with its ``pretrained_cfg``, which timm's tests read), then runs
``pytest -k mixconv_`` there and prints the counts. timm chooses the models of its ``forward_intermediates``
tests by module name, so the entry points are registered under a module named like timm's EfficientNet's.
Nothing of timm's is changed; timm stays a test and benchmark reference.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONFTEST = '''
import sys
import types

import mixconv
from timm.models._pretrained import DefaultCfg, PretrainedCfg
from timm.models._registry import _model_default_cfgs, _model_pretrained_cfgs, register_model

mod = types.ModuleType("mixconv_scratch.efficientnet")
sys.modules[mod.__name__] = mod
for name in mixconv.list_models():
    def entry(pretrained=False, _name=name, **kwargs):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
            kwargs.pop(k, None)
        return mixconv.create_model(_name, **kwargs)
    entry.__name__ = f"mixconv_{name}"
    entry.__module__ = mod.__name__
    setattr(mod, entry.__name__, entry)
    register_model(entry)
    cfg = mixconv.create_model(name).pretrained_cfg
    pcfg = PretrainedCfg(architecture=entry.__name__, input_size=tuple(cfg["input_size"]),
                         pool_size=tuple(cfg["pool_size"]), first_conv=cfg["first_conv"],
                         classifier=cfg["classifier"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                         crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], num_classes=cfg["num_classes"])
    _model_default_cfgs[entry.__name__] = DefaultCfg(tags=[""], cfgs={"": pcfg})
    _model_pretrained_cfgs[entry.__name__] = pcfg
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("test_file", type=Path, help="tests/test_models.py of a timm checkout")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = p.parse_args()
    if not args.test_file.is_file():
        print(f"{args.test_file}: no such file; pass tests/test_models.py of a timm checkout", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(args.test_file, Path(tmp) / "test_models.py")
        (Path(tmp) / "conftest.py").write_text(CONFTEST)
        cmd = [sys.executable, "-m", "pytest", "-q", "-k", "mixconv_", "-p", "no:cacheprovider", "-W", "ignore",
               "-rf", *args.pytest_args]
        return subprocess.run(cmd, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
