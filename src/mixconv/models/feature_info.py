"""Feature maps a model offers: timm's ``FeatureInfo`` semantics, and the index rule of ``forward_intermediates``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Mapping, Optional, Union

Indices = Optional[Union[int, Sequence[int]]]


def take_indices(num_stages: int, indices: Indices) -> tuple[list[int], int]:
    """The absolute stage indices ``indices`` names, and the largest.

    ``None``: every stage; an int ``n``: the last ``n`` stages; a sequence: those stages, negative ones counted
    from the end (timm's ``feature_take_indices``). Out-of-range values raise ``ValueError`` naming the range.
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, bool):
        raise ValueError(f"indices must be an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices} asks for the last {indices} stages; the model has {num_stages} "
                             f"(an int must be in 1..{num_stages}, or give a list of stage indices)")
        return list(range(num_stages - indices, num_stages)), num_stages - 1
    taken: list[int] = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -num_stages <= i < num_stages:
            raise ValueError(f"stage index {i!r} is out of range: the model has {num_stages} feature stages "
                             f"(indices 0..{num_stages - 1}, or -{num_stages}..-1 from the end)")
        taken.append(i % num_stages)
    if not taken:
        raise ValueError("indices is empty; give at least one stage index")
    return taken, max(taken)


def select_out_indices(num_stages: int, out_indices: Indices) -> tuple[int, ...]:
    """The sorted absolute stages a features model returns for ``out_indices`` (``None``: all; negative from
    the end; an int ``n``: the last ``n``); errors name ``out_indices``."""
    if out_indices is not None and not isinstance(out_indices, int) and not list(out_indices):
        raise ValueError(f"out_indices is empty; give stage indices in [0, {num_stages - 1}] (or negative)")
    try:
        taken = take_indices(num_stages, out_indices if out_indices is None or isinstance(out_indices, int)
                             else list(out_indices))[0]
    except ValueError as e:
        raise ValueError(f"out_indices: {e}") from None
    return tuple(sorted(set(taken)))


class FeatureInfo(Sequence):
    """The feature maps of a model: one dict per stage (``num_chs``, ``reduction``, ``module``, ``index``).

    Indexing and ``len`` cover every stage (as a list of dicts, timm's classifier ``feature_info``);
    ``channels()``, ``reduction()``, ``module_name()`` and ``get_dicts()`` without ``idx`` answer for the
    ``out_indices`` a features model returns (all stages on a classifier), as timm's ``FeatureInfo``.
    """

    def __init__(self, info: Sequence[Mapping[str, Any]], out_indices: Indices = None) -> None:
        dicts = [dict(d, index=d.get("index", i)) for i, d in enumerate(info)]
        for i, d in enumerate(dicts):
            for key in ("num_chs", "reduction", "module"):
                if key not in d:
                    raise ValueError(f"feature info entry {i} has no {key!r}: {d}")
        self.info = dicts
        self.out_indices = tuple(take_indices(len(dicts), out_indices)[0])

    def from_other(self, out_indices: Indices) -> "FeatureInfo":
        """The same stages with other ``out_indices``."""
        return FeatureInfo(self.info, out_indices)

    def __getitem__(self, i):  # type: ignore[override]
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info!r}, out_indices={self.out_indices})"

    def _at(self, idx: Optional[Union[int, Sequence[int]]]) -> Union[list[int], int]:
        return list(self.out_indices) if idx is None else (list(idx) if isinstance(idx, Sequence) else idx)

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """``key`` of each output stage (``idx=None``), of stage ``idx`` (an int), or of the stages ``idx`` lists."""
        at = self._at(idx)
        return [self.info[i][key] for i in at] if isinstance(at, list) else self.info[at][key]

    def get_dicts(self, keys: Optional[Sequence[str]] = None,
                  idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """The info dicts (only ``keys`` when given) of the output stages, or of ``idx``."""
        def pick(i: int) -> dict[str, Any]:
            return dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}
        at = self._at(idx)
        return [pick(i) for i in at] if isinstance(at, list) else pick(at)

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("module", idx)
