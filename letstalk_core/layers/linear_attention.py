"""Attention kernels of the LetsTalk transformer.

* ``relu_linear_attention`` is Sana's LiteLA kernel (NVlabs/Sana ``sana_blocks.py``, arXiv 2410.10629,
  components.md §1.4/§2.1): φ = ReLU on q and k,
  ``O_m = Σ_n v_n ⟨φ(k_n), φ(q_m)⟩ / (Σ_n ⟨φ(k_n), φ(q_m)⟩ + ε)``, computed as ``(Σ_n v_n φ(k_n)ᵀ) φ(q_m)``
  so the cost is O(N·d²) instead of O(N²·d). Both products and the division run in fp32 with autocast
  disabled (components.md §2.3: fp16 overflows, bf16 loses an order of magnitude).
* ``softmax_attention`` is scaled dot-product attention (torch SDPA), used over time and for
  cross-attention, where sequences are short.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import merge_heads, split_heads  # noqa: F401  (re-exported for the DiT)

LINEAR_ATTENTION_EPS = 1e-8  # SanaMSBlock's LiteLA epsilon (components.md §2.1)


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention over the token axis.

    Args:
        q, k, v: ``[B, H, N, d]`` (any float dtype; key and value lengths may differ from the query's).
    Returns:
        ``[B, H, N_q, d]`` in the dtype of ``q``. Accumulation is fp32 whatever the autocast state.
    """
    out_dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        q, k, v = F.relu(q.to(acc)), F.relu(k.to(acc)), v.to(acc)
        kv = torch.einsum("bhnd,bhne->bhde", k, v)  # Σ_n φ(k_n) v_nᵀ            [B,H,d,d]
        k_sum = k.sum(dim=2)  # Σ_n φ(k_n)                                         [B,H,d]
        numerator = torch.einsum("bhmd,bhde->bhme", q, kv)
        denominator = torch.einsum("bhmd,bhd->bhm", q, k_sum).unsqueeze(-1) + eps
        out = numerator / denominator
    return out.to(out_dtype)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q kᵀ/√d) v`` on ``[B, H, N, d]`` tensors (torch SDPA)."""
    return F.scaled_dot_product_attention(q, k, v)
