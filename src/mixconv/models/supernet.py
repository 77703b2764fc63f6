"""A weight-sharing supernet over a :class:`~mixconv.models.space.SearchSpace` (single-path one-shot NAS).

Every slot holds one set of weights for all its choices:

- **kernels**: one depthwise kernel per channel at the largest size; a MixConv with ``g`` groups gives group
  ``j`` (kernel ``3 + 2j``) the centre crop of its channels' kernels, as Single-Path NAS's superkernel and
  Once-for-All's elastic kernel do;
- **expansion**: the first ``mid`` channels of the expand conv, the depthwise conv, their BatchNorms and SE;
- **1x1 groups**: a grouped conv takes the diagonal blocks of the dense weight;
- **SE, activation, keeping the layer**: switches.

In training mode each forward samples one path uniformly (SPOS, Guo et al. 2020) from a generator seeded by
``(path_seed, step)``: every rank of a DDP job takes the same path, and a resumed run replays the same paths
(the step is a buffer, saved with the weights). In eval mode the forward runs :attr:`Supernet.active` (default:
the largest path). :meth:`Supernet.subnet` returns the standalone :class:`~mixconv.models.mixnet.MixNet` of an
architecture with these weights copied in: it computes the same function as the supernet's path.
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mixconv.layers import ConvNormAct, create_conv2d
from mixconv.layers.mixed_conv import split_channels
from mixconv.models.mixnet import MixNet, MixNetBlock, init_weights
from mixconv.models.space import Arch, LayerChoice, SearchSpace


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``(out, in / groups, 1, 1)`` weight of a grouped 1x1 conv taken from a dense ``(out, in, 1, 1)`` one:
    group ``i`` is the ``i``-th diagonal block."""
    if groups == 1:
        return weight
    o, c = weight.shape[0] // groups, weight.shape[1] // groups
    return torch.cat([weight[i * o:(i + 1) * o, i * c:(i + 1) * c] for i in range(groups)], 0)


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    return F.silu(x) if act == "swish" else F.relu(x)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, n: int) -> torch.Tensor:
    """``bn`` on the first ``n`` channels (its running statistics are updated in place in training mode)."""
    assert bn.running_mean is not None and bn.running_var is not None
    use_batch = bn.training or not bn.track_running_stats
    momentum = bn.momentum
    if bn.training:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative average, as nn.BatchNorm2d
            momentum = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(x, bn.running_mean[:n], bn.running_var[:n], bn.weight[:n], bn.bias[:n], use_batch,
                        momentum if momentum is not None else 0.0, bn.eps)


