"""What this CPU can do: the capability PyTorch dispatches to, native bf16, and int8 dot-product units.

Fast paths that need a CPU feature ask here (a capability check, never a timing) and fall back to the reference
path where the answer is no. Tests force either answer with ``MIXCONV_FORCE_CPU`` (see :func:`forced`).
"""
from __future__ import annotations

import functools
import os
import platform
import warnings
from dataclasses import dataclass

import torch


class LowPrecisionWarning(UserWarning):
    """bf16/fp16 was asked for on a CPU without hardware for it: it runs emulated, often slower than float32."""


# Set to "avx2" (no native bf16, no VNNI/AMX) or "native" (all of them) to force the answers below in tests.
FORCE_ENV = "MIXCONV_FORCE_CPU"
FORCE_VALUES = ("avx2", "native")


@dataclass(frozen=True)
class CpuInfo:
    """One CPU's relevant capabilities."""

    arch: str  # platform.machine(): x86_64, aarch64, ...
    capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ZVECTOR, SVE256, ...
    native_bf16: bool  # bf16 math in hardware (avx512_bf16 / AMX-BF16 on x86, BF16 on Arm), as oneDNN sees it
    native_fp16: bool  # fp16 math in hardware (avx512_fp16 / AMX-FP16 on x86, FP16 on Arm), as oneDNN sees it
    int8_dot: bool  # int8 dot-product units: AVX-512 VNNI, AVX-VNNI or AMX-INT8 on x86; dotprod/i8mm on Arm
    flags: frozenset[str]  # the relevant flags found (from /proc/cpuinfo where there is one)

    @property
    def kind(self) -> str:
        """The CPU kind that speed figures and targets are stated per: ``x86-amx`` (AMX tiles: Intel Sapphire
        Rapids and later), ``x86-avx512`` (AVX-512 without AMX: AMD Zen 4/5, Intel Ice Lake...), ``x86-avx2``,
        ``arm64``, or the bare architecture."""
        if self.arch.lower() in ("x86_64", "amd64"):
            if self.flags & {"amx_tile", "amx_bf16", "amx_int8"}:
                return "x86-amx"
            if "avx512f" in self.flags:
                return "x86-avx512"
            return "x86-avx2" if "avx2" in self.flags else "x86"
        return "arm64" if self.arch.lower() in ("aarch64", "arm64") else self.arch

    def describe(self) -> str:
        """A one-line summary for benchmark headers and warnings."""
        shown = ", ".join(sorted(self.flags)) or "none found"
        return (
            f"{self.kind} ({self.arch}), torch capability {self.capability}, native bf16 {'yes' if self.native_bf16 else 'no'}, "
            f"native fp16 {'yes' if self.native_fp16 else 'no'}, int8 dot product "
            f"{'yes' if self.int8_dot else 'no'} (flags: {shown})"
        )


_RELEVANT = (
    "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_fp16",
    "amx_tile", "asimddp", "i8mm", "bf16", "fphp", "sve", "sve2",
)
_INT8_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


def _cpuinfo_flags() -> frozenset[str]:
    """The relevant flags of the first CPU in /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(v for v in value.split() if v in _RELEVANT)
    except OSError:
        pass
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def forced() -> str | None:
    """The forced answer set from ``MIXCONV_FORCE_CPU`` (``"avx2"`` or ``"native"``), or ``None``."""
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if not value:
        return None
    if value not in FORCE_VALUES:
        raise ValueError(f"{FORCE_ENV}={value!r}: expected one of {', '.join(FORCE_VALUES)} or unset")
    return value


@functools.lru_cache(maxsize=None)
def _detect() -> CpuInfo:
    flags = _cpuinfo_flags()
    mkldnn = torch.backends.mkldnn.is_available()
    bf16 = bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    fp16 = bool(mkldnn and torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return CpuInfo(
        arch=platform.machine(),
        capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=bf16,
        native_fp16=fp16,
        int8_dot=bool(flags & _INT8_FLAGS),
        flags=flags,
    )


def cpu_info() -> CpuInfo:
    """This CPU's capabilities (detected once), with ``MIXCONV_FORCE_CPU`` applied."""
    info = _detect()
    force = forced()
    if force == "avx2":
        return CpuInfo(info.arch, "AVX2", False, False, False, frozenset({"avx2"}))
    if force == "native":
        return CpuInfo(info.arch, info.capability, True, True, True, info.flags)
    return info


def has_native_bf16() -> bool:
    """Whether bf16 convolutions and matmuls run in hardware here (else they are emulated, ~10x slower)."""
    return cpu_info().native_bf16


def has_int8_dot() -> bool:
    """Whether int8 GEMMs/convs have dot-product units here (else int8 is no faster than fp32)."""
    return cpu_info().int8_dot


def has_native_fp16() -> bool:
    """Whether fp16 convolutions and matmuls run in hardware here (else they are emulated)."""
    return cpu_info().native_fp16


def runs_emulated(dtype: torch.dtype, device: str | torch.device = "cpu") -> bool:
    """Whether ``dtype`` is bfloat16/float16 on a CPU without native support for it (so it runs emulated)."""
    if dtype not in (torch.bfloat16, torch.float16) or torch.device(device).type != "cpu":
        return False
    info = cpu_info()
    return not (info.native_bf16 if dtype == torch.bfloat16 else info.native_fp16)


def emulated_precision(dtype: torch.dtype, device: str | torch.device = "cpu") -> str | None:
    """Why ``dtype`` will be slow on ``device``: a sentence where it is bfloat16/float16 on a CPU that has no
    native support for it, else ``None`` (float32, other devices, or native support)."""
    if not runs_emulated(dtype, device):
        return None
    info = cpu_info()
    name = "bfloat16" if dtype == torch.bfloat16 else "float16"
    return (f"this CPU has no native {name} ({info.describe()}); {name} convolutions and matmuls run emulated, "
            f"typically several times slower than float32 (use float32 here)")


def warn_emulated_precision(dtype: torch.dtype, device: str | torch.device = "cpu", what: str = "",
                            stacklevel: int = 2) -> str | None:
    """Warn (:class:`LowPrecisionWarning`) where :func:`emulated_precision` says ``dtype`` is emulated; returns
    the message (``None`` when there is nothing to warn about). ``what`` names the caller's setting."""
    msg = emulated_precision(dtype, device)
    if msg is not None:
        msg = f"{what}: {msg}" if what else msg
        warnings.warn(msg, LowPrecisionWarning, stacklevel=stacklevel + 1)
    return msg
