"""Damaged inputs: every file mixconv reads fails with one clear error naming it, quickly, at every entry point.

Damage is generated with hypothesis (truncation points, random bytes, bit flips, invalid UTF-8 bytes) and
completed by fixed cases: an empty file, a directory where a file is expected, a file without read permission,
a FIFO, and YAML that expands exponentially through aliases. Each entry point is driven through the Python API
and through the CLI (``mixconv.cli.main``: exit status 1 or 2, one ``error:`` line naming the file, no traceback).

Tests run as root in CI, where ``chmod 000`` does not deny reading: there a monkeypatched ``open`` raising
``PermissionError`` simulates the unreadable file (as a non-root user the real ``chmod 000`` is used).
"""
from __future__ import annotations

import builtins
import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file
from training_fixtures import TINY_YAML, run_cli

import mixconv
from mixconv.data.datasets import build_dataset, eval_transform
from mixconv.files.config import ConfigError, load_config
from mixconv.files.inputs import (
    CheckpointError,
    MixconvInputError,
    load_onnx,
    load_yaml,
    open_image,
    read_text,
)
from mixconv.files.weights import read_checkpoint, save_checkpoint
from mixconv.models.pretrained_cfg import Preprocess
from mixconv.training.config import TrainConfig, load_recipe
from mixconv.training.state import load_state, save_state

# Few, reproducible examples per property: the suite runs on 2 shared cores.
DAMAGE = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))  # 10**9 leaves


@pytest.fixture(autouse=True)
def _no_hang():
    """Quick failure is the property: a reader that hangs fails the test instead of the suite's time limit."""
    def hung(signum, frame):
        raise TimeoutError("a damaged input made the reader hang")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(240)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _tiny_model(tmp: Path) -> torch.nn.Module:
    (tmp / "tiny.yaml").write_text(TINY_YAML)
    torch.manual_seed(0)
    return mixconv.create_model(load_config(tmp / "tiny.yaml"), num_classes=3)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """One valid file of every kind mixconv reads."""
    tmp = tmp_path_factory.mktemp("good")
    model = _tiny_model(tmp)
    pre = Preprocess(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    files = {"config": tmp / "tiny.yaml", "recipe": tmp / "recipe.yaml", "pth": tmp / "w.pth",
             "safetensors": tmp / "ckpt.safetensors", "state": tmp / "run" / "last.state.pt",
             "onnx": _tiny_onnx(tmp / "tiny.onnx"), "image": tmp / "img.png"}
    files["recipe"].write_text("epochs: 1\nbatch_size: 8\nlr: 0.01\nopt: adamw\nimg_size: 32\n")
    torch.save(model.state_dict(), files["pth"])
    save_checkpoint(model, files["safetensors"], extra={"classes": ["a", "b", "c"], "preprocess": pre.to_dict()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_state(files["state"], {"epoch": 1, "best_top1": 50.0, "best_epoch": 1, "history": [{"epoch": 1}],
                                "model": model.state_dict(), "ema": None, "optimizer": opt.state_dict(),
                                "scheduler": {}, "scaler": None, "rng": {"torch": torch.get_rng_state()}})
    # the run's settings (for `train --resume`): data that does not exist, so a state that survives the damage
    # stops at the data check instead of training
    cfg = TrainConfig(data=str(tmp / "no-data"), output=str(tmp / "run"), epochs=1)
    (tmp / "run" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(files["image"])
    return files


# Python API readers: kind -> (read(path), the error type it must raise)
API: dict[str, tuple[Callable[[Path], object], type]] = {
    "config": (load_config, ConfigError),
    "recipe": (lambda p: load_recipe(str(p)), ConfigError),
    "pth": (lambda p: mixconv.create_model(p.parent / "tiny.yaml", num_classes=3, pretrained=p), CheckpointError),
    "safetensors": (read_checkpoint, CheckpointError),
    "state": (load_state, CheckpointError),
    "onnx": (load_onnx, MixconvInputError),
    "image": (open_image, MixconvInputError),
}


def _cli_args(kind: str, path: Path, good: dict[str, Path], out: Path) -> list[str]:
    """The CLI entry point that reads a file of ``kind``."""
    return {
        "config": ["info", "--model", str(path)],
        "recipe": ["train", "--config", str(path), "--data", str(out / "no-data")],  # never starts training
        "pth": ["convert", str(path), str(out / "out.safetensors"), "--model", str(good["config"])],
        "safetensors": ["validate", "--checkpoint", str(path), "--data", str(out / "no-data")],
        "state": ["train", "--resume", str(path.parent)],
        "onnx": ["verify", str(path)],
        "image": ["predict", str(path), "--checkpoint", str(good["safetensors"])],
    }[kind]


def _damaged_copy(good: dict[str, Path], kind: str, data: bytes, tmp: Path) -> Path:
    """``data`` written where a file of ``kind`` is read (next to its companions: tiny.yaml, config.yaml)."""
    src = good[kind]
    if kind == "state":  # --resume reads the directory's config.yaml and last.state.pt
        (tmp / "run").mkdir(exist_ok=True)
        (tmp / "run" / "config.yaml").write_bytes((src.parent / "config.yaml").read_bytes())
        path = tmp / "run" / src.name
    else:
        path = tmp / src.name
    (tmp / "tiny.yaml").write_text(TINY_YAML)
    path.write_bytes(data)
    return path


def _check_api(kind: str, path: Path) -> None:
    read, error = API[kind]
    try:
        read(path)
    except error as e:
        assert str(path) in str(e) and "\n" not in str(e).strip(), str(e)


def _check_cli(kind: str, path: Path, good: dict[str, Path], out: Path) -> None:
    r = run_cli(*_cli_args(kind, path, good, out))
    assert "Traceback" not in r.stderr
    if r.returncode == 0:  # the damage left a valid file (e.g. a flipped weight without a recorded hash)
        return
    assert r.returncode in (1, 2), r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line or "unreadable" in line]
    assert errors, r.stderr
    if "no-data" not in r.stderr:  # a file that survived the damage stops at the missing data (never trains)
        assert any(str(path) in line or path.name in line for line in errors), r.stderr


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for i, bit in flips:
        b[i % len(b)] ^= 1 << bit
    return bytes(b)


KINDS = list(API)
damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("random"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 7)), min_size=1, max_size=4)),
)


