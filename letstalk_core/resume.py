"""Interrupt-safe long runs: finished clips and the generation state are kept in a folder.

After every clip its decoded frames (uint8) and the :class:`~letstalk_core.loop.GenerationState`
are written atomically. For a family that rebuilds its memory on resume (MEMO, whose state is 6.5 GiB
at 512² in bf16), the state holds no memory and the clip's finished latents are written beside its
frames instead (``clip_00000.latents.safetensors``, 1 MiB a clip at 512²): a resume replays them
through the family's memory update. A run started again with the same folder and the same inputs replays the
stored clips and continues from the next one; the result equals an uninterrupted run.

The writes happen off the sampling path (:meth:`ClipStore.save` hands them to one background thread,
in order, at most one clip behind), so keeping a resume folder costs next to nothing per frame;
:meth:`ClipStore.flush` waits for them (an interrupted run keeps every clip it finished) and
:meth:`ClipStore.remove` deletes what the store wrote once the video is complete.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .loop import GenerationState
from .validation import require_writable_folder

STATE_FILE = "state.safetensors"
LOCK_FILE = ".lock"


def _lock_folder(folder: Path):
    """Hold an exclusive lock on ``folder`` for this run (POSIX ``flock``; released on close or when the process
    dies). A second run on the same folder is refused: both would write the same clip files."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a second run is the user's to avoid
        return None
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"another run is writing the resume folder '{folder}' ({owner}); wait for it to finish, "
                         "or give this run another folder.") from None
    import os

    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


