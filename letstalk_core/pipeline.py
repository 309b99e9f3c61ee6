"""The long-video generator (letstalk_memo.md §1.7 "Long-duration inference", with the fixes of §1.12).

1. **Plan.** ``S`` seconds of audio at ``fps`` give exactly ``ceil(S·fps)`` frames, cut into clips of F
   frames; the last clip is padded (with silence) and its extra frames are dropped. The paper's clips
   do not overlap (``overlap = 0``). With ``overlap = m`` (our addition, not in the paper) consecutive
   clips share m frames: clip k+1 starts m frames before clip k ends, is conditioned on the memory of
   the frames just before its start as usual, and the m shared frames are crossfaded in latent space
   (:func:`crossfade`), so a seam becomes a short blend instead of a one-frame jump.
2. **Condition.** The portrait is encoded once by the DC-AE; the speech features of the whole (padded)
   track are computed once; each clip takes its frames' ±w windows, clamped at the track's ends.
3. **Loop with the memory.** Clip 0's memory is the portrait latent repeated f times; each later clip's
   memory is the last f clean latents of the video so far (FIFO, no noise at inference). Optionally
   (``memory_anchor``, our addition) a share of the portrait is mixed into the memory each clip
   (:func:`~letstalk_core.memory.bank.anchor_memory`), so the model's own errors cannot add up. Each clip is
   sampled with multimodal guidance in one batched forward per step.
4. **Stream.** Each finished clip is decoded in chunks and handed to a sink (a video file, a list), so
   peak memory does not grow with the audio's length. After each clip a small
   :class:`GenerationState` can be saved; a run resumed from it gives frames identical to an
   uninterrupted run (every clip's noise comes from its own seed-derived generator).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F

from .audio.waveform import TARGET_SAMPLE_RATE, frame_count, prepare_waveform
from .audio.windows import frame_windows_range
from .autoencoder.dc_ae import encode_frames, iter_decode
from .config import LetsTalkConfig
from .diffusion.guidance import GuidanceScales, guided_model_fn
from .diffusion.samplers import AUTO_SAMPLER, get_sampler
from .diffusion.schedule import make_schedule
from .memory.bank import anchor_memory, initial_memory, update_memory
from .validation import require_finite, require_tensor

MAX_PORTRAIT_SIDE = 8192
# What the CLI, the demo and the nodes default to (README, "Measured on held-out people and speech"):
# the paper's plan (0, 0) lets the demo model's own errors pile up in the memory; these two fix that.
RECOMMENDED_MEMORY_ANCHOR = 0.2


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
class PreparedInputs:
    """Inputs encoded once per run: the portrait latent ``[1, C, h, w]``, the per-frame speech features
    of the padded track ``[n_padded, L, C]``, the exact output frame count and the clip plan without
    overlap (:meth:`LetsTalkGenerator.plan` gives the plan of given settings)."""

    portrait_latent: torch.Tensor
    features: torch.Tensor
    num_frames: int
    plan: list[ClipPlan]
    audio_seconds: float
    fingerprint: str


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


def prepare_portrait_image(image: torch.Tensor, height: int, width: int, *, size_mode: str = "model",
                           factor: int = 32) -> torch.Tensor:
    """Portrait ``[C, H, W]`` or ``[1, C, H, W]`` in [-1, 1] → ``[1, 3, height, width]``.

    Grayscale (C = 1) is replicated to RGB; RGBA (C = 4) is composited over white with its alpha channel
    (given in the same [-1, 1] range). ``size_mode="model"`` centre-crops to the model's aspect ratio and
    resizes to the size it was trained at; ``"keep"`` keeps the image's own size, which must then be a
    multiple of the autoencoder's compression ``factor``."""
    require_tensor(image, "portrait image", ndim=(3, 4))
    x = image[None] if image.ndim == 3 else image
    if x.shape[0] != 1:
        raise ValueError(f"give one portrait, got a batch of {x.shape[0]} images (shape {tuple(image.shape)}).")
    c, h, w = x.shape[1:]
    if c not in (1, 3, 4):
        raise ValueError(f"portrait must have 1 (gray), 3 (RGB) or 4 (RGBA) channels first, got shape {tuple(image.shape)}.")
    if min(h, w) < 8 or max(h, w) > MAX_PORTRAIT_SIDE:
        raise ValueError(f"portrait is {w}×{h} pixels; sides must be between 8 and {MAX_PORTRAIT_SIDE}. Resize it first.")
    require_finite(x, "portrait image")
    x = x.float()
    if c == 1:
        x = x.expand(1, 3, h, w)
    elif c == 4:
        alpha = (x[:, 3:] + 1) / 2
        x = x[:, :3] * alpha + (1 - alpha)
    if size_mode == "keep":
        if h % factor or w % factor:
            raise ValueError(f"portrait is {w}×{h}; with size_mode='keep' both sides must be multiples of {factor} "
                             f"(e.g. {w // factor * factor or factor}×{h // factor * factor or factor}). "
                             "Crop or resize it, or use size_mode='model'.")
        return x.contiguous()
    if size_mode != "model":
        raise ValueError(f"size_mode must be 'model' or 'keep'; got {size_mode!r}.")
    target = height / width
    if h / w > target:  # too tall: crop rows
        ch = round(w * target)
        top = (h - ch) // 2
        x = x[..., top:top + ch, :]
    elif h / w < target:
        cw = round(h / target)
        left = (w - cw) // 2
        x = x[..., :, left:left + cw]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return x.contiguous()


