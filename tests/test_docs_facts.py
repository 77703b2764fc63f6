"""Facts the README and the docs state, checked against the code (the examples themselves run in docs_examples)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from docs_examples import REPO, needs, noise, shell_script, unmet

from mixconv.cli import build_parser
from mixconv.inference.distributed import DistInfo
from mixconv.kernels.capability import CpuInfo
from mixconv.training.config import TrainConfig, auto_workers
from mixconv.training.main import default_output


def _train_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return {a.dest for a in sub.choices["train"]._actions}


def test_the_recipe_only_settings_listed_in_the_training_guide_are_those_without_a_flag():
    text = (REPO / "docs/guides/training.md").read_text(encoding="utf-8")
    listed = text.split("<!-- recipe-only:", 1)[1].split("-->", 1)[1].split("`. ", 1)[0] + "`"
    documented = set(re.findall(r"`(\w+)`", listed))
    actual = {f.name for f in dataclasses.fields(TrainConfig)} - _train_flags()
    assert documented == actual


def test_the_default_output_folder_is_the_one_the_readme_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first = default_output(TrainConfig(), DistInfo())
    assert first == Path("runs/mixnet_s-digits") and f"**`{first.as_posix()}`**" in readme
    first.mkdir(parents=True)
    assert default_output(TrainConfig(), DistInfo()) == Path("runs/mixnet_s-digits-2")  # never into an old run
    assert default_output(TrainConfig(data="/data/imagenet/", model="my.yaml"), DistInfo()) == Path("runs/my-imagenet")
    assert default_output(TrainConfig(output="elsewhere"), DistInfo()) == Path("elsewhere")


def test_recipes_leave_workers_to_the_machine(monkeypatch):
    from mixconv.training.config import make_config

    for recipe in ("tf-mixnet", "mindcv-mixnet"):
        assert make_config(recipe).workers is None
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert auto_workers(1) == 1 and auto_workers(2) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert auto_workers(1) == 8 and auto_workers(8) == 7


@pytest.mark.parametrize("arch, flags, kind", [
    ("x86_64", {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "x86-amx"),
    ("x86_64", {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "x86-avx512"),  # AMD Zen 4
    ("x86_64", {"avx2"}, "x86-avx2"),
    ("aarch64", {"asimddp", "bf16"}, "arm64"),
])
def test_cpu_kinds(arch, flags, kind):
    assert CpuInfo(arch, "X", False, False, False, frozenset(flags)).kind == kind


def test_doc_blocks_marked_needs_are_skipped_and_shell_blocks_run_as_written():
    assert needs("# needs: a GPU\nimport torch") == "a GPU"
    assert needs("#!/bin/bash\n# needs: a SLURM cluster\n#SBATCH -N 2") == "a SLURM cluster"
    assert needs("import torch  # needs: nothing") is None
    script = shell_script('pip install -e ".[dev]" && mixconv train\npython -m pytest -q\nmixconv info \\\n  --model x')
    assert script.splitlines() == ["mixconv train", "mixconv info    --model x"]


def test_checkable_needs_run_where_the_machine_has_them(monkeypatch):
    import torch

    from mixconv.kernels import capability

    assert unmet("ImageNet at /data/imagenet")  # nothing can check that: skipped
    assert unmet("a CUDA GPU (the Triton kernels)") == (not torch.cuda.is_available())
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    assert unmet("a CPU with int8 dot products (VNNI)")
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    assert not unmet("a CPU with int8 dot products (VNNI)")


def test_the_shell_examples_fail_on_warnings_a_reader_cannot_act_on():
    stderr = "\n".join([
        "epoch 1/20 [10/44] loss=2.3",
        "mixconv export: warning: no --checkpoint given; exporting random weights",  # says what to do: allowed
        "/x/torch/autograd/graph.py:1072: UserWarning: Grad strides do not match bucket view strides.",
        "W1206 13:02:57.459000 32043 torch/distributed/run.py:982] Setting OMP_NUM_THREADS ...",
        "\x1b[0;93m2026-12-06 12:37:14.95 [W:onnxruntime:, graph.cc:5809 CleanUnused...] Removing initializer",
    ])
    assert [line[:12] for line in noise(stderr)] == ["/x/torch/aut", "W1206 13:02:", "2026-12-06 1"]