def _apply(data: bytes, d: tuple) -> bytes:
    how, arg = d
    if how == "truncate":
        return data[: int(arg * len(data))]
    return arg if how == "random" else _flip(data, arg)


@pytest.mark.parametrize("kind", KINDS)
@DAMAGE
@given(d=damage)
def test_api_damage(kind, d, good, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"api-{kind}")
    _check_api(kind, _damaged_copy(good, kind, _apply(good[kind].read_bytes(), d), tmp))


@pytest.mark.parametrize("kind", KINDS)
@settings(DAMAGE, max_examples=5)
@given(d=damage)
def test_cli_damage(kind, d, good, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"cli-{kind}")
    _check_cli(kind, _damaged_copy(good, kind, _apply(good[kind].read_bytes(), d), tmp), good, tmp)


@pytest.mark.parametrize("kind", ["config", "recipe"])
@DAMAGE
@given(pos=st.floats(0, 1), bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80abc"]))
def test_non_utf8_text(kind, pos, bad, good, tmp_path_factory):
    data = good[kind].read_bytes()
    i = int(pos * len(data))
    path = _damaged_copy(good, kind, data[:i] + bad + data[i:], tmp_path_factory.mktemp("utf8"))
    read, error = API[kind]
    with pytest.raises(error, match=f"{path.name}: not UTF-8 text .*offset {i}"):
        read(path)
    r = run_cli(*_cli_args(kind, path, good, path.parent))
    assert r.returncode == 2 and "not UTF-8 text" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def deny_read(monkeypatch):
    """Make a path unreadable: ``chmod 000`` as a normal user; as root (which ignores modes) ``open`` fails."""
    def deny(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0)
            return
        real_open = builtins.open

        def guarded(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded)

    return deny


FIXED = ["empty", "directory", "no-permission", "fifo", "missing"]


@pytest.mark.parametrize("how", FIXED)
@pytest.mark.parametrize("kind", KINDS)
def test_fixed_damage(kind, how, good, tmp_path, deny_read):
    path = _damaged_copy(good, kind, good[kind].read_bytes(), tmp_path)
    if how in ("directory", "fifo", "missing"):
        path.unlink()
        {"directory": path.mkdir, "fifo": lambda: os.mkfifo(path), "missing": lambda: None}[how]()
    elif how == "empty":
        path.write_bytes(b"")
    else:
        deny_read(path)
    # A checkpoint may be a folder in timm's hub layout: an empty folder is "not a hub folder".
    expected = {"empty": "empty file", "directory": "is a directory|not a hub folder", "missing": "no such (recipe )?file",
                "no-permission": "permission denied", "fifo": "not a regular file"}[how]
    read, error = API[kind]
    with pytest.raises(error, match=expected) as info:
        read(path)
    assert str(path) in str(info.value)
    if how == "fifo":
        assert stat.S_ISFIFO(path.stat().st_mode)  # refused without opening it (opening a FIFO blocks)
    r = run_cli(*_cli_args(kind, path, good, tmp_path))
    assert r.returncode in (1, 2) and path.name in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("doc, expected", [
    (BILLION_LAUGHS, "expands to more than"),
    ("a: &a [1, *a]\n", "recursive alias"),
    ("[" * 1500 + "]" * 1500, "nested too deeply|not valid YAML"),
])
def test_yaml_bombs_are_refused(doc, expected, good, tmp_path):
    for kind in ("config", "recipe"):
        path = _damaged_copy(good, kind, doc.encode(), tmp_path)
        with pytest.raises(ConfigError, match=expected):
            API[kind][0](path)
        r = run_cli(*_cli_args(kind, path, good, tmp_path))
        assert r.returncode == 2 and ("not valid YAML" in r.stderr or expected.split("|")[0] in r.stderr), r.stderr
    # the architecture YAML in a checkpoint header, and the run's config.yaml read by --resume
    tensors = {k: v.contiguous() for k, v in torch.load(good["pth"], weights_only=True).items()}
    ckpt = tmp_path / "bomb.safetensors"
    save_file(tensors, ckpt, metadata={"format": "mixconv/1", "config": doc})
    with pytest.raises(CheckpointError, match=expected):
        mixconv.model_from_checkpoint(ckpt)
    state = _damaged_copy(good, "state", good["state"].read_bytes(), tmp_path)
    (state.parent / "config.yaml").write_text(doc)
    r = run_cli("train", "--resume", str(state.parent))
    assert r.returncode == 2 and "config.yaml" in r.stderr


def test_yaml_aliases_within_bounds_still_load():
    doc = "base: &b {stem_channels: 16}\nparams: *b\nother: *b\n"
    assert load_yaml(doc, "x") == {"base": {"stem_channels": 16}, "params": {"stem_channels": 16},
                                   "other": {"stem_channels": 16}}


def _huge_claims(tmp: Path) -> list[Path]:
    """Small files whose content claims a huge allocation: a .pth storage of 2**31 elements and a
    .safetensors header describing a 40 GB tensor."""
    import re
    import zipfile

    src = tmp / "small.pth"
    torch.save({"a": torch.zeros(100)}, src)
    pth = tmp / "huge.pth"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(pth, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            if name.endswith("data.pkl"):
                data, n = re.subn(rb"(X\x03\x00\x00\x00cpuq.)Kdt", b"\\1J\xff\xff\xff\x7ft", data, flags=re.S)
                assert n == 1
            out.writestr(name, data)
    header = b'{"a": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40000000000]}}'
    st_file = tmp / "huge.safetensors"
    st_file.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    return [pth, st_file]


def test_bombs_fail_fast_within_a_memory_limit(good, tmp_path):
    """In a child process limited to its current address space + 512 MiB, every reader refuses the YAML bomb
    and the files that claim huge tensors, without trying to allocate them."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    huge = [str(p) for p in _huge_claims(tmp_path)]
    code = f"""
import resource
import mixconv
from mixconv.training.config import load_recipe
from mixconv.files.weights import read_checkpoint
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, vm + 512 * 2**20))
for read, path in [(mixconv.load_config, {str(bomb)!r}), (load_recipe, {str(bomb)!r})] + [
        (read_checkpoint, p) for p in {huge!r}]:
    try:
        read(path)
    except (mixconv.ConfigError, mixconv.CheckpointError) as e:
        print('refused:', e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("refused:") == 4 and r.stdout.count("expands to more than") == 2, r.stdout
    assert "huge.pth: damaged" in r.stdout and "huge.safetensors: not a readable safetensors file" in r.stdout


def test_read_text_bounds_the_size(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(MixconvInputError, match="larger than"):
        read_text(big, "a config", max_bytes=1024)


def _image_folder(root: Path, good_png: bytes, damaged: list[bytes]) -> Path:
    """``root/a/ok.png`` and the ``damaged`` images in ``root/b/``."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    (root / "a" / "ok.png").write_bytes(good_png)
    for i, data in enumerate(damaged):
        (root / "b" / f"bad{i}.png").write_bytes(data)
    return root


@settings(DAMAGE, max_examples=6)
@given(ds=st.lists(damage, min_size=1, max_size=3))
def test_image_folder_with_damaged_images(ds, good, tmp_path_factory):
    """Damaged images are skipped with a warning naming each; a folder of only damaged images is an error."""
    png = good["image"].read_bytes()
    tmp = tmp_path_factory.mktemp("folder")
    root = _image_folder(tmp / "mixed", png, [_apply(png, d) for d in ds])
    pre = Preprocess(32, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3)
    dataset = build_dataset(str(root), "val", eval_transform(pre))
    items = [dataset[i] for i in range(len(dataset))]
    assert items[0] is not None  # a/ok.png
    bad_only = tmp / "bad"
    bad_only.mkdir()
    (root / "b").rename(bad_only / "b")
    r = run_cli("validate", "--checkpoint", str(good["safetensors"]), "--data", str(bad_only))
    assert "Traceback" not in r.stderr
    skipped = [line for line in r.stderr.splitlines() if "skipping unreadable image" in line]
    assert len(skipped) == sum(x is None for x in items[1:])
    assert all("bad" in line and ".png" in line for line in skipped)
    if len(skipped) == len(items) - 1:  # every image of b/ is damaged
        assert r.returncode == 2 and "none of its" in r.stderr
    else:
        assert r.returncode == 0, r.stderr


def _deny_scandir(monkeypatch, root: Path) -> None:
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("how", ["file", "missing", "empty", "no-classes", "no-permission"])
def test_damaged_image_folder_roots(how, good, tmp_path, monkeypatch):
    root = tmp_path / "data"
    if how == "file":
        root.write_bytes(b"x")
    elif how == "empty":
        root.mkdir()
    elif how == "no-classes":
        root.mkdir()
        (root / "a").mkdir()
        (root / "a" / "notes.txt").write_text("no images")
    elif how == "no-permission":
        _image_folder(root, good["image"].read_bytes(), [])
        _deny_scandir(monkeypatch, root)
    pre = Preprocess(32, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError) as info:
        build_dataset(str(root), "val", eval_transform(pre))
    assert str(root) in str(info.value)
    r = run_cli("validate", "--checkpoint", str(good["safetensors"]), "--data", str(root))
    assert r.returncode == 2 and str(root) in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--data", str(root), "--epochs", "1")
    assert r.returncode == 2 and str(root) in r.stderr and "Traceback" not in r.stderr


def test_export_verification_names_a_damaged_onnx_file(good, tmp_path, monkeypatch):
    """The exported file is read back from disk: damage there (here: truncated after writing) is named, by the
    output's name, and nothing is left at the output."""
    import mixconv.deploy.export as export

    real = export.onnx_session

    def truncate_then_open(path, *args, **kwargs):
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(export, "onnx_session", truncate_then_open)
    model = _tiny_model(tmp_path)
    out = tmp_path / "m.onnx"
    with pytest.raises(MixconvInputError, match=r"[/\\]m\.onnx: not a readable ONNX file"):
        export.export_onnx(model, out, img_size=32, exporter="torchscript")
    assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))
    with pytest.raises(MixconvInputError, match="m.onnx"):
        export.onnx_op_counts(out)


