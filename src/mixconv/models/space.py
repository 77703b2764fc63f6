"""The architecture search space of the MixConv paper (section 4) as typed, immutable data.

A :class:`SearchSpace` is a MobileNetV2-like skeleton: a stem, a fixed sequence of layer slots (output channels
and stride fixed), a head. Every slot offers choices: the number of MixConv groups ``g`` (kernels 3, 5, ...,
``2g + 1``), the expansion ratio, the activation, squeeze-excite on or off, the groups of both 1x1 convs, and,
for a slot that may be dropped (stride 1, same channels), whether it is kept (the per-stage depth).
An :class:`Arch` is one choice per slot; :meth:`SearchSpace.to_spec` turns it into the :class:`MixNetSpec`
that ``create_model``, ``save_config``, ``mixconv info`` and ``mixconv train --model`` take.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Iterator, Optional

from mixconv.layers.activations import canonical_act_name
from mixconv.models.builder import make_divisible, round_channels
from mixconv.models.specs import BlockRow, MixNetSpec

MAX_KERNEL_GROUPS = 5


def kernel_sizes_for(groups: int) -> tuple[int, ...]:
    """The paper's kernel sizes for a MixConv of ``groups`` groups: 3, 5, ..., ``2 * groups + 1``."""
    return tuple(3 + 2 * i for i in range(groups))


def _choices(name: str, values: tuple, allowed: Optional[tuple] = None) -> tuple:
    values = tuple(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name}: expected a non-empty list of distinct choices, got {list(values)!r}")
    if allowed is not None and any(v not in allowed for v in values):
        raise ValueError(f"{name}: every choice must be one of {list(allowed)}, got {list(values)!r}")
    return values


@dataclass(frozen=True)
class LayerChoice:
    """What one slot of an :class:`Arch` chose."""

    kernel_groups: int = 1
    expansion: int = 6
    act: str = "relu"
    se: bool = False
    groups: int = 1  # of the expand and the project 1x1 conv
    keep: bool = True

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        return kernel_sizes_for(self.kernel_groups)

    def describe(self) -> str:
        """A short tag: ``k3.5.7-e6-swish-se-g2`` (``skip`` for a dropped layer)."""
        if not self.keep:
            return "skip"
        k = ".".join(str(x) for x in self.kernel_sizes)
        return f"k{k}-e{self.expansion}-{self.act}{'-se' if self.se else ''}-g{self.groups}"


Arch = tuple[LayerChoice, ...]


@dataclass(frozen=True)
class LayerSlot:
    """One layer position of the skeleton and its choices (defaults: the paper's)."""

    out_channels: int
    stride: int = 1
    kernel_groups: tuple[int, ...] = (1, 2, 3, 4, 5)
    expansions: tuple[int, ...] = (3, 6)
    acts: tuple[str, ...] = ("relu", "swish")
    se: tuple[bool, ...] = (False, True)
    groups: tuple[int, ...] = (1, 2)
    skippable: bool = False  # may be dropped (stride 1 and as many channels in as out)

    def __post_init__(self) -> None:
        if isinstance(self.out_channels, bool) or not isinstance(self.out_channels, int) or self.out_channels < 8:
            raise ValueError(f"out_channels: expected an int >= 8, got {self.out_channels!r}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {self.stride!r}")
        object.__setattr__(self, "kernel_groups", _choices("kernel_groups", self.kernel_groups,
                                                           tuple(range(1, MAX_KERNEL_GROUPS + 1))))
        exp = _choices("expansions", self.expansions)
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in exp):
            raise ValueError(f"expansions: expected positive ints, got {list(exp)!r}")
        object.__setattr__(self, "expansions", exp)
        acts = _choices("acts", tuple(canonical_act_name(a) for a in self.acts), ("relu", "swish"))
        object.__setattr__(self, "acts", acts)
        object.__setattr__(self, "se", _choices("se", self.se, (False, True)))
        object.__setattr__(self, "groups", _choices("groups", self.groups, (1, 2)))

    def options(self) -> dict[str, tuple]:
        """The choices of this slot by :class:`LayerChoice` field (``keep`` only for a skippable slot)."""
        opts = {"kernel_groups": self.kernel_groups, "expansion": self.expansions, "act": self.acts,
                "se": self.se, "groups": self.groups}
        if self.skippable:
            opts["keep"] = (True, False)
        return opts


