"""torch.hub entry points: one per registered mixconv model.

    model = torch.hub.load("path/to/mixconv", "mixnet_s", source="local", pretrained="mixnet_s-a907afbc.pth")

``pretrained`` is a local checkpoint path (timm or mixconv); nothing is downloaded. Other keyword arguments go
to :func:`mixconv.create_model` (``num_classes``, ``in_chans``, ``features_only``, ...).
"""
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "yaml", "safetensors"]

_SRC = _Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in _sys.path:  # a plain clone works without installing mixconv
    _sys.path.insert(0, str(_SRC))

import mixconv as _mixconv  # noqa: E402


def _entry(name):
    def entry(pretrained=None, **kwargs):
        if pretrained is True:
            raise ValueError(f"{name}: pretrained must be a local checkpoint path; mixconv never downloads weights")
        return _mixconv.create_model(name, pretrained=pretrained or None, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name} from mixconv ({_mixconv.get_model_def(name).meta.source or 'mixconv'}).\n\n"
                     f"pretrained: a local timm or mixconv checkpoint path; kwargs: as mixconv.create_model.")
    return entry


for _name in _mixconv.list_models():
    globals()[_name] = _entry(_name)