class SuperBlock(nn.Module):
    """All choices of one slot: expand, superkernel depthwise conv, SE and project, each at its widest."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, max_mid: int, max_kernel: int, se_ch: Optional[int],
                 bn_eps: float) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.stride, self.max_kernel = in_ch, out_ch, stride, max_kernel
        self.has_expand = max_mid != in_ch
        self.expand = nn.Conv2d(in_ch, max_mid, 1, bias=False) if self.has_expand else None
        self.expand_bn = nn.BatchNorm2d(max_mid, eps=bn_eps) if self.has_expand else None
        self.dw = nn.Conv2d(max_mid, max_mid, max_kernel, stride, max_kernel // 2, groups=max_mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(max_mid, eps=bn_eps)
        self.se_reduce = nn.Conv2d(max_mid, se_ch, 1) if se_ch else None
        self.se_expand = nn.Conv2d(se_ch, max_mid, 1) if se_ch else None
        self.project = nn.Conv2d(max_mid, out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def dw_kernels(self, mid: int, kernel_groups: int) -> tuple[torch.Tensor, ...]:
        """Each MixConv group's kernel: the centre crop of its channels' superkernels."""
        c = self.max_kernel // 2
        out = []
        start = 0
        for j, size in enumerate(split_channels(mid, kernel_groups)):
            r = 1 + j  # kernel 3 + 2j
            out.append(self.dw.weight[start:start + size, :, c - r:c + r + 1, c - r:c + r + 1])
            start += size
        return tuple(out)

    def _dw_weight(self, mid: int, kernel_groups: int) -> torch.Tensor:
        """One depthwise kernel of size ``2 * kernel_groups + 1`` equal to the MixConv: each group's centre crop
        zero-padded (a cached mask times the crop)."""
        k = 2 * kernel_groups + 1
        c, r = self.max_kernel // 2, kernel_groups
        key = (mid, kernel_groups)
        mask = self._masks.get(key)
        if mask is None or mask.device != self.dw.weight.device:
            mask = torch.zeros(mid, 1, k, k, device=self.dw.weight.device, dtype=self.dw.weight.dtype)
            start = 0
            for j, size in enumerate(split_channels(mid, kernel_groups)):
                pad = kernel_groups - 1 - j
                mask[start:start + size, :, pad:k - pad, pad:k - pad] = 1
                start += size
            self._masks[key] = mask
        return self.dw.weight[:mid, :, c - r:c + r + 1, c - r:c + r + 1] * mask.to(self.dw.weight.dtype)

    def forward(self, x: torch.Tensor, choice: LayerChoice, mid: int) -> torch.Tensor:
        if not choice.keep:
            return x
        shortcut = x
        if self.has_expand and mid != self.in_ch:
            assert self.expand is not None and self.expand_bn is not None
            w = _grouped(self.expand.weight[:mid], choice.groups)
            x = _act(_bn(F.conv2d(x, w, groups=choice.groups), self.expand_bn, mid), choice.act)
        k = 2 * choice.kernel_groups + 1
        x = F.conv2d(x, self._dw_weight(mid, choice.kernel_groups), None, self.stride, k // 2, 1, mid)
        x = _act(_bn(x, self.dw_bn, mid), choice.act)
        if choice.se:
            assert self.se_reduce is not None and self.se_expand is not None
            s = x.mean((2, 3), keepdim=True)
            s = _act(F.conv2d(s, self.se_reduce.weight[:, :mid], self.se_reduce.bias), choice.act)
            s = F.conv2d(s, self.se_expand.weight[:mid], self.se_expand.bias[:mid])
            x = x * torch.sigmoid(s)
        x = F.conv2d(x, _grouped(self.project.weight[:, :mid], choice.groups), groups=choice.groups)
        x = _bn(x, self.project_bn, self.out_ch)
        if self.stride == 1 and self.in_ch == self.out_ch:
            x = x + shortcut
        return x

    @torch.no_grad()
    def copy_to(self, block: MixNetBlock, choice: LayerChoice, mid: int) -> None:
        """Copy this slot's weights for ``choice`` into a standalone block built from its spec."""
        def bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, n: int) -> None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, name).copy_(getattr(src, name)[:n])
            dst.num_batches_tracked.copy_(src.num_batches_tracked)

        if isinstance(block.expand, ConvNormAct):
            assert self.expand is not None and self.expand_bn is not None
            block.expand.conv.weight.copy_(_grouped(self.expand.weight[:mid], choice.groups))
            bn(block.expand.bn, self.expand_bn, mid)
        for conv, kernel in zip(block.dw.conv.convs, self.dw_kernels(mid, choice.kernel_groups)):
            conv.weight.copy_(kernel)
        bn(block.dw.bn, self.dw_bn, mid)
        if choice.se:
            assert self.se_reduce is not None and self.se_expand is not None
            block.se.conv_reduce.weight.copy_(self.se_reduce.weight[:, :mid])
            block.se.conv_reduce.bias.copy_(self.se_reduce.bias)
            block.se.conv_expand.weight.copy_(self.se_expand.weight[:mid])
            block.se.conv_expand.bias.copy_(self.se_expand.bias[:mid])
        block.project.conv.weight.copy_(_grouped(self.project.weight[:, :mid], choice.groups))
        bn(block.project.bn, self.project_bn, self.out_ch)


