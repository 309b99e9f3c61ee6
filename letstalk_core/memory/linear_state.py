"""MEMO's memory: a decayed linear-attention state over all past frames (arXiv 2412.04448 §3.2, eqs. 2–4;
code ``memo/models/attention_processor.py::MemoryLinearAttnProcessor``; reference/letstalk_memo.md §2.3).

Every memory-guided temporal attention layer of the Diffusion Net keeps, per head and spatial
location, a state ``M_KV ∈ ℝ^{d×d}`` and ``M_Z ∈ ℝ^{1×d}`` built from the Reference-Net features of
past frames. With kernels ``φ_k = softmax over frames`` and ``φ_q = softmax over channels × d^−½``:

* **update** with ``F`` past frames ``j = 0…F−1`` (oldest first), once per clip::

      KV_past = Σ_j γ^{2(F−1−j)} φ_k(k_j)ᵀ v_j        Z_past = Σ_j γ^{F−1−j} φ_k(k_j)
      M ← past                      (a new video: the state is reset first)
      M ← γ^F · M + past            (otherwise)

  The reference scales both the keys and the values by ``γ^{F−1−j}`` before their outer product, so
  the outer product carries the decay squared while ``Z`` carries it once; we keep that exactly.
* **attend** with the current clip's ``N`` frames (non-causal)::

      KV = γ·M_KV + Σ_n φ_k(k_n)ᵀ v_n      Z = γ·M_Z + Σ_n φ_k(k_n)
      out_n = φ_q(q_n)·KV / max(φ_q(q_n)·Zᵀ, 1e−10)

γ = 0.9 (hard-coded in the reference). The state's size is constant in the video's length: that is
the memory of MEMO. All products and sums run in float32 (or the inputs' wider dtype) whatever the
model's dtype; :class:`LinearAttentionMemory` can hold the state in a narrower dtype to save memory.

:class:`LinearAttentionMemory` is the whole network's state: one ``(KV, Z)`` pair per layer, keyed by
the layer's name, with ``reset``, ``state_dict``/``load_state_dict`` for an exact save and restore,
and ``nbytes`` for its size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

MEMORY_DECAY = 0.9
DENOMINATOR_MIN = 1e-10


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def past_contribution(keys: torch.Tensor, values: torch.Tensor, decay: float = MEMORY_DECAY
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KV_past [B, d, d], Z_past [B, 1, d])`` from past frames' keys and values ``[B, F, d]``
    (oldest frame first; ``φ_k`` is applied here, over the ``F`` frames)."""
    acc = _acc_dtype(keys)
    k = torch.softmax(keys.to(acc), dim=-2)
    frames = k.shape[1]
    w = decay ** torch.arange(frames - 1, -1, -1, device=k.device, dtype=acc)
    k = k * w.view(1, frames, 1)
    v = values.to(acc) * w.view(1, frames, 1)
    return torch.einsum("bij,bik->bjk", k, v), k.sum(dim=1, keepdim=True)


def fold(state: tuple[torch.Tensor, torch.Tensor] | None, past: tuple[torch.Tensor, torch.Tensor],
         frames: int, decay: float = MEMORY_DECAY) -> tuple[torch.Tensor, torch.Tensor]:
    """The state after one update: ``past`` for an empty state, else ``γ^F·state + past``."""
    if state is None:
        return past
    factor = decay ** frames  # on a fresh float32 copy, in place: one layer's temporaries, not three
    return (state[0].to(past[0].dtype, copy=True).mul_(factor).add_(past[0]),
            state[1].to(past[1].dtype, copy=True).mul_(factor).add_(past[1]))


FOLD_CHUNK_BYTES = 64 * 2 ** 20  # float32 KV per chunk of rows in fold_past: a chunk's temporaries, not a layer's


