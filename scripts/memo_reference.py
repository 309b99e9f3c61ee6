"""Import the MEMO authors' code (github.com/memoavatar/memo) for the scripts that prove ours equal to it.

Nothing here runs in CI or at run time: only ``scripts/make_memo_fixtures.py`` and
``scripts/make_memo_manifest.py`` use it, in a separate virtual environment that has what the
reference pins (``diffusers==0.31.0``, ``transformers==4.46.3``, ``einops``) and a checkout of it:

    python3 -m venv <reference venv> && <reference venv>/bin/pip install torch==2.13.0 diffusers==0.31.0 \
        transformers==4.46.3 einops==0.8.0 safetensors numpy==1.26.4 accelerate==1.1.1 huggingface-hub==0.26.2
    git clone https://github.com/memoavatar/memo <memo checkout>      # tested at a5aee30

The reference imports ``xformers`` at module level (``memo/models/motion_module.py``) and its
inference enables xFormers attention unconditionally (``inference.py``), so it cannot even be imported
on a machine without CUDA. :func:`import_reference` installs a stand-in ``xformers`` module whose
``ops.memory_efficient_attention`` is the exact softmax attention ``softmax(q·kᵀ·scale)·v`` (what
xFormers computes, up to float rounding) and lets :func:`enable_reference_xformers` switch the
reference models to their xFormers processors the way ``inference.py`` does. That keeps every
processor the reference really runs (``XFormersAttnProcessor``, ``JointAttnProcessor2_0``,
``MemoryLinearAttnProcessor``); only the kernel under ``XFormersAttnProcessor`` is replaced.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def _memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
    """xFormers' ``memory_efficient_attention`` on ``[B, M, K]`` or ``[B, M, H, K]`` inputs."""
    if query.ndim == 4:  # [B, M, H, K] -> [B, H, M, K]
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale)
        return out.transpose(1, 2)
    # [B·H, M, K]: given to SDPA as one head ([B·H, 1, M, K]) so that it takes its fused (flash) CPU
    # kernel, as xFormers' kernel is fused on a GPU; 3-d inputs would send SDPA to its unfused math path
    # (the full score matrix in memory), which would make the reference slower than it is.
    bias = None if attn_bias is None else attn_bias.unsqueeze(1)
    out = F.scaled_dot_product_attention(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1),
                                         attn_mask=bias, scale=scale)
    return out.squeeze(1)


def _install_xformers_stub() -> None:
    if "xformers" in sys.modules:
        return
    import diffusers.utils.import_utils  # noqa: F401  (probe for xformers before the stand-in exists)
    xf = types.ModuleType("xformers")
    xf.__version__ = "0.0.28.post3"
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = _memory_efficient_attention
    xf.ops = ops
    sys.modules["xformers"] = xf
    sys.modules["xformers.ops"] = ops


def import_reference(memo_checkout: str | Path):
    """Put the memo checkout on ``sys.path`` (with the xFormers stand-in) and return its model modules."""
    root = Path(memo_checkout).resolve()
    if not (root / "memo" / "models" / "unet_3d.py").is_file():
        raise SystemExit(f"{root} is not a checkout of github.com/memoavatar/memo (memo/models/unet_3d.py missing).")
    _install_xformers_stub()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    names = ["unet_2d_condition", "unet_3d", "image_proj", "audio_proj", "emotion_classifier",
             "attention_processor", "motion_module"]
    return types.SimpleNamespace(**{n: importlib.import_module(f"memo.models.{n}") for n in names})


@contextlib.contextmanager
def _pretend_cuda():
    import diffusers.utils.import_utils as iu
    import memo.models.motion_module as mm
    saved = (torch.cuda.is_available, iu.is_xformers_available, iu._xformers_available, mm.is_xformers_available)
    torch.cuda.is_available = lambda: True
    iu.is_xformers_available = lambda: True
    iu._xformers_available = True
    mm.is_xformers_available = lambda: True
    real_randn = torch.randn

    def randn(*args, device=None, **kw):  # the availability probe asks for CUDA tensors
        return real_randn(*args, **kw)

    torch.randn = randn
    try:
        yield
    finally:
        torch.cuda.is_available, iu.is_xformers_available, iu._xformers_available, mm.is_xformers_available = saved
        torch.randn = real_randn


def enable_reference_xformers(*models) -> None:
    """``model.enable_xformers_memory_efficient_attention()`` as ``inference.py`` calls it, on the CPU."""
    stub = sys.modules["xformers"]
    for name, module in list(sys.modules.items()):
        if name.startswith(("diffusers.", "memo.")) and getattr(module, "xformers", stub) is None:
            module.xformers = stub
    with _pretend_cuda():
        for model in models:
            model.enable_xformers_memory_efficient_attention()