class Supernet(nn.Module):
    """The weight-sharing network of ``space`` (see the module docstring); a classifier like MixNet."""

    samples_paths = True  # DDP must expect parameters a step's path leaves unused

    def __init__(self, space: SearchSpace, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: Optional[float] = None, path_seed: int = 0) -> None:
        super().__init__()
        self.space = space
        self.in_chans = in_chans
        self.path_seed = path_seed
        self.active: Optional[Arch] = None
        self.drop_rate = float(space.drop_rate if drop_rate is None else drop_rate)
        in_chs = space.in_channels()
        eps = 1e-5
        self.stem = ConvNormAct(create_conv2d(in_chans, in_chs[0], 3, stride=2, padding="symmetric"),
                                space.stem_act, eps)
        blocks = []
        for i, slot in enumerate(space.layers):
            max_mid = max(space.mid_channels(i, e) for e in slot.expansions)
            se_ch = space.se_channels(i) if True in slot.se else None
            blocks.append(SuperBlock(in_chs[i], space.out_channels(i), slot.stride, max_mid,
                                     2 * max(slot.kernel_groups) + 1, se_ch, eps))
        self.blocks = nn.ModuleList(blocks)
        head_in = space.out_channels(len(space.layers) - 1)
        self.head = ConvNormAct(nn.Conv2d(head_in, space.num_features, 1, bias=False), space.stem_act, eps)
        self.num_features = space.num_features
        self.num_classes = num_classes
        self.drop = nn.Dropout(self.drop_rate)
        self.classifier: nn.Module = nn.Linear(space.num_features, num_classes) if num_classes else nn.Identity()
        self.register_buffer("path_step", torch.zeros((), dtype=torch.long))
        init_weights(self)
        # Every residual block starts as the identity (its last BatchNorm's scale zero), as BigNAS does: without
        # it, paths sampled at random pull the shared weights apart and the supernet barely learns (measured on
        # digit-pairs, the small space: mean loss 4.6 -> 4.4 in 300 steps; with it 4.9 -> 1.5 in 160).
        for block in self.blocks:
            if block.stride == 1 and block.in_ch == block.out_ch:
                nn.init.zeros_(block.project_bn.weight)

    def sample_path(self) -> Arch:
        """The path of the next training step (the same on every rank and after a resume)."""
        rng = random.Random(self.path_seed * 1_000_003 + int(self.path_step))
        return self.space.sample(rng)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            init_weights(self.classifier)

    def forward_features(self, x: torch.Tensor, arch: Optional[Arch] = None) -> torch.Tensor:
        if arch is None:
            if self.training:
                arch = self.sample_path()
                self.path_step += 1
            else:
                arch = self.active or self.space.largest()
        arch = self.space.check(arch)
        x = self.stem(x)
        for i, (block, choice) in enumerate(zip(self.blocks, arch)):
            x = block(x, choice, self.space.mid_channels(i, choice.expansion))
        return self.head(x)

    def forward(self, x: torch.Tensor, arch: Optional[Arch] = None) -> torch.Tensor:
        x = self.drop(self.forward_features(x, arch).mean((2, 3)))
        return self.classifier(x)

    @torch.no_grad()
    def subnet(self, arch: Arch) -> MixNet:
        """The standalone MixNet of ``arch`` with this supernet's weights (and BatchNorm statistics) copied in."""
        arch = self.space.check(arch)
        in_chans = self.stem.conv.in_channels
        net = MixNet(self.space.to_spec(arch), num_classes=self.num_classes, in_chans=in_chans,
                     drop_rate=self.drop_rate)
        net.stem.load_state_dict(self.stem.state_dict())
        net.head.load_state_dict(self.head.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        blocks = [b for stage in net.stages for b in stage]
        kept = [(i, c) for i, c in enumerate(arch) if c.keep]
        for block, (i, choice) in zip(blocks, kept):
            self.blocks[i].copy_to(block, choice, self.space.mid_channels(i, choice.expansion))
        return net.to(self.stem.conv.weight.device)
