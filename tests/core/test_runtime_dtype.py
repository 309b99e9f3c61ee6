"""``--dtype auto`` / ``weight_dtype auto``: bf16 only where the hardware runs it (issue 14, item 2)."""
from __future__ import annotations

import pytest
import torch

from letstalk_core.devices import native_bf16, pick_dtype


@pytest.fixture(autouse=True)
def _the_real_probe(monkeypatch):
    """These tests fake the hardware itself: a forced answer (the suite's own both-ways runs) is lifted."""
    monkeypatch.delenv("LETSTALK_NATIVE_BF16", raising=False)

CPU = torch.device("cpu")


def _cpu_flags(monkeypatch, *, amx: bool, avx512_bf16: bool, mkldnn: bool = True) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn, raising=False)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                        (False, False, torch.float32)])
def test_auto_picks_bf16_only_on_cpus_that_run_it(monkeypatch, amx, avx512_bf16, expected):
    _cpu_flags(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert pick_dtype("auto", CPU) is expected
    ok, why = native_bf16(CPU)
    assert ok == (expected is torch.bfloat16)
    assert ("AMX" in why) if amx else True
    assert "emulated" in why if not ok else True


def test_auto_stays_fp32_when_onednn_cannot_run_bf16(monkeypatch):
    _cpu_flags(monkeypatch, amx=True, avx512_bf16=True, mkldnn=False)
    assert pick_dtype("auto", CPU) is torch.float32


def test_auto_on_this_machine_matches_its_flags():
    """No flag faked: what the probe says about this CPU is what ``auto`` picks."""
    assert pick_dtype("auto", CPU) is (torch.bfloat16 if native_bf16(CPU)[0] else torch.float32)


def test_cuda_without_native_bf16_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    ok, why = native_bf16(torch.device("cuda"))
    assert not ok and "7.5" in why
    assert pick_dtype("auto", torch.device("cuda")) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_an_explicit_dtype_overrides_the_probe(monkeypatch, name, dtype):
    _cpu_flags(monkeypatch, amx=False, avx512_bf16=False)
    assert pick_dtype(name, CPU) is dtype


def test_unknown_dtype_says_what_to_use():
    with pytest.raises(ValueError, match="use auto, fp32, bf16 or fp16"):
        pick_dtype("int8", CPU)


@pytest.mark.parametrize("value,native", [("1", True), ("0", False)])
def test_the_probe_can_be_forced_either_way(monkeypatch, value, native):
    """LETSTALK_NATIVE_BF16 answers the probe on any machine: the suite runs as on a CPU with and without
    native bf16 (python3 scripts/bootstrap.py test, with the variable set)."""
    from letstalk_core.devices import native_bf16, pick_dtype

    monkeypatch.setenv("LETSTALK_NATIVE_BF16", value)
    ok, why = native_bf16(torch.device("cpu"))
    assert ok is native and "LETSTALK_NATIVE_BF16" in why
    assert pick_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert pick_dtype("fp32", torch.device("cpu")) == torch.float32


def test_a_run_keeps_its_thread_count_and_restores_the_callers():
    """The sums of a reduction split over another number of threads round differently, so a run's pool is
    fixed (and a resume takes the count its state records); the caller's pool is restored after."""
    from letstalk_core.runtime import run_threads

    before = torch.get_num_threads()
    with run_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with run_threads(None) as n:
        assert n == before
