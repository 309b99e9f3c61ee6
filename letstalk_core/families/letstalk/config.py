"""Configurations of the LetsTalk system as validated dataclasses, and the named presets.

A complete model is described by one :class:`LetsTalkConfig`; it is stored as JSON in every
checkpoint's metadata, so a checkpoint needs no side file. The presets follow the released "Lite"
models of LetsTalk (letstalk_memo.md §1.5): S/B/L/XL differ in depth and width only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ...memory.bank import MemoryConfig

PORTRAIT_FUSIONS = ("symbiotic", "siamese", "direct")
AUDIO_FUSIONS = ("direct", "symbiotic")


def _choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


@dataclass(frozen=True)
class DiTConfig:
    """The linear diffusion transformer (letstalk_memo.md §1.5, Lite models).

    ``temporal_heads`` also sets the audio cross-attention heads (softmax heads in the paper's table);
    the spatial ReLU linear attention uses ``hidden_size // linear_head_dim`` heads (head dim 32, as Sana).
    ``mlp_ratio`` is the Mix-FFN expansion: the inverted 1×1 conv maps d → 2·ratio·d.
    """

    depth: int = 12
    hidden_size: int = 768
    temporal_heads: int = 12
    linear_head_dim: int = 32
    mlp_ratio: float = 4.0
    in_channels: int = 32
    patch_size: int = 1
    learn_sigma: bool = True
    audio_dim: int = 768
    portrait_fusion: str = "symbiotic"
    audio_fusion: str = "direct"
    temporal_module: str = "softmax"
    audio_module: str = "cross_attention"
    siamese_depth: int | None = None  # Siamese branch depth; None = same as ``depth``

    def __post_init__(self) -> None:
        for name in ("depth", "hidden_size", "temporal_heads", "linear_head_dim", "in_channels", "patch_size", "audio_dim"):
            _positive_int(getattr(self, name), f"DiTConfig.{name}")
        _choice(self.portrait_fusion, PORTRAIT_FUSIONS, "portrait_fusion")
        _choice(self.audio_fusion, AUDIO_FUSIONS, "audio_fusion")
        if self.hidden_size % self.temporal_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by temporal_heads {self.temporal_heads}.")
        if self.hidden_size % self.linear_head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by linear_head_dim {self.linear_head_dim}.")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0; got {self.mlp_ratio}.")
        if self.siamese_depth is not None:
            _positive_int(self.siamese_depth, "DiTConfig.siamese_depth")
            if self.siamese_depth > self.depth:
                raise ValueError(f"siamese_depth {self.siamese_depth} exceeds depth {self.depth}.")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def linear_heads(self) -> int:
        return self.hidden_size // self.linear_head_dim

    @property
    def ffn_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class VideoConfig:
    """Frame timing and size: clips of ``clip_frames`` at ``fps``, frames of ``height``×``width``."""

    fps: float = 25.0
    clip_frames: int = 16
    height: int = 512
    width: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 1 <= self.fps <= 240:
            raise ValueError(f"fps must be a number in [1, 240]; got {self.fps!r}.")
        _positive_int(self.clip_frames, "VideoConfig.clip_frames")
        _positive_int(self.height, "VideoConfig.height")
        _positive_int(self.width, "VideoConfig.width")


def _sub(cls, value):
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value) if hasattr(cls, "from_dict") else cls(**value)
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


@dataclass(frozen=True)
class LetsTalkConfig:
    """Everything needed to rebuild a LetsTalk generator: transformer, audio front end and projector,
    diffusion process, memory bank, autoencoder and frame timing."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    audio_projector: Any = None  # AudioProjectorConfig
    speech_encoder: Any = None  # SpeechEncoderConfig
    diffusion: Any = None  # DiffusionConfig
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    dcae: Any = "dc-ae-f32c32-sana-1.0"  # preset name or DCAEConfig
    audio_window: int = 2  # ±frames of audio features per video frame (Hallo's audio_margin)

    def __post_init__(self) -> None:
        from ...audio.features import SpeechEncoderConfig
        from ...audio.projector import AudioProjectorConfig
        from ...autoencoder.config import DCAEConfig, get_dcae_config
        from ...diffusion.schedule import DiffusionConfig

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("dit", _sub(DiTConfig, self.dit))
        set_("memory", _sub(MemoryConfig, self.memory))
        set_("video", _sub(VideoConfig, self.video))
        set_("speech_encoder", _sub(SpeechEncoderConfig, self.speech_encoder or SpeechEncoderConfig()))
        set_("diffusion", _sub(DiffusionConfig, self.diffusion or DiffusionConfig()))
        if self.audio_projector is None:
            se = self.speech_encoder
            set_("audio_projector", AudioProjectorConfig(window=2 * self.audio_window + 1, layers=se.layers,
                                                         channels=se.channels, out_dim=self.dit.audio_dim))
        set_("audio_projector", _sub(AudioProjectorConfig, self.audio_projector))
        dcae = get_dcae_config(self.dcae) if isinstance(self.dcae, str) else _sub(DCAEConfig, self.dcae)
        set_("dcae", dcae)
        _positive_int(self.audio_window, "audio_window", minimum=0)
        self._check_consistency()

    def _check_consistency(self) -> None:
        ap, se = self.audio_projector, self.speech_encoder
        if (ap.window, ap.layers, ap.channels) != (2 * self.audio_window + 1, se.layers, se.channels):
            raise ValueError(
                f"audio projector expects windows of {ap.window}×{ap.layers}×{ap.channels} but the speech encoder "
                f"gives {2 * self.audio_window + 1}×{se.layers}×{se.channels}; make them agree."
            )
        if ap.out_dim != self.dit.audio_dim:
            raise ValueError(f"audio projector out_dim {ap.out_dim} != dit.audio_dim {self.dit.audio_dim}.")
        if self.dcae.latent_channels != self.dit.in_channels:
            raise ValueError(
                f"the autoencoder has {self.dcae.latent_channels} latent channels but the transformer expects "
                f"{self.dit.in_channels}; pick a matching DC-AE or set dit.in_channels."
            )
        f = self.dcae.spatial_compression * self.dit.patch_size
        if self.video.height % f or self.video.width % f:
            raise ValueError(f"video size {self.video.height}×{self.video.width} must be a multiple of {f}.")
        if self.diffusion.objective == "flow" and self.dit.learn_sigma:
            raise ValueError("the flow objective predicts a velocity; set dit.learn_sigma=False for it.")
        if self.diffusion.objective == "ddpm" and self.diffusion.learn_sigma != self.dit.learn_sigma:
            raise ValueError(f"dit.learn_sigma ({self.dit.learn_sigma}) and diffusion.learn_sigma "
                             f"({self.diffusion.learn_sigma}) must agree: the sampler reads the variance channels the model outputs.")

    @property
    def latent_size(self) -> tuple[int, int]:
        f = self.dcae.spatial_compression
        return self.video.height // f, self.video.width // f

    def replace(self, **changes) -> "LetsTalkConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {
            "dit": dataclasses.asdict(self.dit),
            "audio_projector": dataclasses.asdict(self.audio_projector),
            "speech_encoder": self.speech_encoder.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "memory": dataclasses.asdict(self.memory),
            "video": dataclasses.asdict(self.video),
            "dcae": self.dcae.to_dict(),
            "audio_window": self.audio_window,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "LetsTalkConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LetsTalkConfig fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "LetsTalkConfig":
        return cls.from_dict(json.loads(text))


# --- presets --------------------------------------------------------------------------------------
# (depth, hidden, softmax heads) of the released Lite models; linear heads = hidden / 32.
DIT_PRESETS: dict[str, dict] = {
    "letstalk-s": dict(depth=12, hidden_size=384, temporal_heads=6),
    "letstalk-b": dict(depth=12, hidden_size=768, temporal_heads=12),
    "letstalk-l": dict(depth=24, hidden_size=1024, temporal_heads=16),
    "letstalk-xl": dict(depth=28, hidden_size=1152, temporal_heads=16),
}
PAPER_PARAMETERS = {"letstalk-b": "0.3 B", "letstalk-l": "0.7 B"}


def tiny_dcae_config():
    """A small DC-AE with the sana structure (residual stages, then EfficientViT stages with multiscale
    attention): 8× compression, 8 latent channels. For tests and benchmarks of the pipeline only."""
    from ...autoencoder.config import DCAEConfig

    return DCAEConfig(
        latent_channels=8, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 16, 32), decoder_block_out_channels=(8, 16, 16, 32),
        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
        upsample_block_type="interpolate", downsample_block_type="conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=1.0,
    )


