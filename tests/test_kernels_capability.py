"""The CPU capability check: detected answers are consistent, and MIXCONV_FORCE_CPU forces either side."""
import pytest
import torch

from mixconv.kernels import capability


def test_detected_matches_torch(monkeypatch):
    monkeypatch.delenv(capability.FORCE_ENV, raising=False)
    info = capability.cpu_info()
    assert info.capability == torch.backends.cpu.get_cpu_capability()
    assert info.int8_dot == bool(info.flags & capability._INT8_FLAGS)
    assert info.capability in info.describe()


def test_force_avx2_turns_every_feature_off(monkeypatch):
    monkeypatch.setenv(capability.FORCE_ENV, "avx2")
    info = capability.cpu_info()
    assert (info.capability, info.native_bf16, info.int8_dot) == ("AVX2", False, False)
    assert not capability.has_native_bf16() and not capability.has_int8_dot()


def test_force_native_turns_every_feature_on(monkeypatch):
    monkeypatch.setenv(capability.FORCE_ENV, "native")
    assert capability.has_native_bf16() and capability.has_int8_dot()


def test_bad_force_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(capability.FORCE_ENV, "avx9000")
    with pytest.raises(ValueError, match=capability.FORCE_ENV):
        capability.cpu_info()
