"""MEMO in the shared long-video loop (:func:`letstalk_core.loop.run_clips`; code
``memo/inference.py`` and ``memo/pipelines/video_pipeline.py``; reference/letstalk_memo.md §2.6).

The recipe as the reference runs it: 512² portraits, clips of 16 frames, 20 Euler steps of rectified
flow with one classifier-free guidance scale (3.5) in one batched forward, 30 fps. The memory is the
Diffusion Net's linear-attention state (:class:`~letstalk_core.memory.linear_state.LinearAttentionMemory`):
initialised from the reference image (16 copies as the past frames) and, before every later clip,
decayed and updated once from the last 16 *decoded* frames, re-encoded by the VAE and passed through the
Reference Net. Differences from the reference, all in what is computed, not in the result:

* the reference image's Reference-Net features are computed once per video, not once per clip (and clip
  0's past frames, copies of it, reuse them);
* the last clip's memory update (whose result nothing reads) is skipped;
* the frames decoded for the memory are the frames written out (decoded once);
* each clip's noise comes from its own seed-derived generator (any clip can be resumed alone), where the
  reference draws all clips from one generator.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ...audio.waveform import frame_count, prepare_waveform
from ...audio.windows import frame_windows_range
from ...diffusion.samplers import sample_euler
from ...io.image import prepare_portrait_image
from ...loop import ClipPlan, GenerationSettings, GenerationState, StepInfo, clip_seed, plan_clips, run_clips
from ...memory.linear_state import LinearAttentionMemory
from .conditions import (
    AUDIO_MARGIN,
    initial_past_features,
    memo_speech_features,
    past_features,
    reference_features,
    reference_tokens,
)
from .memory_plan import MemoOptions
from .sampling import MEMO_CFG, MEMO_STEPS, guided_conditions, guided_velocity, memo_schedule

PAST_KEY = "past_frames"  # pixel frames the next memory update still needs (only with overlap)


@dataclass(frozen=True)
class MemoVideo:
    width: int = 512
    height: int = 512
    fps: float = 30.0
    clip_frames: int = 16


@dataclass(frozen=True)
class MemoMemory:
    frames: int = 16  # past frames folded into the memory per update (num_past_frames)


@dataclass(frozen=True)
class MemoConfig:
    """MEMO's inference recipe (``configs/inference.yaml``); ``video.fps`` may be changed by the user."""

    video: MemoVideo = field(default_factory=MemoVideo)
    memory: MemoMemory = field(default_factory=MemoMemory)
    steps: int = MEMO_STEPS
    cfg_scale: float = MEMO_CFG
    family: str = "memo"


@dataclass(frozen=True)
class MemoRecipe:
    sampler: str = "euler"
    steps: int = MEMO_STEPS
    source: str = "MEMO's recipe (configs/inference.yaml)"


@dataclass
class MemoPrepared:
    """A video's conditions, computed once (see :mod:`letstalk_core.families.memo.conditions`)."""

    reference_latent: torch.Tensor  # [1, 4, h, w]
    face_tokens: torch.Tensor  # [1, n, c]
    uncond_face_tokens: torch.Tensor
    ref_features: dict[str, torch.Tensor]  # {layer: [2, ...]}: [uncond, cond]
    features: torch.Tensor  # [padded frames, layers, hidden] on the CPU
    emotions: torch.Tensor  # [padded frames] long
    num_frames: int
    plan: list[ClipPlan]
    audio_seconds: float
    fingerprint: str

    @property
    def reference_tokens(self) -> dict[str, torch.Tensor]:
        return reference_tokens(self.ref_features)


@dataclass
class MemoMemoryState:
    """The loop's memory for MEMO: the linear-attention state and, with overlap, the decoded frames
    the next update still needs."""

    state: LinearAttentionMemory
    past_frames: torch.Tensor | None = None  # [k, 3, H, W] in [-1, 1]