@dataclass(frozen=True)
class SearchSpace:
    """A whole search space: stem, slots and head, plus the fixed settings of every sampled network.

    ``width_mult`` scales every channel count (the skeleton's and hence every candidate's), as a MixNet's.
    ``se_reduction``: the SE width is the block's input channels divided by it (MixNet: 2).
    """

    layers: tuple[LayerSlot, ...]
    stem_channels: int = 16
    num_features: int = 1536
    width_mult: float = 1.0
    se_reduction: float = 2.0
    drop_rate: float = 0.2
    stem_act: str = "relu"
    name: str = "custom"

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or any(not isinstance(s, LayerSlot) for s in layers):
            raise ValueError("layers: expected a non-empty list of layer slots")
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.width_mult, (int, float)) or self.width_mult <= 0:
            raise ValueError(f"width_mult: expected a positive number, got {self.width_mult!r}")
        if not isinstance(self.se_reduction, (int, float)) or self.se_reduction <= 0:
            raise ValueError(f"se_reduction: expected a positive number, got {self.se_reduction!r}")
        object.__setattr__(self, "stem_act", canonical_act_name(self.stem_act))
        in_ch = self.stem_channels
        for i, slot in enumerate(layers):
            if slot.skippable and (slot.stride != 1 or slot.out_channels != in_ch):
                raise ValueError(f"layers[{i}]: only a stride-1 layer with as many channels in as out may be "
                                 f"skippable (this one: {in_ch} -> {slot.out_channels}, stride {slot.stride})")
            in_ch = slot.out_channels

    # --- channels -------------------------------------------------------------------------------------------
    def in_channels(self) -> list[int]:
        """Every slot's input channels after width scaling."""
        chans = [round_channels(self.stem_channels, self.width_mult)]
        chans += [round_channels(s.out_channels, self.width_mult) for s in self.layers[:-1]]
        return chans

    def out_channels(self, i: int) -> int:
        return round_channels(self.layers[i].out_channels, self.width_mult)

    def mid_channels(self, i: int, expansion: int) -> int:
        """The expanded width of slot ``i`` at ``expansion`` (as :func:`mixconv.models.builder.resolve`)."""
        c = self.in_channels()[i]
        return c if expansion == 1 else make_divisible(c * expansion)

    def se_channels(self, i: int) -> int:
        return max(1, int(round(self.in_channels()[i] / self.se_reduction)))

    # --- architectures --------------------------------------------------------------------------------------
    def check(self, arch: Arch) -> Arch:
        """``arch`` as a tuple, after checking that every choice is one its slot offers."""
        arch = tuple(arch)
        if len(arch) != len(self.layers):
            raise ValueError(f"an architecture of this space has {len(self.layers)} layers, got {len(arch)}")
        for i, (slot, c) in enumerate(zip(self.layers, arch)):
            for name, values in slot.options().items():
                if getattr(c, name) not in values:
                    raise ValueError(f"layers[{i}].{name}: {getattr(c, name)!r} is not a choice of this slot "
                                     f"({list(values)})")
            if not slot.skippable and not c.keep:
                raise ValueError(f"layers[{i}]: this layer cannot be skipped")
        return arch

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture (each slot's choices drawn independently)."""
        return tuple(
            LayerChoice(**{name: rng.choice(values) for name, values in slot.options().items()})
            for slot in self.layers
        )

    def largest(self) -> Arch:
        """Every slot at its most expensive choice (the supernet's widest path)."""
        return tuple(LayerChoice(max(s.kernel_groups), max(s.expansions), s.acts[-1], max(s.se), min(s.groups))
                     for s in self.layers)

    def slot_choices(self, i: int) -> Iterator[LayerChoice]:
        """Every choice of slot ``i`` (the latency table measures each once per distinct slot shape)."""
        opts = self.layers[i].options()
        for values in itertools.product(*opts.values()):
            yield LayerChoice(**dict(zip(opts.keys(), values)))

    def size(self) -> int:
        """The number of architectures in the space."""
        n = 1
        for slot in self.layers:
            for values in slot.options().values():
                n *= len(values)
        return n

    def to_spec(self, arch: Arch) -> MixNetSpec:
        """The :class:`MixNetSpec` of ``arch``: one block row per kept slot, a new stage at each stride 2."""
        arch = self.check(arch)
        stages: list[list[BlockRow]] = []
        for slot, c in zip(self.layers, arch):
            if not c.keep:
                continue
            expand_groups = 1 if c.expansion == 1 else c.groups
            row = BlockRow(kernel_sizes=c.kernel_sizes, out_channels=slot.out_channels, stride=slot.stride,
                           expansion=c.expansion, exp_groups=expand_groups, poi_groups=c.groups,
                           se_reduction=self.se_reduction if c.se else None, act=c.act)
            if not stages or slot.stride > 1:
                stages.append([])
            stages[-1].append(row)
        return MixNetSpec(stem_channels=self.stem_channels, stages=tuple(tuple(s) for s in stages),
                          width_mult=self.width_mult, num_features=self.num_features, drop_rate=self.drop_rate,
                          stem_act=self.stem_act)


def _slot(c: int, s: int = 1, skippable: bool = False, **choices) -> LayerSlot:
    return LayerSlot(out_channels=c, stride=s, skippable=skippable, **choices)


# The paper's space on MixNet-S's skeleton (Figure 5(a): 16 layers, channels and strides as MixNet-S); the first
# layer keeps MixNet's expansion 1 (a depthwise-separable block on the stem). Every repeat after a stage's first
# layer may be skipped.
MIXNET_S_SLOTS = (
    _slot(16, expansions=(1,)),
    _slot(24, 2), _slot(24),
    _slot(40, 2), _slot(40, skippable=True), _slot(40, skippable=True), _slot(40, skippable=True),
    _slot(80, 2), _slot(80, skippable=True), _slot(80, skippable=True),
    _slot(120), _slot(120, skippable=True), _slot(120, skippable=True),
    _slot(200, 2), _slot(200, skippable=True), _slot(200, skippable=True),
)


def mixnet_s_choices() -> Arch:
    """MixNet-S itself as an architecture of :data:`MIXNET_S_SLOTS` (the paper's searched result)."""
    def c(g: int, e: int, act: str = "swish", se: bool = True, groups: int = 1) -> LayerChoice:
        return LayerChoice(g, e, act, se, groups)

    return (
        c(1, 1, "relu", False), c(1, 6, "relu", False, 2), c(1, 3, "relu", False, 2),
        c(3, 6), c(2, 6, groups=2), c(2, 6, groups=2), c(2, 6, groups=2),
        c(3, 6), c(2, 6), c(2, 6),
        c(3, 6, groups=2), c(4, 3, groups=2), c(4, 3, groups=2),
        c(5, 6), c(4, 6), c(4, 6),
    )


PRESETS: dict[str, SearchSpace] = {
    # The paper's choices on MixNet-S's skeleton at full width.
    "mixnet-s": SearchSpace(layers=MIXNET_S_SLOTS, name="mixnet-s"),
    # The same at half width and a narrower head: the CPU-sized preset the benchmark searches.
    "small": SearchSpace(layers=MIXNET_S_SLOTS, width_mult=0.5, num_features=512, name="small"),
    # Two layers and few choices: the tests' space.
    "tiny": SearchSpace(
        layers=(_slot(16, expansions=(1,), kernel_groups=(1, 2), se=(False,), groups=(1,)),
                _slot(24, 2, kernel_groups=(1, 2, 3), expansions=(3, 6)),
                _slot(24, skippable=True, kernel_groups=(1, 3), expansions=(3,), acts=("relu",), groups=(1, 2))),
        stem_channels=16, num_features=64, name="tiny"),
}
