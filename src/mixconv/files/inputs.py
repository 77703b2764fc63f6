"""Reading the files a user hands to mixconv, with one clear error per damaged file.

Every reader here checks that the path is a readable regular file (or directory) before parsing it, and turns
whatever the parser raises into one :class:`MixconvInputError` (or the subclass the caller names) that says
which file, what was expected and what was found. Nothing here can hang or exhaust memory on a hostile file:
sizes are bounded, FIFOs and devices are refused, YAML aliases may not expand beyond :data:`YAML_MAX_NODES`
nodes and ONNX external data is never followed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Type

import yaml

TEXT_MAX_BYTES = 2**20  # a config or recipe is a few KiB; 1 MiB leaves room and bounds parsing time and memory
YAML_MAX_NODES = 100_000  # nodes after alias expansion; a MixNet config has a few hundred


class MixconvInputError(ValueError):
    """A file or setting given to mixconv that cannot be used; the message names it and says what was expected.

    :class:`~mixconv.files.config.ConfigError` and :class:`~mixconv.files.weights.CheckpointError` are subclasses; images
    and ONNX files raise this class itself. The CLI exits with status 2 on any of them, without a traceback.
    """


ErrorType = Type[MixconvInputError]


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied (no read access)"
    return e.strerror or str(e)


def check_file(path: str | Path, what: str, error: ErrorType = MixconvInputError) -> Path:
    """``path`` as a :class:`Path` after checking it is an existing, readable, non-empty regular file.

    Read access is checked by opening the file (``os.access`` is always true for root).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such file; expected {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read it ({_os_reason(e)}); expected {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a directory; expected {what} (a file)")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a device, FIFO or socket); expected {what}")
    if st.st_size == 0:
        raise error(f"{path}: empty file; expected {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise error(f"{path}: cannot read it ({_os_reason(e)}); expected {what}") from None
    return path


def check_dir(path: str | Path, what: str, error: ErrorType = MixconvInputError) -> Path:
    """``path`` as a :class:`Path` after checking it is an existing directory whose entries can be listed."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such directory; expected {what}")
    if not path.is_dir():
        raise error(f"{path}: not a directory; expected {what}")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as e:
        raise error(f"{path}: cannot list it ({_os_reason(e)}); expected {what}") from None
    return path


def read_bytes(path: str | Path, what: str, error: ErrorType = MixconvInputError,
               max_bytes: int = TEXT_MAX_BYTES) -> bytes:
    """The bytes of a checked file, refusing files larger than ``max_bytes`` (read at most that much)."""
    path = check_file(path, what, error)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read it ({_os_reason(e)}); expected {what}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes:,} bytes; expected {what}")
    return data


def read_text(path: str | Path, what: str, error: ErrorType = MixconvInputError,
              max_bytes: int = TEXT_MAX_BYTES) -> str:
    """A checked file decoded as UTF-8; a decoding error names the file and the byte offset."""
    data = read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{Path(path)}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                    f"expected {what} saved as UTF-8") from None


class _BoundedSafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~8x faster when present
    """The safe loader, refusing documents whose aliases would expand past :data:`YAML_MAX_NODES` nodes: the
    node graph is sized before any Python object is built from it."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, YAML_MAX_NODES)
        return self.construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded_size(root: yaml.Node, limit: int) -> None:
    """Count the nodes of ``root`` as if every alias were copied (iteratively, each node sized once).

    Aliases share node objects, so the count is memoised per node: linear time even for a "billion laughs"
    document, which is refused as soon as its expanded size passes ``limit``. A node reachable from itself
    (a recursive alias) is refused too.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > limit:
                raise yaml.YAMLError(f"the document expands to more than {limit} nodes through aliases "
                                     "(an exponential alias expansion?)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise yaml.YAMLError("a recursive alias (a node that contains itself)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def load_yaml(text: str, source: str, error: ErrorType = MixconvInputError) -> Any:
    """Parse YAML ``text`` (from ``source``) with the safe loader, bounded in alias expansion and depth."""
    try:
        return yaml.load(text, Loader=_BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error(f"{source}: not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise error(f"{source}: the YAML is nested too deeply") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: where and what (PyYAML's own message spans several lines with a source excerpt)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" {e.context}" if e.context else ""
        return f"{where}{e.problem}{context}"
    return " ".join(str(e).split())


def read_yaml(path: str | Path, what: str, error: ErrorType = MixconvInputError) -> Any:
    """A checked UTF-8 YAML file, parsed by :func:`load_yaml`."""
    return load_yaml(read_text(path, what, error), str(path), error)


IMAGE_EXPECTED = "an image file (JPEG, PNG, BMP, WebP, ... readable by Pillow)"


def open_image(path: str | Path, error: ErrorType = MixconvInputError) -> Any:
    """A fully decoded RGB :class:`PIL.Image.Image`; any damage raises ``error`` naming the file."""
    from PIL import Image

    path = check_file(path, IMAGE_EXPECTED, error)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise error(f"{path}: refused: {e}") from None
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise error(f"{path}: not a readable image ({type(e).__name__}: {e}); expected {IMAGE_EXPECTED}") from None


ONNX_EXPECTED = "an ONNX model (.onnx protobuf)"


def load_onnx(path: str | Path, *, check: bool = True, error: ErrorType = MixconvInputError) -> Any:
    """An ``onnx.ModelProto`` read from a checked file, without its external data, checked by ``onnx.checker``
    (which resolves external data inside the file's directory only) when ``check``."""
    import onnx

    path = check_file(path, ONNX_EXPECTED, error)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise error(f"{path}: not a readable ONNX file ({type(e).__name__}: {e}); expected {ONNX_EXPECTED}") from None
    if check:
        try:  # by path: external data (torch's dynamo exporter writes it) is checked next to the file
            onnx.checker.check_model(str(path))
        except Exception as e:  # onnx.checker.ValidationError, or protobuf errors on odd fields
            raise error(f"{path}: not a valid ONNX model ({_first_line(e)}); expected {ONNX_EXPECTED}") from None
    return model


def onnx_session(path: str | Path, error: ErrorType = MixconvInputError, options: Any = None,
                 check: bool = True) -> Any:
    """An onnxruntime CPU ``InferenceSession`` (with ``options``, an ``ort.SessionOptions``) for a file that
    :func:`load_onnx` accepts; ``check=False`` leaves the file to onnxruntime's own checks."""
    import onnxruntime as ort

    if check:
        load_onnx(path, error=error)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors (InvalidProtobuf, Fail, ...)
        raise error(f"{path}: onnxruntime cannot load it ({_first_line(e)}); expected {ONNX_EXPECTED}") from None


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters: a damaged file can hold a huge value; its start says enough."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CheckpointError(MixconvInputError):
    """A checkpoint that cannot be read, is corrupted, or does not fit the model; the message says what is wrong."""
