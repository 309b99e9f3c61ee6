"""The audio projector: a window of per-frame speech features -> ``tokens`` context tokens per frame.

Exactly Hallo's ``AudioProjModel`` (``hallo/models/audio_proj.py``), used unchanged by LetsTalk
(``models/audio_proj.py``; ``reference/letstalk_memo.md`` §1.3 step 6): flatten
``window x layers x channels``, ``Linear -> ReLU -> Linear -> ReLU -> Linear`` to ``tokens * out_dim``,
reshape to ``(tokens, out_dim)``, ``LayerNorm(out_dim)``. Keys ``proj1``, ``proj2``, ``proj3``, ``norm``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

import torch
import torch.nn as nn

from ..validation import require_tensor

__all__ = ["AudioProjectorConfig", "AudioProjector"]


@dataclass(frozen=True)
class AudioProjectorConfig:
    """Defaults: Hallo/LetsTalk ``AudioProjModel(seq_len=5, blocks=12, channels=768, intermediate_dim=512,
    output_dim=768, context_tokens=32)`` (about 36.5 M parameters)."""

    window: int = 5
    layers: int = 12
    channels: int = 768
    hidden: int = 512
    tokens: int = 32
    out_dim: int = 768

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"AudioProjectorConfig.{f.name} must be a positive integer, got {value!r}.")

    @property
    def input_dim(self) -> int:
        return self.window * self.layers * self.channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "AudioProjectorConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown AudioProjectorConfig fields {sorted(unknown)}.")
        return cls(**dict(d))


class AudioProjector(nn.Module):
    """``[B, F, window, L, C]`` or ``[N, window, L, C]`` -> ``[B, F, tokens, out_dim]`` / ``[N, tokens, out_dim]``."""

    def __init__(self, config: AudioProjectorConfig | None = None, *, device=None, dtype=None):
        super().__init__()
        config = config or AudioProjectorConfig()
        if not isinstance(config, AudioProjectorConfig):
            raise TypeError(f"config must be an AudioProjectorConfig, got {type(config).__name__}.")
        self.config = config
        kw = {"device": device, "dtype": dtype}
        self.proj1 = nn.Linear(config.input_dim, config.hidden, **kw)
        self.proj2 = nn.Linear(config.hidden, config.hidden, **kw)
        self.proj3 = nn.Linear(config.hidden, config.tokens * config.out_dim, **kw)
        self.norm = nn.LayerNorm(config.out_dim, **kw)

    def forward(self, audio_windows: torch.Tensor) -> torch.Tensor:
        require_tensor(audio_windows, "audio_windows", ndim=(4, 5))
        c = self.config
        expected = (c.window, c.layers, c.channels)
        if tuple(audio_windows.shape[-3:]) != expected:
            raise ValueError(
                f"audio_windows end in {tuple(audio_windows.shape[-3:])} (window, layers, channels) but the audio "
                f"projector expects {expected}. Use the speech encoder and audio margin the model was trained with."
            )
        lead = audio_windows.shape[:-3]
        x = audio_windows.reshape(-1, c.input_dim).to(self.proj1.weight.dtype)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(-1, c.tokens, c.out_dim)
        return self.norm(x).reshape(*lead, c.tokens, c.out_dim)