@torch.no_grad()
def encode_speech_track(speech_encoder, config: LetsTalkConfig, waveform, sample_rate: int) -> tuple[torch.Tensor, int, float]:
    """Speech → ``(features [n_padded, L, C] float32 on the CPU, frame count, seconds)``. The frame
    count is ``ceil(S·fps)`` of the original samples; the features cover the padded last clip of any
    plan (:func:`padded_frame_count`; the track is extended with silence, so those frames are silent)."""
    fps = config.video.fps
    wave = prepare_waveform(waveform, sample_rate)  # mono 16 kHz, validated
    samples = int(waveform.shape[-1])  # the frame count comes from the original samples: ceil(S·fps)
    num_frames = frame_count(samples, int(sample_rate), fps)
    padded_frames = padded_frame_count(num_frames, config.video.clip_frames)
    need = math.ceil(padded_frames * TARGET_SAMPLE_RATE / fps)
    features = speech_encoder.encode_prepared(wave, fps, n_frames=padded_frames,
                                              pad_to=max(need, wave.shape[0])).float().cpu()
    return features, num_frames, samples / int(sample_rate)


class LetsTalkGenerator:
    """Generates a talking video of any length from a portrait, a speech track and a model.

    ``model``: :class:`~letstalk_core.dit.transformer.LetsTalkTransformer`; ``dcae``: its autoencoder;
    ``speech_encoder``: a :class:`~letstalk_core.audio.features.SpeechEncoder` matching the config;
    ``recipe``: the checkpoint's :class:`~letstalk_core.checkpoint.InferenceRecipe` (sampler and steps it
    is meant to be run with), when known."""

    def __init__(self, config: LetsTalkConfig, model, dcae, speech_encoder, *, device="cpu", dtype=torch.float32,
                 recipe=None):
        self.config = config
        self.recipe = recipe
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dcae = dcae.to(device=device).eval() if dcae is not None else None  # None: sampling only
        self.speech_encoder = speech_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        self.schedule = make_schedule(config.diffusion)

    # --- preparation -------------------------------------------------------------------------------
    def encode_audio(self, waveform, sample_rate: int) -> tuple[torch.Tensor, int, float]:
        """See :func:`encode_speech_track` (with this generator's speech encoder and config)."""
        return encode_speech_track(self.speech_encoder, self.config, waveform, sample_rate)

    @torch.no_grad()
    def encode_portrait(self, image: torch.Tensor, *, size_mode: str = "model") -> torch.Tensor:
        """Portrait image (see :func:`prepare_portrait_image`) → its latent ``[1, C, h, w]`` (float32)."""
        cfg = self.config
        portrait = prepare_portrait_image(image, cfg.video.height, cfg.video.width, size_mode=size_mode,
                                          factor=cfg.dcae.spatial_compression)
        dcae_dtype = next(self.dcae.parameters()).dtype
        return encode_frames(self.dcae, portrait.to(self.device, dcae_dtype), chunk_size=1).float()

    def assemble(self, portrait_latent: torch.Tensor, features: torch.Tensor, num_frames: int,
                 seconds: float) -> PreparedInputs:
        """Encoded inputs → :class:`PreparedInputs` (the clip plan and the run's fingerprint)."""
        cfg = self.config
        plan = plan_clips(num_frames, cfg.video.clip_frames)
        need = padded_frame_count(num_frames, cfg.video.clip_frames)
        if features.ndim != 3 or features.shape[0] < need:
            raise ValueError(f"the audio features hold {features.shape[0] if features.ndim else 0} frames but "
                             f"{num_frames} frames in clips of {cfg.video.clip_frames} need {need}; encode the audio "
                             "with this model.")
        per_frame = (cfg.speech_encoder.layers, cfg.speech_encoder.channels)
        if tuple(features.shape[1:]) != per_frame:
            raise ValueError(f"the audio features are {tuple(features.shape[1:])} per frame but this model's speech "
                             f"encoder gives {per_frame}; encode the audio with this model.")
        if portrait_latent.ndim != 4 or portrait_latent.shape[0] != 1 or portrait_latent.shape[1] != cfg.dcae.latent_channels:
            raise ValueError(f"the portrait latent has shape {tuple(portrait_latent.shape)} but this model needs "
                             f"[1, {cfg.dcae.latent_channels}, h, w] (a portrait through its DC-AE).")
        fp = hashlib.sha256()
        fp.update(cfg.to_json().encode())
        fp.update(portrait_latent.detach().float().cpu().numpy().tobytes())
        fp.update(features.numpy().tobytes())
        return PreparedInputs(portrait_latent, features, num_frames, plan, seconds, fp.hexdigest())

    @torch.no_grad()
    def prepare(self, image: torch.Tensor, waveform, sample_rate: int, *, size_mode: str = "model") -> PreparedInputs:
        """Encode the portrait and the speech once for a whole run."""
        features, num_frames, seconds = self.encode_audio(waveform, sample_rate)
        latent = self.encode_portrait(image, size_mode=size_mode)
        return self.assemble(latent, features, num_frames, seconds)

    def plan(self, prepared: PreparedInputs, settings: GenerationSettings) -> list[ClipPlan]:
        """The clips of this run (:func:`plan_clips` with the settings' overlap)."""
        return plan_clips(prepared.num_frames, self.config.video.clip_frames, settings.overlap)

    def fingerprint(self, prepared: PreparedInputs, settings: GenerationSettings) -> str:
        """Ties a saved state to (model, inputs, settings); ``auto`` counts as the sampler it picks."""
        resolved = asdict(settings)
        if resolved["sampler"] == "auto":
            resolved["sampler"] = AUTO_SAMPLER[self.schedule.kind]
        return hashlib.sha256((prepared.fingerprint + repr(resolved)).encode()).hexdigest()[:32]

    # --- sampling ----------------------------------------------------------------------------------
    def clip_audio_tokens(self, prepared: PreparedInputs, clip: ClipPlan) -> torch.Tensor:
        windows = frame_windows_range(prepared.features, clip.start, clip.start + clip.clip_frames,
                                      self.config.audio_window)
        return self.model.project_audio(windows[None].to(self.device, self.dtype))

    @torch.no_grad()
    def sample_clip(self, prepared: PreparedInputs, clip: ClipPlan, memory: torch.Tensor,
                    settings: GenerationSettings, on_step: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
        """Sample one clip's clean latents ``[1, C, F, h, w]`` given its memory."""
        c = self.config.dit.in_channels
        h, w = prepared.portrait_latent.shape[-2:]
        gen = torch.Generator(device="cpu").manual_seed(clip_seed(settings.seed, clip.index))
        noise = torch.randn((1, c, clip.clip_frames, h, w), generator=gen).to(self.device)  # sampler state in fp32
        model_fn = guided_model_fn(self.model, portrait=prepared.portrait_latent, audio_tokens=self.clip_audio_tokens(prepared, clip),
                                   memory=memory, scales=settings.guidance, eps_channels=c)
        sampler = get_sampler(settings.sampler, self.schedule)
        callback = None
        if on_step is not None:
            def callback(info: dict) -> None:
                on_step(StepInfo(clip.index, clip.total, info["step"], info["total"], memory.shape[2], info["denoised"]))
        return sampler(model_fn, noise, self.schedule, steps=settings.steps, generator=gen, callback=callback)

    def iter_clips(self, prepared: PreparedInputs, settings: GenerationSettings, *, state: GenerationState | None = None,
                   on_step: Callable[[StepInfo], None] | None = None,
                   replay=None) -> Iterator[tuple[ClipPlan, torch.Tensor, GenerationState]]:
        """See :func:`run_clips` (the loop every model family shares)."""
        return run_clips(self, prepared, settings, state=state, on_step=on_step, replay=replay)

    # --- the family interface of run_clips ----------------------------------------------------------
    def start_memory(self, prepared: PreparedInputs, settings: GenerationSettings) -> torch.Tensor:
        """Clip 0's memory: the portrait latent repeated (§1.7)."""
        return initial_memory(prepared.portrait_latent, self.config.memory.frames)

    def clip_memory(self, prepared: PreparedInputs, memory: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
        """The memory a clip is sampled with: the bank, with the portrait share of ``memory_anchor``."""
        portrait = initial_memory(prepared.portrait_latent, self.config.memory.frames)
        return anchor_memory(memory, portrait, settings.memory_anchor)

    def remember(self, prepared: PreparedInputs, memory: torch.Tensor, out: torch.Tensor, clip: ClipPlan,
                 settings: GenerationSettings) -> torch.Tensor:
        """The memory after a clip: FIFO of the last clean latents (or the portrait, memory off)."""
        if not settings.use_memory:
            return self.start_memory(prepared, settings)
        return update_memory(memory, out)

    def memory_to_state(self, memory: torch.Tensor) -> torch.Tensor:
        return memory.detach().cpu()

    def memory_from_state(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.device, torch.float32)

    @torch.no_grad()
    def decode_clip(self, latents: torch.Tensor, clip: ClipPlan, chunk: int) -> Iterator[torch.Tensor]:
        """Decoded frames ``[n, 3, H, W]`` of the clip's finished frames (``clip.emitted`` of them, as
        :meth:`iter_clips` yields), chunk by chunk."""
        frames = latents[0, :, : clip.emitted].transpose(0, 1)  # [n, C, h, w]
        dcae_dtype = next(self.dcae.parameters()).dtype
        for out in iter_decode(self.dcae, frames.to(dcae_dtype), chunk_size=chunk):
            yield out.float().cpu()

    def generate(self, image: torch.Tensor, waveform, sample_rate: int, sink: FrameSink,
                 settings: GenerationSettings = GenerationSettings(), *, state: GenerationState | None = None,
                 on_state: Callable[[GenerationState], None] | None = None,
                 on_step: Callable[[StepInfo], None] | None = None, size_mode: str = "model") -> PreparedInputs:
        """Generate the whole video into ``sink``; returns the prepared inputs (frame count, plan)."""
        get_sampler(settings.sampler, self.schedule)  # refuse a wrong sampler before any work
        prepared = self.prepare(image, waveform, sample_rate, size_mode=size_mode)
        for clip, latents, new_state in self.iter_clips(prepared, settings, state=state, on_step=on_step):
            for frames in self.decode_clip(latents, clip, settings.decode_chunk):
                sink.write(frames)
            if on_state is not None:
                on_state(new_state)
        return prepared


class ClipFamily(Protocol):
    """What differs between model families (LetsTalk: :class:`LetsTalkGenerator`; MEMO:
    :class:`letstalk_core.unet.generator.MemoGenerator`); :func:`run_clips` is the loop they share.

    ``memory`` is the family's own: LetsTalk's latent frames, MEMO's linear-attention state."""

    device: torch.device

    def plan(self, prepared, settings: GenerationSettings) -> list[ClipPlan]: ...
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


def open_video(path, fps, waveform, sample_rate: int, overlap: int, *, metadata: dict[str, str] | None = None,
               **writer_options):
    """A streaming mp4 writer with the sound, tagged with the overlap (``letstalk eval`` reads the tag to
    find the seams): what the CLI, :func:`write_video` and the ComfyUI loop all write through."""
    from .eval.report import OVERLAP_TAG
    from .io.video import VideoWriter

    return VideoWriter(path, fps, audio=waveform, audio_rate=sample_rate,
                       metadata={**(metadata or {}), OVERLAP_TAG: str(overlap)}, **writer_options)


def write_video(generator: LetsTalkGenerator, image: torch.Tensor, waveform, sample_rate: int, path,
                settings: GenerationSettings = GenerationSettings(), *, on_clip: Callable[[ClipPlan], None] | None = None,
                metadata: dict[str, str] | None = None) -> PreparedInputs:
    """Generate straight into an mp4 with the input's sound (streamed: clips are decoded and encoded
    as they finish). ``on_clip`` is called after each clip (progress). The file is tagged with the
    overlap, so ``letstalk eval`` finds the seams where they are."""
    prepared = generator.prepare(image, waveform, sample_rate)
    with open_video(path, generator.config.video.fps, waveform, sample_rate, settings.overlap,
                    metadata=metadata) as writer:
        for clip, latents, _ in generator.iter_clips(prepared, settings):
            for frames in generator.decode_clip(latents, clip, settings.decode_chunk):
                writer.write(frames)
            if on_clip is not None:
                on_clip(clip)
    return prepared
