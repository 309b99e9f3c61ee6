"""MEMO's small condition networks (code ``memo/models/image_proj.py``, ``emotion_classifier.py``;
reference/letstalk_memo.md §2.2). The audio projector is the one LetsTalk uses
(:class:`letstalk_core.audio.projector.AudioProjector`, keys ``proj1..3``, ``norm``): MEMO's
``AudioProjModel`` is Hallo's, unchanged.

* :class:`ImageProj`: the 512-d ArcFace embedding → ``tokens`` face tokens (``Linear`` → reshape →
  ``LayerNorm``), the cross-attention context of both UNets. The unconditional branch uses the
  projection of a zero embedding.
* :class:`EmotionClassifier`: the 1024-d mean emotion2vec feature → probabilities over MEMO's 9
  emotion classes (an MLP ``fc1 … fcN`` with ReLU between, softmax at the end).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import require_tensor

EMOTION_FEATURES = 1024  # emotion2vec_plus_large's width, hard-coded in the reference


class ImageProj(nn.Module):
    def __init__(self, embedding_dim: int = 512, tokens: int = 4, dim: int = 768):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.proj = nn.Linear(embedding_dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[B, embedding_dim] -> [B, tokens, dim]``."""
        require_tensor(embedding, "face embedding", ndim=2)
        if embedding.shape[1] != self.proj.in_features:
            raise ValueError(f"The face embedding has {embedding.shape[1]} values; this ImageProj takes "
                             f"{self.proj.in_features} (an ArcFace embedding).")
        x = self.proj(embedding.to(self.proj.weight.dtype)).reshape(-1, self.tokens, self.dim)
        return self.norm(x)


class EmotionClassifier(nn.Module):
    CLASSES = 9

    def __init__(self, layers: int = 5, width: int = 2048):
        super().__init__()
        if layers < 1:
            raise ValueError(f"The emotion classifier needs at least one layer; got {layers}.")
        if layers == 1:
            self.layers = nn.Linear(EMOTION_FEATURES, self.CLASSES)
        else:
            mods: dict[str, nn.Module] = {"fc1": nn.Linear(EMOTION_FEATURES, width), "relu1": nn.ReLU()}
            for n in range(layers - 2):
                mods[f"fc{n + 2}"] = nn.Linear(width, width)
                mods[f"relu{n + 2}"] = nn.ReLU()
            mods[f"fc{layers}"] = nn.Linear(width, self.CLASSES)
            self.layers = nn.Sequential()
            for name, m in mods.items():
                self.layers.add_module(name, m)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, 1024]`` mean emotion2vec features → ``[N, 9]`` class probabilities."""
        require_tensor(features, "emotion features", ndim=2)
        if features.shape[1] != EMOTION_FEATURES:
            raise ValueError(f"Emotion features must be {EMOTION_FEATURES}-d (emotion2vec_plus_large); "
                             f"got {features.shape[1]}.")
        first = self.layers if isinstance(self.layers, nn.Linear) else self.layers.fc1
        return torch.softmax(self.layers(features.to(first.weight.dtype)), dim=-1)