def _tiny_config(**dit_overrides) -> LetsTalkConfig:
    """A few-hundred-thousand-parameter model for tests: tiny DC-AE, log-mel audio, 2 blocks."""
    from ...audio.features import MelConfig, SpeechEncoderConfig

    dcae = tiny_dcae_config()
    dit = dict(depth=2, hidden_size=64, temporal_heads=2, linear_head_dim=32, mlp_ratio=2.0,
               in_channels=dcae.latent_channels, audio_dim=64)
    dit.update(dit_overrides)
    return LetsTalkConfig(
        dit=DiTConfig(**dit),
        speech_encoder=SpeechEncoderConfig(kind="mel", mel=MelConfig(n_mels=16)),
        audio_projector=None,
        memory=MemoryConfig(frames=2),
        video=VideoConfig(fps=25.0, clip_frames=8, height=4 * dcae.spatial_compression, width=4 * dcae.spatial_compression),
        dcae=dcae,
    )


def demo_dcae_config():
    """The demo DC-AE: the sana structure (residual stages, then EfficientViT stages) at 64×64 px,
    8× compression to 16 latent channels (8×8 latents). ``scaling_factor`` is set by its trainer to
    1/std of the training latents (as the published DC-AEs), so the diffusion sees unit-scale latents."""
    from ...autoencoder.config import DCAEConfig

    return DCAEConfig(
        latent_channels=16, attention_head_dim=16,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(16, 32, 64, 64), decoder_block_out_channels=(16, 32, 64, 64),
        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 2, 2),
        encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
        upsample_block_type="interpolate", downsample_block_type="conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=1.0,
    )


