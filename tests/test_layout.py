"""The package's shape: the import contracts hold, no module sits loose at the top, the README is a front door."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mixconv"
# The only modules at the top of the package: the public API and the program's entry points.
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py"}
ROOMS = {"bench", "commands", "convert", "data", "deploy", "factory", "files", "inference", "kernels", "layers", "search", "studies",
         "models", "surgery", "training", "visual", "configs", "recipes"}


def _lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed; it comes with the dev extra (pip install -e '.[dev]')")
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"an import contract is broken:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def test_import_contracts_hold():
    out = _lint_imports()
    kept = re.findall(r"^(.+?) KEPT", out, flags=re.M)
    assert len(kept) == 3, out  # layers, independence, no cycles
    assert "0 broken" in out


def test_no_loose_modules_at_the_top():
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert not loose, f"modules outside a room: {sorted(loose)}; put each in the room of its concern"
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms <= ROOMS, f"new rooms {sorted(rooms - ROOMS)}: add them to the contracts in pyproject.toml too"


def test_every_room_is_in_the_layers_contract():
    text = (REPO / "pyproject.toml").read_text()
    block = text[text.index("[tool.importlinter]"):]
    layers = re.search(r"layers = \[(.*?)\]", block, flags=re.S).group(1)
    named = set(re.findall(r"[a-z_]+", layers))
    code_rooms = ROOMS - {"configs", "recipes"}
    assert code_rooms <= named, f"rooms missing from the layers contract: {sorted(code_rooms - named)}"


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\bissue\s+#?\d+", text, flags=re.I), "users never see issue numbers"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).exists(), f"README links to a missing page: {link}"


def test_every_package_all_resolves():
    """Each room's ``__all__`` names only what the package really provides."""
    import importlib

    for init in sorted(PACKAGE.rglob("__init__.py")):
        name = ".".join(init.relative_to(PACKAGE.parent).parent.parts)
        module = importlib.import_module(name)
        missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
