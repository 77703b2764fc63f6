"""The README's and the docs' examples, run as tests by Sybil (wired in the repository's ``conftest.py``).

Why Sybil: it runs a document's code blocks in order in one namespace, as a reader pasting them into one session
would, it reports each block as a test at its file and line, and it takes a custom evaluator per fence language,
which the shell blocks need (pytest-markdown-docs runs Python only, and each fence on its own by default).

How a document runs:

- in a fresh empty folder (its own per document), so that relative paths mean what they mean to a reader;
- ``python`` blocks execute in the document's namespace; ``bash`` blocks run in ``bash -e`` from that folder,
  with this environment's ``mixconv`` and ``python`` on the PATH;
- a block whose first line (after a shebang) is ``# needs: ...`` runs only where the test machine has what it
  names and can check it (``CHECKABLE_NEEDS``: int8 dot products, a CUDA GPU); otherwise the test is reported
  as skipped with that line as the reason, and the reader sees the same line;
- the files a document reads but does not make itself are made first, the way a reader gets them, with
  mixconv's own functions: ``mixnet_s.pth`` (weights in timm's format: here random ones, a new
  ``mixconv.create_model("mixnet_s")`` saved and converted with ``mixconv.convert_checkpoint``) and ``runs/mixnet_s-digits`` (what the quick
  start's ``mixconv train`` writes: the README runs it as written, once, and the guides get a copy), each only
  where the document names it;
- shell blocks run as written, except that ``pip install`` and ``python -m pytest`` lines are left out (the
  test run is both); blocks too slow for CI say so in their ``# needs:`` line. A block passes when it exits 0
  and prints no warning a reader cannot act on (``NOISE``: Python, torch and onnxruntime warnings; mixconv's
  own ``warning:`` lines say what to do and are allowed).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

REPO = Path(__file__).resolve().parents[1]
NEEDS = re.compile(r"^#\s*needs:\s*(?P<what>.+)$")
QUICK_RUN = "runs/mixnet_s-digits"  # the quick start's output folder
TIMM_WEIGHTS = "mixnet_s.pth"
_cache: dict[str, Path] = {}


def _has_int8_dot() -> bool:
    from mixconv.kernels.capability import has_int8_dot

    return has_int8_dot()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Needs the test machine can check: a block that starts with one of these runs where the machine has it.
CHECKABLE_NEEDS = {"a CPU with int8 dot products": _has_int8_dot, "a CUDA GPU": _has_cuda}


def unmet(reason: str) -> bool:
    """Whether this machine lacks what a ``# needs:`` line asks for (unknown needs count as unmet)."""
    check = next((c for key, c in CHECKABLE_NEEDS.items() if reason.startswith(key)), None)
    return check is None or not check()


def needs(source: str) -> str | None:
    """The ``# needs: ...`` reason of a block, or None when the block runs."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#!")]
    match = NEEDS.match(lines[0].strip()) if lines else None
    return match.group("what").strip() if match else None


def _cached(name: str, make: Any) -> Path:
    """A file or folder made once per test session (in a private temp folder) and copied into documents."""
    if name not in _cache:
        root = Path(tempfile.mkdtemp(prefix="mixconv-docs-cache-"))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            make()
        finally:
            os.chdir(cwd)
        _cache[name] = root / name
    return _cache[name]


def _timm_weights() -> None:
    import mixconv

    # random weights in timm's format: a mixconv checkpoint converted to a timm state dict (.pth)
    mixconv.save_checkpoint(mixconv.create_model("mixnet_s"), "random.safetensors")
    mixconv.convert_checkpoint("random.safetensors", TIMM_WEIGHTS)


def _quick_run() -> None:
    import mixconv

    mixconv.train(output=QUICK_RUN, log_interval=1000)  # the quick start's `mixconv train`


class ExampleDocument(Document):
    """A Markdown document whose examples run in their own empty folder with the files they read."""

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text, path)
        self.namespace["__doc_path__"] = path


def setup(namespace: dict[str, Any]) -> None:
    text = Path(namespace["__doc_path__"]).read_text(encoding="utf-8")
    folder = Path(tempfile.mkdtemp(prefix="mixconv-docs-"))
    namespace["__doc_cwd__"], namespace["__doc_folder__"] = os.getcwd(), folder
    if TIMM_WEIGHTS in text:
        shutil.copy(_cached(TIMM_WEIGHTS, _timm_weights), folder / TIMM_WEIGHTS)
    trains_it = re.search(r"^(pip install .*&& )?mixconv train\s*(#.*)?$", text, re.MULTILINE)
    if QUICK_RUN in text and not trains_it:  # a guide that reads the quick start's run
        shutil.copytree(_cached(QUICK_RUN, _quick_run), folder / QUICK_RUN)
    os.chdir(folder)


def teardown(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["__doc_cwd__"])
    shutil.rmtree(namespace["__doc_folder__"], ignore_errors=True)


def _source_to_run(example: Example) -> str:
    """The block's source; skips the test, with the block's ``# needs:`` line, where this machine lacks it."""
    source = str(example.parsed)
    reason = needs(source)
    if reason and unmet(reason):
        pytest.skip(f"{Path(example.path).relative_to(REPO)}:{example.line} needs {reason}")
    return source