class ClipStore:
    """A folder holding ``clip_00000.npy`` … (frames ``[n, H, W, 3]`` uint8) and ``state.safetensors``."""

    def __init__(self, folder) -> None:
        self.folder = require_writable_folder(folder, "resume folder",
                                              "Choose another folder for the finished clips (--resume-dir).")
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.warnings: list[str] = []  # what load_state set aside (a broken folder), for the caller to show
        self._lock = _lock_folder(self.folder)

    def clip_path(self, index: int) -> Path:
        return self.folder / f"clip_{index:05d}.npy"

    def latents_path(self, index: int) -> Path:
        return self.folder / f"clip_{index:05d}.latents.safetensors"

    def save_latents(self, index: int, latents: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tmp = self.latents_path(index).with_suffix(".tmp")
        save_file({"latents": latents.detach().cpu().float().contiguous()}, str(tmp))
        tmp.replace(self.latents_path(index))

    def stored_latents(self, count: int) -> Iterator[torch.Tensor]:
        """The first ``count`` clips' stored latents, one at a time (for a replayed resume)."""
        from safetensors.torch import load_file

        for i in range(count):
            yield load_file(str(self.latents_path(i)))["latents"]

    @staticmethod
    def to_uint8(frames: torch.Tensor) -> np.ndarray:
        """Frames ``[n, 3, H, W]`` in [-1, 1] → ``[n, H, W, 3]`` uint8, the video writer's rounding."""
        return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    def save_clip(self, index: int, frames: torch.Tensor | np.ndarray) -> None:
        """Store a clip's frames (``[n, 3, H, W]`` in [-1, 1], or uint8 ``[n, H, W, 3]``), atomically."""
        arr = frames if isinstance(frames, np.ndarray) else self.to_uint8(frames)
        tmp = self.clip_path(index).with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(self.clip_path(index))

    def save_state(self, state: GenerationState) -> None:
        state.save(self.folder / STATE_FILE)

    def save(self, index: int, frames: torch.Tensor, state: GenerationState, latents: torch.Tensor | None = None) -> None:
        """Store clip ``index`` (its frames and, for a replayed memory, its latents) and the state after it
        in the background (clip first, then state, so a state never points past a clip on disk). Waits
        for the previous clip's write first: at most one clip is in flight, and a failed write surfaces at
        the next clip."""
        arr = self.to_uint8(frames)
        if state.memory is None and latents is None:
            raise ValueError("a state without memory needs the clip's latents to be resumable.")
        latents = None if latents is None or state.memory is not None else latents.detach().cpu()

        def snapshot(t: torch.Tensor) -> torch.Tensor:
            # The loop replaces its memory and tail tensors each clip and never writes into them, so a
            # reference is a snapshot (a copy would be 13 GiB a clip for MEMO at 512²); off-CPU: the copy to host.
            return t.detach().cpu()

        memory = (None if state.memory is None else {k: snapshot(v) for k, v in state.memory.items()}
                  if isinstance(state.memory, dict) else snapshot(state.memory))
        state = GenerationState(state.next_clip, memory, state.fingerprint,
                                None if state.tail is None else snapshot(state.tail), state.threads)
        self.flush()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="letstalk-resume")

        def write() -> None:
            self.save_clip(index, arr)
            if latents is not None:
                self.save_latents(index, latents)
            self.save_state(state)

        self._pending = self._executor.submit(write)

    def flush(self) -> None:
        """Wait for the write in flight (re-raising its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._lock is not None:
                self._lock.close()  # releases the lock (a killed process's lock goes with it)
                self._lock = None

    def __enter__(self) -> "ClipStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def remove(self) -> int:
        """Delete the clips and the state this store keeps (and the folder, if nothing else is in it).
        Returns the bytes freed. Files the store did not write are left alone."""
        self.close()
        freed = 0
        for f in [*self.folder.glob("clip_[0-9][0-9][0-9][0-9][0-9].npy"), *self.folder.glob("clip_*.tmp.npy"),
                  *self.folder.glob("clip_[0-9][0-9][0-9][0-9][0-9].latents.safetensors"),
                  *self.folder.glob("clip_[0-9][0-9][0-9][0-9][0-9].latents.tmp"),
                  self.folder / STATE_FILE, self.folder / (STATE_FILE + ".tmp"), self.folder / LOCK_FILE]:
            if f.is_file():
                freed += f.stat().st_size
                f.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass  # not empty: the user keeps other files there
        return freed

    def load_state(self, fingerprint: str) -> GenerationState | None:
        """The stored state if it belongs to this run (same fingerprint) and its clips are all present."""
        path = self.folder / STATE_FILE
        if not path.exists():
            return None
        try:
            state = GenerationState.load(path)
        except Exception as e:  # noqa: BLE001 - truncated or not a state file: this run's own data, start afresh
            self._set_aside(f"its state file is unreadable ({type(e).__name__}: {str(e)[:120]})")
            return None
        if state.fingerprint != fingerprint:  # starting afresh would overwrite another run's clips: refuse
            raise ValueError(f"'{self.folder}' holds an interrupted run of different inputs, settings or model, "
                             f"stopped after clip {state.next_clip}; resuming it here would give a wrong video and "
                             "starting afresh would overwrite it. Use another resume folder, run that run's exact "
                             "command to finish it, or delete this folder.")
        broken = [i for i in range(state.next_clip) if not self._clip_ok(i, state.replay)]
        if broken:
            self._set_aside(f"clip file{'s' if len(broken) > 1 else ''} {broken[:5]} "
                            f"{'are' if len(broken) > 1 else 'is'} missing or truncated")
            return None
        return state

    def _clip_ok(self, index: int, replay: bool) -> bool:
        """The clip's frames (and, for a replayed memory, its latents) are there and whole."""
        try:
            frames = np.load(self.clip_path(index), mmap_mode="r")
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                return False
            if replay:
                from safetensors import safe_open

                with safe_open(str(self.latents_path(index)), framework="pt") as f:
                    f.get_slice("latents")
            return True
        except Exception:  # noqa: BLE001 - any reading fault means the clip cannot be used
            return False

    def _set_aside(self, why: str) -> None:
        """A broken resume folder of this run: warn and start afresh (its files are rewritten clip by clip)."""
        for f in self.folder.glob("clip_*"):
            f.unlink(missing_ok=True)
        (self.folder / STATE_FILE).unlink(missing_ok=True)
        self.warnings.append(f"the resume folder '{self.folder}' could not be used ({why}); starting afresh.")

    def replay(self, state: GenerationState | None) -> Iterator[torch.Tensor] | None:
        """What the loop needs to resume ``state``: the finished clips' latents when it keeps no memory."""
        return self.stored_latents(state.next_clip) if state is not None and state.replay else None

    def stored_clips(self, count: int) -> Iterator[np.ndarray]:
        """The first ``count`` stored clips as uint8 ``[n, H, W, 3]`` arrays, one at a time."""
        for i in range(count):
            yield np.load(self.clip_path(i))
