"""Interrupt-safe long runs: finished clips and the generation state are kept in a folder.

After every clip its decoded frames (uint8) and the :class:`~letstalk_core.pipeline.GenerationState`
are written atomically. A run started again with the same folder and the same inputs replays the
stored clips and continues from the next one; the result equals an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .pipeline import GenerationState

STATE_FILE = "state.safetensors"


class ClipStore:
    """A folder holding ``clip_00000.npy`` … (frames ``[n, H, W, 3]`` uint8) and ``state.safetensors``."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def clip_path(self, index: int) -> Path:
        return self.folder / f"clip_{index:05d}.npy"

    def save_clip(self, index: int, frames: torch.Tensor) -> None:
        """Store a clip's frames ``[n, 3, H, W]`` in [-1, 1] as uint8 (atomic rename)."""
        arr = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        tmp = self.clip_path(index).with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(self.clip_path(index))

    def save_state(self, state: GenerationState) -> None:
        state.save(self.folder / STATE_FILE)

    def load_state(self, fingerprint: str) -> GenerationState | None:
        """The stored state if it belongs to this run (same fingerprint) and its clips are all present."""
        path = self.folder / STATE_FILE
        if not path.exists():
            return None
        state = GenerationState.load(path)
        if state.fingerprint != fingerprint:
            raise ValueError(f"'{self.folder}' holds an interrupted run of different inputs or settings; "
                             "use another resume folder or delete this one.")
        missing = [i for i in range(state.next_clip) if not self.clip_path(i).exists()]
        if missing:
            raise ValueError(f"'{self.folder}' is missing clip files {missing[:5]}; delete the folder to start over.")
        return state

    def stored_clips(self, count: int) -> Iterator[np.ndarray]:
        """The first ``count`` stored clips as uint8 ``[n, H, W, 3]`` arrays, one at a time."""
        for i in range(count):
            yield np.load(self.clip_path(i))