class MemoGenerator:
    """MEMO as a family of :func:`~letstalk_core.loop.run_clips`: ``models`` a
    :class:`~letstalk_core.families.memo.loading.MemoModels`, ``vae`` an :class:`~letstalk_core.autoencoder.sd_vae.SDVAE`,
    ``speech_encoder`` a wav2vec2 :class:`~letstalk_core.audio.wav2vec2.Wav2Vec2Encoder`."""

    replays_memory = True  # its state (GiBs at 512²) is rebuilt on resume from the finished clips' latents

    def __init__(self, models, vae, speech_encoder, *, config: MemoConfig | None = None, device="cpu",
                 dtype=torch.float32, options: MemoOptions | None = None):
        self.models, self.vae, self.speech_encoder = models, vae, speech_encoder
        self.config = config or MemoConfig()
        self.device, self.dtype = torch.device(device), dtype
        self.options = options or MemoOptions()
        self.offload_device = torch.device("cpu")
        # How the Reference Net and the VAE leave and rejoin the device under ``options.offload``: by default
        # moved here; ComfyUI's nodes hand it to model management (``place(part_name, on_device)``).
        self.place: Callable[[str, bool], None] | None = None
        self.schedule = memo_schedule()
        self.recipe = MemoRecipe()
        self._decoded: tuple[int, torch.Tensor] | None = None  # (clip index, its decoded frames)

    # --- preparation -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_portrait(self, image: torch.Tensor, *, size_mode: str = "model") -> torch.Tensor:
        """Portrait → its VAE latent ``[1, 4, h, w]`` (mean × 0.18215), float32."""
        v = self.config.video
        pixels = prepare_portrait_image(image, v.height, v.width, size_mode=size_mode, factor=8)
        return self.vae.encode(pixels.to(self.device), chunk_size=1).float()

    @torch.no_grad()
    def prepare(self, image: torch.Tensor, waveform, sample_rate: int, *, face_embedding: torch.Tensor,
                emotions: torch.Tensor | int | Callable[[torch.Tensor, int], torch.Tensor],
                size_mode: str = "model") -> MemoPrepared:
        """Encode everything a video needs once: ``face_embedding`` ``[512]`` (ArcFace, see
        :mod:`letstalk_core.face.analysis`), ``emotions`` a class for the whole video or a function
        ``(wave16k, padded_frames) -> labels`` (``letstalk_core.audio.emotion.emotion_labels``)."""
        v = self.config.video
        self._parts_on_device(True)  # a cancelled run may have left them offloaded
        wave16k = prepare_waveform(waveform, sample_rate)
        frames = frame_count(int(waveform.shape[-1]), int(sample_rate), v.fps)  # ceil(S·fps), as every family
        features, frames = memo_speech_features(self.speech_encoder, wave16k, v.fps, v.clip_frames, frames=frames)
        padded = features.shape[0]
        if callable(emotions):
            labels = emotions(wave16k, padded).to(torch.long).reshape(-1)
        else:
            labels = torch.full((padded,), int(emotions), dtype=torch.long)
        if labels.shape[0] != padded:
            raise ValueError(f"the emotion track has {labels.shape[0]} labels for {padded} frames.")
        emb = torch.as_tensor(face_embedding, dtype=torch.float32).reshape(1, -1).to(self.device)
        proj = self.models.image_proj
        face = proj(emb.to(self.dtype))
        uncond = proj(torch.zeros_like(emb).to(self.dtype))
        latent = self.encode_portrait(image, size_mode=size_mode)
        ref = reference_features(self.models.reference_net, latent.to(self.dtype), face, uncond)
        fp = hashlib.sha256()
        fp.update(repr((self.config, self.models.folder.path.name, str(self.dtype), self.options)).encode())
        for t in (latent, emb, features, labels):
            fp.update(t.detach().float().cpu().numpy().tobytes())
        seconds = int(waveform.shape[-1]) / int(sample_rate)
        return MemoPrepared(latent, face, uncond, ref, features, labels, frames, plan_clips(frames, v.clip_frames),
                            seconds, fp.hexdigest())

    def plan(self, prepared: MemoPrepared, settings: GenerationSettings) -> list[ClipPlan]:
        return plan_clips(prepared.num_frames, self.config.video.clip_frames, settings.overlap)

    def frame_size(self, prepared: MemoPrepared) -> tuple[int, int]:
        """``(height, width)`` of the decoded frames (the SD VAE's 8× of the latents)."""
        h, w = prepared.reference_latent.shape[-2:]
        return int(h) * 8, int(w) * 8

    def fingerprint(self, prepared: MemoPrepared, settings: GenerationSettings) -> str:
        s = (settings.steps, settings.seed, settings.overlap, settings.use_memory, self.cfg_scale(settings))
        return hashlib.sha256((prepared.fingerprint + repr(s)).encode()).hexdigest()[:32]

    def cfg_scale(self, settings: GenerationSettings) -> float:
        return self.config.cfg_scale if settings.cfg_scale is None else float(settings.cfg_scale)

    # --- the family interface of run_clips ----------------------------------------------------------
    @property
    def state_dtype(self) -> torch.dtype:
        return self.options.state_torch_dtype(self.dtype)

    def _parts_on_device(self, on_device: bool) -> None:
        """Under ``options.offload`` (on an accelerator): the Reference Net and the VAE leave the device
        while the Diffusion Net samples and come back for the memory update and the decode."""
        if not self.options.offload or self.device.type == "cpu":
            return
        for name, module in (("reference_net", self.models.reference_net), ("vae", self.vae)):
            if self.place is not None:
                self.place(name, on_device)
                continue
            target = self.device if on_device else self.offload_device
            if next(module.parameters()).device != target:
                module.to(target)
        if not on_device and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def start_memory(self, prepared: MemoPrepared, settings: GenerationSettings) -> MemoMemoryState:
        """Clip 0: the reference image as all 16 past frames (a new video resets the state)."""
        keep = self.offload_device if self.options.state_on_cpu and self.device.type != "cpu" else None
        state = LinearAttentionMemory(dtype=self.state_dtype, storage=keep)
        p = self.config.memory.frames
        self.models.diffusion_net.update_memory(state, initial_past_features(prepared.ref_features, p), p,
                                                new_video=True)
        return MemoMemoryState(state)

    def clip_memory(self, prepared, memory: MemoMemoryState, settings) -> LinearAttentionMemory:
        return memory.state

    @torch.no_grad()
    def sample_clip(self, prepared: MemoPrepared, clip: ClipPlan, memory: LinearAttentionMemory,
                    settings: GenerationSettings, on_step: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
        """One clip's clean latents ``[1, 4, F, h, w]`` (float32)."""
        from ...audio.emotion import clip_emotion

        f = clip.clip_frames
        h, w = prepared.reference_latent.shape[-2:]
        gen = torch.Generator(device="cpu").manual_seed(clip_seed(settings.seed, clip.index))
        noise = torch.randn((1, 4, f, h, w), generator=gen).to(self.device)
        windows = frame_windows_range(prepared.features, clip.start, clip.start + f, AUDIO_MARGIN)
        audio = self.models.audio_proj(windows[None].to(self.device, self.dtype))
        cond = guided_conditions(reference_tokens=prepared.reference_tokens, face_tokens=prepared.face_tokens,
                                 uncond_face_tokens=prepared.uncond_face_tokens, audio_tokens=audio,
                                 emotion=clip_emotion(prepared.emotions, clip.start, clip.start + f))
        self._parts_on_device(False)
        model_fn = guided_velocity(self.models.diffusion_net, cond, memory, self.cfg_scale(settings),
                                   sequential=self.options.sequential_guidance)
        callback = None
        if on_step is not None:
            def callback(info: dict) -> None:
                on_step(StepInfo(clip.index, clip.total, info["step"], info["total"], self.config.memory.frames,
                                 info["denoised"]))
        return sample_euler(model_fn, noise, self.schedule, steps=settings.steps, callback=callback).float()

    @torch.no_grad()
    def remember(self, prepared: MemoPrepared, memory: MemoMemoryState, out: torch.Tensor, clip: ClipPlan,
                 settings: GenerationSettings) -> MemoMemoryState:
        """Decay the state and fold in the last 16 decoded frames (re-encoded, through the Reference Net)."""
        if not settings.use_memory:
            return self.start_memory(prepared, settings)
        frames = self._decode(out, clip, settings.decode_chunk)
        if memory.past_frames is not None:
            frames = torch.cat([memory.past_frames, frames])
        p = self.config.memory.frames
        past = frames[-p:]
        self._parts_on_device(True)
        latents = self.vae.encode(past.to(self.device), chunk_size=self.options.vae_frames(settings.decode_chunk))
        if past.shape[0] < p:  # fewer frames so far than an update takes (overlap): the reference image fills in
            latents = torch.cat([prepared.reference_latent.expand(p - past.shape[0], -1, -1, -1), latents])
        feats = past_features(self.models.reference_net, latents.to(self.dtype), prepared.face_tokens,
                              prepared.uncond_face_tokens, chunk=self.options.reference_chunk)
        self.models.diffusion_net.update_memory(memory.state, feats, p, new_video=False)
        overlapping = settings.overlap > 0  # clips then emit fewer frames than an update takes
        return MemoMemoryState(memory.state, past.clone() if overlapping else None)

    def memory_to_state(self, memory: MemoMemoryState) -> dict[str, torch.Tensor]:
        """The state's tensors (references: the memory replaces its tensors, never writes into them)."""
        out = dict(memory.state.state_dict())
        if memory.past_frames is not None:
            out[PAST_KEY] = memory.past_frames
        return out

    def memory_from_state(self, stored: dict[str, torch.Tensor]) -> MemoMemoryState:
        stored = dict(stored)
        past = stored.pop(PAST_KEY, None)
        state = LinearAttentionMemory(dtype=self.state_dtype)
        state.load_state_dict({k: v.to(self.device) for k, v in stored.items()})
        return MemoMemoryState(state, past)

    def iter_clips(self, prepared: MemoPrepared, settings: GenerationSettings, *, state: GenerationState | None = None,
                   on_step: Callable[[StepInfo], None] | None = None, replay=None):
        """The loop (:func:`~letstalk_core.loop.run_clips`); ``replay``: the finished clips' latents, to
        resume ``state`` (MEMO's memory is rebuilt from them, not saved)."""
        return run_clips(self, prepared, settings, state=state, on_step=on_step, replay=replay)

    def forget_decoded(self) -> None:
        self._decoded = None

    # --- decoding ----------------------------------------------------------------------------------
    def _decode(self, latents: torch.Tensor, clip: ClipPlan, chunk: int) -> torch.Tensor:
        """The clip's emitted frames ``[n, 3, H, W]`` in [-1, 1] (float32, CPU), decoded once."""
        if self._decoded is not None and self._decoded[0] == clip.index:
            return self._decoded[1]
        z = latents[0, :, :clip.emitted].transpose(0, 1)
        self._parts_on_device(True)
        chunk = self.options.vae_frames(chunk)
        frames = torch.cat([x.float().cpu() for x in self.vae.iter_decode(z.to(self.vae_dtype), chunk_size=chunk)])
        self._decoded = (clip.index, frames)
        return frames

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def decode_clip(self, latents: torch.Tensor, clip: ClipPlan, chunk: int) -> Iterator[torch.Tensor]:
        """Decoded frames of the clip's finished frames, chunk by chunk (the memory update's decode, reused)."""
        frames = self._decode(latents, clip, chunk)
        self._decoded = None
        yield from frames.split(chunk)

def load_memo_generator(folder, *, vae, speech_encoder, device="auto", dtype="auto", fps: float | None = None,
                        size: int = 512, options: MemoOptions | None = None) -> MemoGenerator:
    """A :class:`MemoGenerator` from a MEMO folder (checked now, networks loaded on first use), an SD VAE
    (``sd-vae-ft-mse``: a file or folder, see :func:`~letstalk_core.autoencoder.sd_vae.load_sd_vae`, or a
    loaded :class:`~letstalk_core.autoencoder.sd_vae.SDVAE`) and wav2vec2-base-960h (a file or folder, or
    a loaded encoder). ``fps``: the video's frame rate (MEMO's 30 by default); ``size``: the square frame
    side (MEMO's 512; a multiple of 8)."""
    from ...audio.wav2vec2 import Wav2Vec2Encoder, load_wav2vec2
    from ...autoencoder.sd_vae import SDVAE, load_sd_vae
    from ...devices import pick_device, pick_dtype
    from .loading import load_memo

    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    dt = pick_dtype(dtype, dev) if isinstance(dtype, str) else dtype
    if not isinstance(size, int) or size < 64 or size % 8:
        raise ValueError(f"size must be a multiple of 8 of at least 64 (MEMO was trained at 512); got {size!r}.")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps!r}.")
    models = load_memo(folder, device=dev, dtype=dt)
    if vae is None:
        raise ValueError("MEMO needs the Stable Diffusion VAE (sd-vae-ft-mse): give its file or folder "
                         "(--vae, or models/vae in ComfyUI).")
    if speech_encoder is None:
        raise ValueError("MEMO needs wav2vec2-base-960h: give its folder or file (--speech-encoder, or "
                         "models/audio_encoders in ComfyUI).")
    vae = vae if isinstance(vae, SDVAE) else load_sd_vae(vae, device=dev, dtype=dt)
    encoder = speech_encoder if isinstance(speech_encoder, Wav2Vec2Encoder) else load_wav2vec2(speech_encoder)
    encoder = encoder.to(dev).eval()
    video = MemoVideo(width=size, height=size, fps=float(fps) if fps else MemoVideo.fps)
    return MemoGenerator(models, vae.to(dev).eval(), encoder, config=MemoConfig(video=video), device=dev, dtype=dt,
                         options=options)


