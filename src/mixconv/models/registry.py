"""The model registry: names to :class:`ModelDef`, with suggestions for unknown names."""
from __future__ import annotations

import difflib
import fnmatch

from mixconv.models.specs import ModelDef

_REGISTRY: dict[str, ModelDef] = {}


class UnknownModelError(KeyError, ValueError):
    """Raised for a model name that is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(model_def: ModelDef) -> ModelDef:
    """Add a model definition; names are unique."""
    if model_def.name in _REGISTRY:
        raise ValueError(f"model {model_def.name!r} is already registered")
    _REGISTRY[model_def.name] = model_def
    return model_def


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style ``pattern`` (``"mixnet_*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_model_def(name: str) -> ModelDef:
    """Look up a registered model; an unknown name raises :class:`UnknownModelError` with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint} Registered models: {', '.join(sorted(_REGISTRY))}"
        ) from None