def evaluate_python(example: Example) -> None:
    source = _source_to_run(example)
    code = "\n" * (example.line) + source  # line numbers in tracebacks are the document's
    exec(compile(code, example.path, "exec", dont_inherit=True), example.namespace)


def shell_script(source: str) -> str:
    """The block as run: continuation lines joined, the install and test lines left out."""
    lines, out = source.replace("\\\n", " ").splitlines(), []
    for line in lines:
        cmd = line.strip()
        cmd = re.sub(r"^pip install .*?&&\s*", "", cmd)
        if cmd.startswith(("pip install", "python -m pytest")):
            continue
        out.append(cmd)
    return "\n".join(out)


# Warnings a reader cannot act on: Python warnings (``...: UserWarning: ...``), torch's C++/logging warnings
# (``W1206 12:00:00...``, ``[W...]``) and onnxruntime's (``[W:onnxruntime:...``). mixconv's own ``warning:`` lines
# name what to do and are allowed.
NOISE = re.compile(r"^(?:\S+:\d+: )?\w*Warning: |^W\d{4} \d\d:\d\d|^\[W[: ]|\[W:onnxruntime", re.MULTILINE)


def noise(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are warnings a reader cannot act on (see ``NOISE``)."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", stderr)  # onnxruntime colours its lines
    return [line for line in clean.splitlines() if NOISE.search(line)]


def evaluate_shell(example: Example) -> None:
    source = _source_to_run(example)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    script = shell_script(source)
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, text=True,
                          env=env, timeout=900)
    if QUICK_RUN not in _cache and (Path(QUICK_RUN) / "best.safetensors").is_file():  # the README's quick start
        _cache[QUICK_RUN] = Path(tempfile.mkdtemp(prefix="mixconv-docs-cache-")) / QUICK_RUN
        shutil.copytree(QUICK_RUN, _cache[QUICK_RUN])  # the guides that read its run get a copy
    if proc.returncode != 0:
        raise AssertionError(f"{example.path}:{example.line}: the shell block exited {proc.returncode}\n"
                             f"--- script\n{script}\n--- stdout (tail)\n{proc.stdout[-3000:]}\n"
                             f"--- stderr (tail)\n{textwrap.indent(proc.stderr[-3000:], '  ')}")
    noisy = noise(proc.stderr)
    if noisy:  # the examples are what a newcomer runs first: they must be quiet
        raise AssertionError(f"{example.path}:{example.line}: warnings a reader cannot act on:\n" + "\n".join(noisy))


sybil = Sybil(
    parsers=[CodeBlockParser("python", evaluate_python), CodeBlockParser("bash", evaluate_shell)],
    path=str(REPO),
    patterns=["README.md", "docs/*.md", "docs/guides/*.md"],
    setup=setup,
    teardown=teardown,
    document_types={".md": ExampleDocument},
)
