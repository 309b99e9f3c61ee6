"""The long-video loop every model family shares (letstalk_memo.md §1.7 "Long-duration inference", with
the fixes of §1.12); it imports no family.

1. **Plan.** ``S`` seconds of audio at ``fps`` give exactly ``ceil(S·fps)`` frames, cut into clips of F
   frames; the last clip is padded (with silence) and its extra frames are dropped. The paper's clips
   do not overlap (``overlap = 0``). With ``overlap = m`` (our addition, not in the paper) consecutive
   clips share m frames: clip k+1 starts m frames before clip k ends, is conditioned on the memory of
   the frames just before its start as usual, and the m shared frames are crossfaded in latent space
   (:func:`crossfade`), so a seam becomes a short blend instead of a one-frame jump.
2. **Loop with the family's memory** (:class:`ClipFamily`, :func:`run_clips`): each clip is sampled from
   the memory of the clips before it, then remembered. What the memory is, and how a clip is sampled,
   is the family's: LetsTalk (``families.letstalk``) keeps a FIFO of clean latents, MEMO
   (``families.memo``) a decayed linear-attention state.
3. **Stream.** Each finished clip is decoded in chunks and handed to a sink (a video file, a list), so
   peak memory does not grow with the audio's length. After each clip a small
   :class:`GenerationState` can be saved; a run resumed from it gives frames identical to an
   uninterrupted run (every clip's noise comes from its own seed-derived generator).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch

from .diffusion.guidance import GuidanceScales

OVERLAP_TAG = "letstalk_overlap"  # MP4 tag: frames consecutive clips share (``letstalk eval`` finds the seams)



def recommended_overlap(clip_frames: int) -> int:
    """The overlap the CLI, the demo and the nodes default to: a quarter of a clip (4 of 16)."""
    return clip_frames // 4


class FrameSink(Protocol):
    """Anything that takes decoded frames ``[n, 3, H, W]`` in [-1, 1] (e.g. ``io.video.VideoWriter``)."""

    def write(self, frames: torch.Tensor) -> None: ...


class ListSink:
    """Collects frames in memory (tests, short clips)."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []

    def write(self, frames: torch.Tensor) -> None:
        self.chunks.append(frames.detach().cpu())

    def frames(self) -> torch.Tensor:
        return torch.cat(self.chunks) if self.chunks else torch.empty(0)


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample: sampler name and steps, guidance scales per modality, seed, decode chunk size,
    whether the memory bank is used (False: every clip sees the portrait as memory, i.e. clips are
    generated independently — the memory ablation) and the frames consecutive clips share and
    crossfade (``overlap``; 0 is the paper's plan, see :func:`plan_clips`) and the share of the
    portrait mixed into each clip's memory (``memory_anchor``; 0 is the paper's memory)."""

    sampler: str = "auto"  # ddim for DDPM models, euler for flow models
    steps: int = 25
    seed: int = 0
    guidance: GuidanceScales = field(default_factory=GuidanceScales)
    decode_chunk: int = 8
    use_memory: bool = True
    overlap: int = 0
    memory_anchor: float = 0.0
    cfg_scale: float | None = None  # MEMO: its one guidance scale over all conditions (None: the recipe's 3.5)

    def __post_init__(self) -> None:
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"overlap must be an integer >= 0 (frames shared by consecutive clips); got {self.overlap!r}.")
        if isinstance(self.memory_anchor, bool) or not isinstance(self.memory_anchor, (int, float)) \
                or not 0.0 <= self.memory_anchor <= 1.0:
            raise ValueError(f"memory_anchor must be a number from 0 to 1 (the share of the portrait mixed into the "
                             f"memory); got {self.memory_anchor!r}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1; got {self.steps!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2^63); got {self.seed!r}.")
        if isinstance(self.decode_chunk, bool) or not isinstance(self.decode_chunk, int) or self.decode_chunk < 1:
            raise ValueError(f"decode_chunk must be an integer >= 1; got {self.decode_chunk!r}.")
        if isinstance(self.guidance, dict):
            object.__setattr__(self, "guidance", GuidanceScales(**self.guidance))


@dataclass(frozen=True)
class ClipPlan:
    """Clip ``index`` of ``total`` covers output frames ``[start, start + frames)``; it is sampled with
    ``clip_frames`` frames, the ones past ``frames`` being padding. Its first ``head`` frames are
    shared with the previous clip and its last ``tail`` frames with the next one (both 0 without
    overlap). Once sampled, it completes output frames ``[start, start + emitted)``; its tail waits
    for the next clip to be crossfaded."""

    index: int
    total: int
    start: int
    frames: int
    clip_frames: int
    head: int = 0
    tail: int = 0

    @property
    def emitted(self) -> int:
        return self.frames - self.tail


def max_overlap(clip_frames: int) -> int:
    """The largest overlap: fewer than half a clip, so every seam's blend ends before the next begins."""
    return (clip_frames - 1) // 2