def _demo_config(**dit_overrides) -> LetsTalkConfig:
    """The shipped demo model: 64×64 px at 25 fps, 16-frame clips with 2 memory frames (as the
    authors' sample.yaml), log-mel audio (80 bins, trainable from scratch), a 4-block DiT.

    It is trained with the rectified-flow objective (as Sana trains its linear DiT on DC-AE latents)
    rather than the paper's ε-prediction DDPM: with a few thousand CPU steps, an ε-model's error at
    t ≈ T is multiplied by √((1−ᾱ)/ᾱ) ≈ 156 in its x̂0 (measured: ε-MSE 0.011 → x̂0 error 16.6 after
    1000 steps), which derails sampling; a velocity model's x̂0 error is bounded by σ ≤ 1."""
    from ...audio.features import MelConfig, SpeechEncoderConfig
    from ...audio.projector import AudioProjectorConfig
    from ...diffusion.schedule import DiffusionConfig

    dcae = demo_dcae_config()
    dit = dict(depth=4, hidden_size=128, temporal_heads=4, linear_head_dim=32, mlp_ratio=2.5,
               in_channels=dcae.latent_channels, audio_dim=128, learn_sigma=False)
    dit.update(dit_overrides)
    mel = MelConfig(n_mels=80)
    return LetsTalkConfig(
        dit=DiTConfig(**dit),
        speech_encoder=SpeechEncoderConfig(kind="mel", mel=mel),
        audio_projector=AudioProjectorConfig(window=5, layers=1, channels=mel.n_mels, hidden=256, tokens=8,
                                             out_dim=dit["audio_dim"]),
        diffusion=DiffusionConfig(objective="flow", learn_sigma=False),
        memory=MemoryConfig(frames=2),
        video=VideoConfig(fps=25.0, clip_frames=16, height=8 * dcae.spatial_compression, width=8 * dcae.spatial_compression),
        dcae=dcae,
    )


def preset_names() -> list[str]:
    return sorted([*DIT_PRESETS, "demo", "tiny"])


def get_preset(name: str, **dit_overrides) -> LetsTalkConfig:
    """Return the named preset's full config. ``letstalk-*`` use DC-AE f32c32-sana and wav2vec2-base at
    512 px, 25 fps, 16-frame clips, 2 memory frames (letstalk_memo.md §1.4, §1.5, §1.7)."""
    if name == "tiny":
        return _tiny_config(**dit_overrides)
    if name == "demo":
        return _demo_config(**dit_overrides)
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}.")
    return LetsTalkConfig(dit=DiTConfig(**{**DIT_PRESETS[name], **dit_overrides}))
