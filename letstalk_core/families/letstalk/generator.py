"""LetsTalk as a family of the long-video loop (letstalk_memo.md §1.7 "Long-duration inference", with the
fixes of §1.12; the loop itself is :func:`letstalk_core.loop.run_clips`).

1. **Condition.** The portrait is encoded once by the DC-AE; the speech features of the whole (padded)
   track are computed once; each clip takes its frames' ±w windows, clamped at the track's ends.
2. **Memory.** Clip 0's memory is the portrait latent repeated f times; each later clip's memory is the
   last f clean latents of the video so far (FIFO, no noise at inference). Optionally
   (``memory_anchor``, our addition) a share of the portrait is mixed into the memory each clip
   (:func:`~letstalk_core.memory.bank.anchor_memory`), so the model's own errors cannot add up. Each clip is
   sampled with multimodal guidance in one batched forward per step (:mod:`.guidance`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from ...audio.waveform import TARGET_SAMPLE_RATE, frame_count, prepare_waveform
from ...audio.windows import frame_windows_range
from ...autoencoder.dc_ae import encode_frames, iter_decode
from ...diffusion.samplers import AUTO_SAMPLER, get_sampler
from ...diffusion.schedule import make_schedule
from ...io.image import prepare_portrait_image
from ...loop import (
    ClipPlan,
    FrameSink,
    GenerationSettings,
    GenerationState,
    StepInfo,
    clip_seed,
    open_video,
    padded_frame_count,
    plan_clips,
    run_clips,
)
from ...memory.bank import anchor_memory, initial_memory, update_memory
from .config import LetsTalkConfig
from .guidance import guided_model_fn

# What the CLI, the demo and the nodes default to (README, "Measured on held-out people and speech"):
# the paper's plan (0, 0) lets the demo model's own errors pile up in the memory; these two fix that.
RECOMMENDED_MEMORY_ANCHOR = 0.2


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

    ``model``: :class:`~letstalk_core.families.letstalk.transformer.LetsTalkTransformer`; ``dcae``: its autoencoder;
    ``speech_encoder``: a :class:`~letstalk_core.audio.features.SpeechEncoder` matching the config;
    ``recipe``: the checkpoint's :class:`~letstalk_core.families.letstalk.checkpoint.InferenceRecipe` (sampler and steps it
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

    def frame_size(self, prepared: PreparedInputs) -> tuple[int, int]:
        """``(height, width)`` of the decoded frames."""
        h, w = prepared.portrait_latent.shape[-2:]
        f = self.config.dcae.spatial_compression
        return int(h) * f, int(w) * f

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