def fold_past(state: tuple[torch.Tensor, torch.Tensor] | None, keys: torch.Tensor, values: torch.Tensor, frames: int,
              *, dtype: torch.dtype, decay: float = MEMORY_DECAY,
              chunk_bytes: int = FOLD_CHUNK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """``fold(state, past_contribution(keys, values))`` stored in ``dtype``, computed a chunk of rows at a
    time (every row — a location and head — is independent): the same numbers, with one chunk's float32
    temporaries instead of a whole layer's (1.3 GiB for the largest layer at 512²)."""
    n, dk, dv = keys.shape[0], keys.shape[-1], values.shape[-1]
    rows = max(1, chunk_bytes // (dk * dv * 4))
    kv_out = torch.empty((n, dk, dv), dtype=dtype, device=keys.device)
    z_out = torch.empty((n, 1, dk), dtype=dtype, device=keys.device)
    for s in range(0, n, rows):
        old = None if state is None else (state[0][s:s + rows], state[1][s:s + rows])
        kv, z = fold(old, past_contribution(keys[s:s + rows], values[s:s + rows], decay), frames, decay)
        kv_out[s:s + rows] = kv
        z_out[s:s + rows] = z
    return kv_out, z_out


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           state: tuple[torch.Tensor, torch.Tensor], *, scale: float, decay: float = MEMORY_DECAY) -> torch.Tensor:
    """Memory-guided linear attention of the current frames ``[B, N, d]`` (queries, keys, values)
    with the state; returns ``[B, N, d]`` in the queries' dtype."""
    acc = _acc_dtype(queries)
    q = torch.softmax(queries.to(acc), dim=-1) * scale
    k = torch.softmax(keys.to(acc), dim=-2)
    kv = state[0].to(acc, copy=True).mul_(decay).add_(torch.einsum("bnd,bne->bde", k, values.to(acc)))
    z = state[1].to(acc, copy=True).mul_(decay).add_(k.sum(dim=-2, keepdim=True))
    num = torch.einsum("bnd,bde->bne", q, kv)
    den = torch.einsum("bnd,bod->bno", q, z)
    return (num / den.clamp(min=DENOMINATOR_MIN)).to(queries.dtype)


@dataclass
class LinearAttentionMemory:
    """The memory of every temporal layer of one Diffusion Net, for one video.

    ``layers`` maps a layer name to its ``(KV [B·L·H, d, d], Z [B·L·H, 1, d])`` (``B`` the batch of
    the guided forward, ``L`` the spatial locations of that layer, ``H`` the heads). ``clips`` counts
    the updates since the last reset. ``dtype`` (default: float32) is the dtype the state is kept in.
    """

    dtype: torch.dtype = torch.float32
    decay: float = MEMORY_DECAY
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    clips: int = 0
    storage: torch.device | None = None  # keep the tensors here (e.g. the CPU) and move each layer's when read

    def reset(self) -> None:
        """Forget everything: the start of a new video."""
        self.layers = {}
        self.clips = 0

    @property
    def empty(self) -> bool:
        return not self.layers

    def get(self, name: str, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``name``'s ``(KV, Z)``, on ``device`` when given (a state kept elsewhere is copied there)."""
        if name not in self.layers:
            raise RuntimeError(
                f"The memory has no state for layer '{name}': update it with the past frames' reference "
                "features before sampling (DiffusionNet.update_memory), or reset it for a new video."
            )
        kv, z = self.layers[name]
        if device is not None and kv.device != torch.device(device):
            return kv.to(device, non_blocking=True), z.to(device, non_blocking=True)
        return kv, z

    def find(self, name: str, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.get(name, device) if name in self.layers else None

    def put(self, name: str, kv: torch.Tensor, z: torch.Tensor) -> None:
        kv, z = kv.to(self.dtype), z.to(self.dtype)
        if self.storage is not None and kv.device != self.storage:
            pin = self.storage.type == "cpu" and kv.device.type == "cuda"
            kv, z = ((t.to(self.storage).pin_memory() if pin else t.to(self.storage)) for t in (kv, z))
        self.layers[name] = (kv, z)

    def rows(self, index: int, count: int) -> "LinearAttentionMemory":
        """The state of batch row ``index`` of ``count`` (the guidance branches), as views: a forward of
        that row alone reads exactly the numbers the batched forward reads for it (each layer's state is
        ``[B·L·H, …]``, batch-major, see ``families/memo/temporal.py``)."""
        out = LinearAttentionMemory(dtype=self.dtype, decay=self.decay, clips=self.clips, storage=self.storage)
        for name, (kv, z) in self.layers.items():
            n = kv.shape[0] // count
            out.layers[name] = (kv[index * n:(index + 1) * n], z[index * n:(index + 1) * n])
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.layers.values() for t in pair)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (``<layer>.kv``, ``<layer>.z``, ``clips``) for safetensors; restores exactly."""
        out = {f"{name}.{part}": t.contiguous() for name, pair in self.layers.items()
               for part, t in zip(("kv", "z"), pair)}
        out["clips"] = torch.tensor([self.clips], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "clips" not in state:
            raise ValueError("Not a saved MEMO memory state: the 'clips' entry is missing.")
        layers: dict[str, list] = {}
        for key, t in state.items():
            if key == "clips":
                continue
            name, _, part = key.rpartition(".")
            if part not in ("kv", "z") or not name:
                raise ValueError(f"Not a saved MEMO memory state: unexpected entry '{key}'.")
            layers.setdefault(name, [None, None])[0 if part == "kv" else 1] = t
        broken = [n for n, pair in layers.items() if pair[0] is None or pair[1] is None]
        if broken:
            raise ValueError(f"Saved MEMO memory state is incomplete for layers {broken[:3]}.")
        self.layers = {n: (pair[0], pair[1]) for n, pair in layers.items()}
        self.dtype = next(iter(self.layers.values()))[0].dtype if self.layers else self.dtype
        self.clips = int(state["clips"].reshape(-1)[0])