def plan_clips(num_frames: int, clip_frames: int, overlap: int = 0) -> list[ClipPlan]:
    """Cut ``num_frames`` into clips of ``clip_frames`` with a stride of ``clip_frames - overlap``: the
    fewest clips that cover every frame (the last one padded). ``overlap = 0`` is the paper's plan,
    ``ceil(num_frames / clip_frames)`` clips side by side."""
    if num_frames < 1:
        raise ValueError(f"nothing to generate: the audio gives {num_frames} frames.")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= max_overlap(clip_frames):
        raise ValueError(f"overlap must be an integer from 0 to {max_overlap(clip_frames)} for clips of {clip_frames} "
                         f"frames (fewer than half a clip); got {overlap!r}.")
    stride = clip_frames - overlap
    total = 1 if num_frames <= clip_frames else math.ceil((num_frames - clip_frames) / stride) + 1
    return [ClipPlan(i, total, i * stride, min(clip_frames, num_frames - i * stride), clip_frames,
                     head=overlap if i > 0 else 0, tail=overlap if i < total - 1 else 0)
            for i in range(total)]


def padded_frame_count(num_frames: int, clip_frames: int) -> int:
    """Audio frames that cover the last clip of any plan of ``num_frames`` (every clip starts before
    ``num_frames``, so ``num_frames + clip_frames - 1`` always suffice)."""
    return num_frames + clip_frames - 1


