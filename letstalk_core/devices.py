"""Which device and dtype a run uses: ``auto`` resolved from what the hardware runs natively.

Shared by every family (the CLI's ``--device``/``--dtype``, the nodes' ``weight_dtype`` on a CPU);
``benchmarks/dtype_cpu.py`` measures the rule (README, "bf16 on a CPU").
"""
from __future__ import annotations

import os

import torch


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU; anything else is validated."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this torch has no CUDA; use --device cpu.")
    return dev


FORCE_NATIVE_BF16 = "LETSTALK_NATIVE_BF16"  # 1/0: answer the probe below without asking the hardware


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matmuls and convolutions in hardware, and why (for ``info`` and logs).

    CUDA: compute capability 8.0+ (Ampere and later; ``torch.cuda.is_bf16_supported`` without emulation).
    CPU: AMX tiles (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4 and later), as oneDNN
    uses them; elsewhere a CPU computes bf16 by converting to fp32, tens of times slower than fp32 (measured
    by ``benchmarks/limits.py`` on an AVX2 EPYC: a 512² GEMM at 1.9 against 88 GFLOP/s). Other devices: no.
    The environment variable ``LETSTALK_NATIVE_BF16`` (``1``/``0``) overrides the probe: the test suite runs
    both ways on any machine with it.
    """
    forced = os.environ.get(FORCE_NATIVE_BF16, "").strip().lower()
    if forced in ("0", "1", "true", "false", "yes", "no"):
        ok = forced in ("1", "true", "yes")
        return ok, f"{FORCE_NATIVE_BF16}={forced} (the hardware probe is overridden)"
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation flag
            ok = torch.cuda.is_bf16_supported()
        major, minor = torch.cuda.get_device_capability(device)
        return ok, f"CUDA compute capability {major}.{minor} ({'has' if ok else 'no'} native bf16)"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)  # the probes are private in torch: absent ones count as no
        amx, avx512_bf16 = (bool(getattr(cpu, name, lambda: False)())
                            for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
        mkldnn = bool(torch.backends.mkldnn.is_available()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if mkldnn and (amx or avx512_bf16):
            return True, f"CPU with {'AMX' if amx else 'AVX512-BF16'}"
        return False, "CPU without AMX or AVX512-BF16: bf16 would be emulated, tens of times slower than fp32"
    return False, f"{device.type}: fp32 unless asked"


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 where the device runs it in hardware (:func:`native_bf16`), fp32 elsewhere; or the
    dtype named (``fp32``, ``bf16``, ``fp16``)."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device)[0] else torch.float32
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16.")
    return table[dtype]
