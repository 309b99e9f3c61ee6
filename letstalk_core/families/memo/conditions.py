"""MEMO's conditions, computed once per video (code ``memo/utils/audio_utils.py::preprocess_audio``,
``memo/utils/vision_utils.py::preprocess_image``, ``memo/pipelines/video_pipeline.py``;
reference/letstalk_memo.md §2.2, §2.6).

* **Speech** (:func:`memo_speech_features`): wav2vec2-base-960h over the whole track at once, as
  ``preprocess_audio`` does it: the 16 kHz waveform normalised (zero mean, unit variance) *before*
  padding, zero-padded by ``(missing frames) × (16000 // fps)`` samples to a whole number of clips,
  CNN features interpolated linearly to the padded frame count, ``hidden_states[1:]`` stacked
  ``[frames, 12, 768]``. The ±2-frame windows are cut per clip (clamped at the padded track's ends).
* **Reference image** (:func:`reference_features`): its Reference-Net features in both guidance
  branches, once per video. The reference runs the Reference Net on ``[ref, 16 past frames] × 2`` every
  clip with the contexts paired ``image i ↔ context i mod 2``; the reference image's rows never change,
  so they are computed once here and only the past frames go through the net per clip
  (:func:`past_features`, with the same pairing made explicit).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...audio.wav2vec2 import Wav2Vec2Encoder
from ...audio.waveform import TARGET_SAMPLE_RATE, normalize_waveform
from .reference_net import ReferenceNet

AUDIO_MARGIN = 2  # ±2 frames of wav2vec2 features per video frame (5-frame windows)


def memo_frame_counts(samples: int, fps: float, clip_frames: int) -> tuple[int, int]:
    """``(frames, padded frames)``: ``ceil(samples / 16000 · fps)`` and that rounded up to whole clips."""
    frames = math.ceil(samples / TARGET_SAMPLE_RATE * fps)
    padded = frames + (-frames) % clip_frames
    return frames, padded


@torch.no_grad()
def memo_speech_features(encoder: Wav2Vec2Encoder, wave16k: torch.Tensor, fps: float, clip_frames: int, *,
                         frames: int | None = None) -> tuple[torch.Tensor, int]:
    """``(features [padded_frames, layers, hidden] float32 on the CPU, frames)`` for a mono 16 kHz
    waveform, exactly as ``preprocess_audio`` (without its optional vocal separator). ``frames``
    overrides the count taken from the 16 kHz length (the pipeline counts ``ceil(S·fps)`` on the
    original samples; for 16 kHz input both agree)."""
    if not isinstance(encoder, Wav2Vec2Encoder):
        raise TypeError(f"MEMO needs a wav2vec2 encoder (wav2vec2-base-960h), got {type(encoder).__name__}.")
    wave = normalize_waveform(wave16k.to(torch.float32).reshape(-1))
    counted, _ = memo_frame_counts(wave.shape[0], fps, clip_frames)
    frames = counted if frames is None else int(frames)
    padded = frames + (-frames) % clip_frames
    if padded != frames:
        wave = F.pad(wave, (0, (padded - frames) * (TARGET_SAMPLE_RATE // int(fps))))
    p = next(encoder.parameters())
    wave = wave.to(p.device, torch.float32)
    rf = encoder.config.receptive_field
    if wave.shape[0] < rf:
        wave = F.pad(wave, (0, rf - wave.shape[0]))
    cnn = encoder.extract_cnn_features(wave[None])
    cnn = F.interpolate(cnn.transpose(1, 2), size=padded, mode="linear", align_corners=True).transpose(1, 2)
    states = encoder.transformer(cnn)
    return torch.stack(states[1:], dim=2)[0].float().cpu(), frames


def _contexts(face_tokens: torch.Tensor, uncond_face_tokens: torch.Tensor) -> torch.Tensor:
    """``[uncond, cond]`` face tokens, the reference's branch order."""
    return torch.cat([uncond_face_tokens, face_tokens])


@torch.no_grad()
def reference_features(net: ReferenceNet, reference_latent: torch.Tensor, face_tokens: torch.Tensor,
                       uncond_face_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference image's Reference-Net features ``{layer: [2, ...]}``: row 0 with the unconditional
    face tokens, row 1 with the conditional ones (what the reference computes for it every clip)."""
    return net(reference_latent.expand(2, -1, -1, -1), _contexts(face_tokens, uncond_face_tokens), 0)


def reference_tokens(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The attention layers' tokens of :func:`reference_features`: the spatial attention's extra K/V."""
    return {k: f for k, f in features.items() if f.ndim == 3}


def _pairing(past: int) -> list[int]:
    """Context row of past frame ``j`` (1..past) of video ``v``: image ``v·(1+past)+j`` sees ``(v+j) mod 2``."""
    return [(v * (1 + past) + j) % 2 for v in range(2) for j in range(1, past + 1)]


def _as_past(features: dict[str, torch.Tensor], past: int) -> dict[str, torch.Tensor]:
    """Past-frame features ``{layer: [2·past, ...]}`` (video-major) in the layout of
    :func:`split_reference_features`' second output."""
    out = {}
    for key, f in features.items():
        out[key] = f.transpose(1, 2)[..., None] if f.ndim == 3 else f
    return out


def initial_past_features(ref_features: dict[str, torch.Tensor], past: int) -> dict[str, torch.Tensor]:
    """Clip 0's past frames are the reference image repeated ``past`` times: their features are rows of
    :func:`reference_features`, picked with the reference's context pairing (no Reference-Net run)."""
    rows = torch.tensor(_pairing(past), device=next(iter(ref_features.values())).device)
    return _as_past({k: f.index_select(0, rows) for k, f in ref_features.items()}, past)


@torch.no_grad()
def past_features(net: ReferenceNet, past_latents: torch.Tensor, face_tokens: torch.Tensor,
                  uncond_face_tokens: torch.Tensor, *, chunk: int = 0) -> dict[str, torch.Tensor]:
    """Reference-Net features of the past frames' latents ``[P, 4, h, w]`` (oldest first) for both
    guidance branches, each frame with the context the reference pairs it with. ``chunk`` > 0: at most
    that many images per Reference-Net pass (the 2·P images are independent; the activations shrink,
    the features are the same images' features)."""
    p = past_latents.shape[0]
    ctx = _contexts(face_tokens, uncond_face_tokens)[torch.tensor(_pairing(p), device=face_tokens.device)]
    images = past_latents.repeat(2, 1, 1, 1)
    if chunk <= 0 or chunk >= images.shape[0]:
        return _as_past(net(images, ctx, 0), p)
    out: dict[str, torch.Tensor] = {}  # filled in place: no second copy of the features
    for start in range(0, images.shape[0], chunk):
        for k, f in net(images[start:start + chunk], ctx[start:start + chunk], 0).items():
            if k not in out:
                out[k] = f.new_empty((images.shape[0], *f.shape[1:]))
            out[k][start:start + f.shape[0]] = f
    return _as_past(out, p)