def crossfade(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Blend the ``m`` frames two consecutive clips share, ``[B, C, m, h, w]`` each: frame j takes
    ``(j + 1) / (m + 1)`` of the new clip, a linear ramp from the old clip to the new one. Both clips
    were sampled for the same audio frames, so the blend is a short dissolve between two takes of the
    same motion (the overlap-and-blend of long-video diffusion, applied to finished clean latents
    because the memory bank makes the clips sequential)."""
    if previous.shape != current.shape:
        raise ValueError(f"crossfade needs two equal shapes, got {tuple(previous.shape)} and {tuple(current.shape)}.")
    m = current.shape[2]
    w = torch.arange(1, m + 1, device=current.device, dtype=torch.float32) / (m + 1)
    w = w.view(1, 1, m, 1, 1)
    return (previous.float() * (1 - w) + current.float() * w).to(current.dtype)


def clip_seed(seed: int, index: int) -> int:
    """The noise seed of clip ``index``: independent per clip, so any clip can be resampled alone."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class GenerationState:
    """Where a run stands after a clip: the next clip to make, the memory it needs and, with overlap,
    the previous clip's tail still to be crossfaded. ``fingerprint`` ties it to one (model, inputs,
    settings), so it cannot resume a different run by mistake; ``threads`` is the CPU pool it ran with
    (sums split over another count round differently, so a resume uses the same).

    A family whose memory is large and rebuilt from the finished clips (MEMO: ``replays_memory``) keeps
    no memory here (``memory`` is None): a resume replays each finished clip's latents through the
    family's ``remember``, which the loop's caller stores beside the clip's frames."""

    next_clip: int
    memory: torch.Tensor | dict[str, torch.Tensor] | None  # LetsTalk: latent frames; None: rebuilt by replay
    fingerprint: str
    tail: torch.Tensor | None = None
    threads: int | None = None

    @property
    def replay(self) -> bool:
        return self.memory is None

    def nbytes(self) -> int:
        tensors = [] if self.memory is None else self.memory.values() if isinstance(self.memory, dict) else [self.memory]
        return sum(t.numel() * t.element_size() for t in [*tensors, *([self.tail] if self.tail is not None else [])])

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        if self.memory is None:
            tensors = {}
        elif isinstance(self.memory, dict):
            tensors = {f"memory/{k}": v.detach().cpu().contiguous() for k, v in self.memory.items()}
        else:
            tensors = {"memory": self.memory.detach().cpu().contiguous()}
        if self.tail is not None:
            tensors["tail"] = self.tail.detach().cpu().contiguous()
        meta = {"next_clip": str(self.next_clip), "fingerprint": self.fingerprint,
                "memory": "replay" if self.memory is None else "stored"}
        if self.threads:
            meta["threads"] = str(int(self.threads))
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: an interrupted save never leaves a broken state file
        return path

    @classmethod
    def load(cls, path) -> "GenerationState":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "next_clip" not in meta or "fingerprint" not in meta:
                raise ValueError(f"'{path}' is not a LetsTalk generation state file.")
            keys = list(f.keys())
            tail = f.get_tensor("tail") if "tail" in keys else None
            if meta.get("memory") == "replay":
                memory = None
            elif "memory" in keys:
                memory = f.get_tensor("memory")
            else:
                memory = {k[len("memory/"):]: f.get_tensor(k) for k in keys if k.startswith("memory/")}
            threads = int(meta["threads"]) if meta.get("threads") else None
            return cls(int(meta["next_clip"]), memory, meta["fingerprint"], tail, threads)


@dataclass
class StepInfo:
    """Progress of one sampling step: clip k of N, step s of S, the memory frames in use and the
    current denoised estimate (latents) for previews."""

    clip: int
    clips: int
    step: int
    steps: int
    memory_frames: int
    denoised: torch.Tensor


class ClipFamily(Protocol):
    """What differs between model families (LetsTalk:
    :class:`letstalk_core.families.letstalk.generator.LetsTalkGenerator`; MEMO:
    :class:`letstalk_core.families.memo.generator.MemoGenerator`); :func:`run_clips` is the loop they share.

    ``memory`` is the family's own: LetsTalk's latent frames, MEMO's linear-attention state."""

    device: torch.device

    def plan(self, prepared, settings: GenerationSettings) -> list[ClipPlan]: ...
    def frame_size(self, prepared) -> tuple[int, int]: ...
    def fingerprint(self, prepared, settings: GenerationSettings) -> str: ...
    def start_memory(self, prepared, settings: GenerationSettings): ...
    def clip_memory(self, prepared, memory, settings: GenerationSettings): ...
    def sample_clip(self, prepared, clip: ClipPlan, memory, settings: GenerationSettings,
                    on_step: Callable[[StepInfo], None] | None = None) -> torch.Tensor: ...
    def remember(self, prepared, memory, out: torch.Tensor, clip: ClipPlan, settings: GenerationSettings): ...
    def memory_to_state(self, memory): ...
    def memory_from_state(self, stored): ...


def run_clips(family: ClipFamily, prepared, settings: GenerationSettings, *, state: GenerationState | None = None,
              on_step: Callable[[StepInfo], None] | None = None,
              replay: Iterable[torch.Tensor] | None = None) -> Iterator[tuple[ClipPlan, torch.Tensor, GenerationState]]:
    """The long-video loop of every family: yield ``(clip, latents, state after the clip)`` for every
    clip from ``state`` on. ``latents`` ``[1, C, clip.emitted, h, w]`` are the finished output frames
    ``[clip.start, clip.start + clip.emitted)``: the clip's head crossfaded with the previous clip's
    tail, its tail held back. The memory is updated after every clip but the last.

    A family with ``replays_memory`` keeps no memory in the yielded states; to resume it, ``replay``
    gives the finished clips' yielded latents in order, and the memory is rebuilt by running the
    family's ``remember`` over them exactly as the interrupted run did (bit-identical, and a clip's
    resume data is its latents, not the memory)."""
    fp = family.fingerprint(prepared, settings)
    plan = family.plan(prepared, settings)
    replays = bool(getattr(family, "replays_memory", False))
    memory, tail, first = None, None, 0
    if state is not None:
        if state.fingerprint != fp:
            raise ValueError("this saved state belongs to another run (different model, portrait, audio or "
                             "settings); delete it or resume with the exact same inputs.")
        first = state.next_clip
        tail = None if state.tail is None else state.tail.to(family.device, torch.float32)
        if state.memory is not None:
            memory = family.memory_from_state(state.memory)
        elif first:
            if not replays or replay is None:
                raise ValueError("this saved state keeps no memory: resume it with the finished clips' latents "
                                 "(the resume folder's clip_*.latents.safetensors).")
            memory = family.start_memory(prepared, settings)
            done = 0
            for clip, latents in zip(plan[:first], replay):
                memory = family.remember(prepared, memory, latents.to(family.device, torch.float32), clip, settings)
                done += 1
            if done != first:
                raise ValueError(f"the resume data holds {done} finished clips' latents; the state needs {first}.")
            getattr(family, "forget_decoded", lambda: None)()
    if memory is None:
        memory = family.start_memory(prepared, settings)
    threads = torch.get_num_threads()
    for clip in plan[first:]:
        latents = family.sample_clip(prepared, clip, family.clip_memory(prepared, memory, settings), settings, on_step)
        out = latents[:, :, :clip.emitted]
        if clip.head:
            out = torch.cat([crossfade(tail, out[:, :, :clip.head]), out[:, :, clip.head:]], dim=2)
        tail = latents[:, :, clip.emitted:clip.frames] if clip.tail else None
        if clip.index + 1 < len(plan):
            memory = family.remember(prepared, memory, out, clip, settings)
        kept = None if replays else family.memory_to_state(memory)
        yield clip, out, GenerationState(clip.index + 1, kept, fp, None if tail is None else tail.detach().cpu(), threads)


def resume_bytes_per_clip(family: ClipFamily, prepared, settings: GenerationSettings) -> int:
    """What a resume folder keeps per clip: its frames as uint8, and for a family that replays its memory (MEMO)
    the clip's latents (float32, 4 channels at an 8× smaller side: a quarter of a frame's pixels in bytes); the
    small state file is rewritten in place."""
    h, w = family.frame_size(prepared)
    frames = max(c.emitted for c in family.plan(prepared, settings))
    latents = frames * h * w // 4 if getattr(family, "replays_memory", False) else 0
    return frames * h * w * 3 + 128 + latents


def open_video(path, fps, waveform, sample_rate: int, overlap: int, *, metadata: dict[str, str] | None = None,
               **writer_options):
    """A streaming mp4 writer with the sound, tagged with the overlap (``letstalk eval`` reads the tag to
    find the seams): what the CLI, :func:`write_video` and the ComfyUI loop all write through."""
    from .io.video import VideoWriter

    return VideoWriter(path, fps, audio=waveform, audio_rate=sample_rate,
                       metadata={**(metadata or {}), OVERLAP_TAG: str(overlap)}, **writer_options)

