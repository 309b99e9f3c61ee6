"""What flows between the pack's nodes: loaded models (wrapped in ComfyUI's ModelPatcher so model
management places and offloads them), per-frame audio features and a face box. Plain dataclasses;
the socket types are made in :func:`socket_types` so that importing this module needs no ComfyUI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_TYPE = "LETSTALK_MODEL"
DCAE_TYPE = "LETSTALK_DCAE"
SPEECH_TYPE = "LETSTALK_SPEECH_ENCODER"
FEATURES_TYPE = "LETSTALK_AUDIO_FEATURES"
FACE_BOX_TYPE = "LETSTALK_FACE_BOX"


@dataclass
class LoadedModel:
    """A LetsTalk transformer checkpoint: its config, the transformer (in ``patcher``) and the parts
    bundled with it (DC-AE, speech encoder) as ready handles or None."""

    name: str
    config: Any
    transformer: Any
    patcher: Any
    dtype: Any
    dcae: "LoadedDCAE | None" = None
    speech: "LoadedSpeech | None" = None
    metadata: dict = field(default_factory=dict)

    def describe(self) -> str:
        c = self.config
        return (f"{self.name}: {c.video.width}×{c.video.height} at {c.video.fps:g} fps, clips of {c.video.clip_frames}, "
                f"memory {c.memory.frames}, portrait fusion {c.dit.portrait_fusion}, audio fusion {c.dit.audio_fusion}, "
                f"{c.diffusion.objective}, speech {c.speech_encoder.kind}")


@dataclass
class LoadedMemo:
    """A MEMO model folder (models/memo/<name>): its networks (each wrapped in a patcher when first
    loaded), the SD VAE and wav2vec2 it runs with, and where its face-analysis and emotion2vec files are.
    ``config`` is a :class:`letstalk_core.families.memo.generator.MemoConfig` (fps, clip length, memory frames)."""

    name: str
    folder: Any  # Path of the MEMO folder
    config: Any
    models: Any  # letstalk_core.families.memo.loading.MemoModels (on the CPU until placed)
    dtype: Any
    vae: Any  # letstalk_core.autoencoder.sd_vae.SDVAE
    speech: Any  # LoadedSpeech or ComfyUI's AUDIO_ENCODER
    emotion2vec: Any = None  # path of emotion2vec_plus_large, or None
    emotion: str = "auto"  # "auto" (from the speech, needs emotion2vec) or one of MEMO's 9 classes
    allow_no_face: bool = False  # no face found: MEMO's zero face embedding instead of an error
    patchers: dict = field(default_factory=dict)
    family: str = "memo"
    memory_tier: str = "auto"  # auto or a tier of letstalk_core.families.memo.memory_plan.TIERS
    state_dtype: str = "auto"  # the memory state's dtype: auto (the model's) or fp32

    def describe(self) -> str:
        v = self.config.video
        return f"{self.name}: MEMO, {v.width}×{v.height} at {v.fps:g} fps, clips of {v.clip_frames}"


@dataclass
class LoadedDCAE:
    name: str
    module: Any
    patcher: Any


@dataclass
class LoadedSpeech:
    """A speech front end: ``wav2vec2`` module (or None for the parameter-free log-mel front end)."""

    name: str
    wav2vec2: Any = None
    patcher: Any = None


@dataclass
class AudioFeatures:
    """Per-frame speech features of one track, encoded for one model's fps and speech encoder."""

    features: Any  # [n_frames_padded, layers, channels] float32 (CPU)
    num_frames: int  # ceil(seconds × fps): the frames the video will have
    fps: float
    seconds: float
    speech_kind: str
    audio: dict  # the AUDIO it came from


def socket_types():
    """The V3 socket types (needs comfy_api; called when the nodes' schemas are built)."""
    from comfy_api.latest import io

    return (io.Custom(MODEL_TYPE), io.Custom(DCAE_TYPE), io.Custom(SPEECH_TYPE), io.Custom(FEATURES_TYPE),
            io.Custom(FACE_BOX_TYPE))