@pytest.mark.parametrize("kind, args", [
    ("config", ["train", "--model", "{path}", "--data", "{tmp}/no-data"]),
    ("config", ["export", "--model", "{path}", "--format", "onnx", "--output", "{tmp}/m.onnx"]),
    ("config", ["benchmark", "--model", "{path}", "--rounds", "1"]),
    ("safetensors", ["export", "--checkpoint", "{path}", "--format", "onnx", "--output", "{tmp}/m.onnx"]),
    ("safetensors", ["predict", "{image}", "--checkpoint", "{path}"]),
    ("safetensors", ["convert", "{path}", "{tmp}/out.pth"]),
    ("safetensors", ["verify", "{path}"]),
    ("pth", ["train", "--pretrained", "{path}", "--model", "{config}", "--data", "digits", "--epochs", "1"]),
    ("pth", ["validate", "--checkpoint", "{path}", "--model", "{config}", "--data", "digits"]),
    ("state", ["verify", "{path}"]),
])
@pytest.mark.parametrize("how", ["truncated", "not-utf8-or-random"])
def test_every_cli_entry_point_names_the_damaged_file(kind, args, how, good, tmp_path):
    data = good[kind].read_bytes()
    data = data[: len(data) // 2] if how == "truncated" else b"\xff\xfe" + bytes(range(256)) * 4
    path = _damaged_copy(good, kind, data, tmp_path)
    fill = {"path": str(path), "tmp": str(tmp_path), "image": str(good["image"]), "config": str(good["config"])}
    r = run_cli(*[a.format(**fill) for a in args])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if "error:" in line]
    assert line.startswith(f"mixconv {args[0]}: error: {path}")


@pytest.mark.parametrize("text, expected", [
    ("epochs: [1\n", "not valid YAML"), ("- a list\n", "expected a mapping"), ("epochs: 0\n", "epochs: got 0"),
    ("epochs: 'ten'\n", "epochs: got 'ten'"), ("no_such_setting: 1\n", "unknown setting"),
])
def test_damaged_run_settings_on_resume(text, expected, good, tmp_path):
    state = _damaged_copy(good, "state", good["state"].read_bytes(), tmp_path)
    (state.parent / "config.yaml").write_text(text)
    r = run_cli("train", "--resume", str(state.parent))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"mixconv train: error: {state.parent / 'config.yaml'}" in r.stderr and expected in r.stderr, r.stderr