def portrait_face_embedding(image: torch.Tensor, face_models, *, allow_missing: bool = False) -> torch.Tensor:
    """MEMO's face embedding of a portrait ``[3, H, W]`` in [-1, 1] at its own resolution, with the
    MEMO folder's SCRFD + ArcFace (``face_models``: the folder, or a loaded
    :class:`~letstalk_core.face.analysis.FaceAnalyzer`)."""
    from ...face.analysis import FaceAnalyzer, face_embedding

    analyzer = face_models if isinstance(face_models, FaceAnalyzer) else FaceAnalyzer.from_folder(face_models)
    rgb = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return torch.from_numpy(face_embedding(analyzer, rgb, allow_missing=allow_missing))


def emotion_source(choice, emotion2vec_path, generator: MemoGenerator):
    """The ``emotions`` argument of :meth:`MemoGenerator.prepare` for a user's choice: a fixed class, or
    (``auto``) MEMO's label track from emotion2vec_plus_large and the folder's emotion classifier."""
    from ...audio.emotion import emotion_choice, emotion_labels
    from ...audio.emotion2vec import load_emotion2vec

    fixed = emotion_choice(choice, emotion2vec_path)
    if fixed is not None:
        if not 0 <= fixed < 9:
            raise ValueError("MEMO's emotion must be one of its 9 classes or 'auto'; 'none' is only the "
                             "unconditional branch of guidance.")
        return fixed
    encoder = load_emotion2vec(emotion2vec_path).to(generator.device).eval()
    classifier = generator.models.emotion_classifier

    def labels(wave16k: torch.Tensor, frames: int) -> torch.Tensor:
        with torch.no_grad():
            return emotion_labels(wave16k, encoder, lambda x: classifier(x.to(generator.device)), frames)

    return labels
