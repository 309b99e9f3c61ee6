"""Per-video-frame speech features: the LetsTalk/Hallo wav2vec2 recipe and a log-mel front end.

* :func:`encode_speech_wav2vec2` follows Hallo ``hallo/datasets/audio_processor.py`` and
  ``hallo/models/wav2vec.py`` (``Wav2VecModel.forward`` + ``linear_interpolation``), which LetsTalk
  reuses (``reference/letstalk_memo.md`` §1.3, ``reference/components.md`` §3.2): normalise the
  16 kHz waveform per utterance, run the CNN feature extractor, linearly interpolate the CNN
  features (``align_corners=True``) to ``ceil(seconds * fps)`` frames *before* the feature
  projection and transformer, and stack ``hidden_states[1:]`` to ``[n_frames, layers, hidden]``.
* :func:`log_mel` is OpenAI Whisper's ``log_mel_spectrogram`` (slaney mel filterbank as
  ``librosa.filters.mel``, power spectrum of a centred 400-point Hann STFT, last frame dropped,
  ``log10`` clamp, ``max - 8`` floor, ``(x + 4) / 4``), without the 30 s padding;
  :func:`encode_speech_mel` averages its 100 Hz frames over each video frame's interval.
  It is the front end for models trained from scratch when no pretrained speech encoder exists.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Mapping

import torch
import torch.nn.functional as F

from ..validation import require_positive, require_tensor
from .wav2vec2 import WAV2VEC2_PRESETS, Wav2Vec2Config, Wav2Vec2Encoder
from .waveform import TARGET_SAMPLE_RATE, as_fraction, frame_count, normalize_waveform, prepare_waveform

__all__ = [
    "MelConfig",
    "SpeechEncoderConfig",
    "SpeechEncoder",
    "mel_filterbank",
    "log_mel",
    "encode_speech_mel",
    "encode_speech_wav2vec2",
]


# --------------------------------------------------------------------------------------------- wav2vec2
def _check_wave16k(wave: torch.Tensor) -> torch.Tensor:
    require_tensor(wave, "wave16k", ndim=1)
    if wave.shape[0] == 0:
        raise ValueError("wave16k is empty (0 samples); give at least one sample of 16 kHz audio.")
    if not wave.is_floating_point():
        raise TypeError(f"wave16k must be a float tensor, got {wave.dtype}.")
    return wave


def _resolve_frames(n_frames, num_samples: int, rate: int, fps) -> int:
    if n_frames is None:
        return frame_count(num_samples, rate, fps)
    require_positive(n_frames, "n_frames", integer=True)
    return n_frames


def _core_ranges(n: int, core: int) -> list[tuple[int, int]]:
    return [(s, min(s + core, n)) for s in range(0, n, core)]


def encode_speech_wav2vec2(model: Wav2Vec2Encoder, wave16k: torch.Tensor, fps, *, normalize: bool = True,
                           max_frames_per_chunk: int | None = None,
                           chunk_overlap: int | None = None, n_frames: int | None = None) -> torch.Tensor:
    """Hallo/LetsTalk wav2vec2 features ``[n_frames, num_layers, hidden]`` for a mono 16 kHz waveform.

    ``n_frames = frame_count(len(wave16k), 16000, fps)``. The waveform is normalised (zero mean, unit
    variance, as wav2vec2-base-960h's feature extractor; pass ``normalize=False`` for checkpoints
    trained without it), zero-padded to the CNN receptive field (400 samples) if shorter, and the
    CNN features are interpolated linearly (``align_corners=True``) to ``n_frames`` before the
    projection and transformer, so the transformer runs at video rate. The transformer attends over
    all frames; for very long audio set ``max_frames_per_chunk`` to run it over overlapping windows
    instead: each window holds a core of ``max_frames_per_chunk - 2 * chunk_overlap`` frames whose
    outputs are kept, plus up to ``chunk_overlap`` context frames on each side (default a quarter of
    the window). Results then differ slightly from the whole-track pass near window edges but
    memory and time grow linearly with the audio's length. ``n_frames`` overrides the frame count
    (used by :class:`SpeechEncoder` to count frames on the audio's original sample rate). Returns
    float32 on the model's device.
    """
    if not isinstance(model, Wav2Vec2Encoder):
        raise TypeError(f"model must be a Wav2Vec2Encoder (see load_wav2vec2), got {type(model).__name__}.")
    wave = _check_wave16k(wave16k)
    n_frames = _resolve_frames(n_frames, wave.shape[0], TARGET_SAMPLE_RATE, fps)
    p = next(model.parameters())
    wave = wave.to(device=p.device, dtype=torch.float32)
    if normalize:
        wave = normalize_waveform(wave)
    rf = model.config.receptive_field
    if wave.shape[0] < rf:
        wave = F.pad(wave, (0, rf - wave.shape[0]))
    with torch.no_grad():
        cnn = model.extract_cnn_features(wave[None])  # [1, T50, C]
        cnn = F.interpolate(cnn.transpose(1, 2), size=n_frames, mode="linear", align_corners=True).transpose(1, 2)
        if max_frames_per_chunk is None or max_frames_per_chunk >= n_frames:
            states = model.transformer(cnn)
            return torch.stack(states[1:], dim=2)[0].to(torch.float32)
        require_positive(max_frames_per_chunk, "max_frames_per_chunk", integer=True)
        overlap = max_frames_per_chunk // 4 if chunk_overlap is None else chunk_overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ValueError(f"chunk_overlap must be an integer >= 0, got {chunk_overlap!r}.")
        core = max_frames_per_chunk - 2 * overlap
        if core < 1:
            raise ValueError(
                f"max_frames_per_chunk ({max_frames_per_chunk}) must exceed 2 * chunk_overlap ({2 * overlap})."
            )
        out = torch.empty(n_frames, model.config.num_layers, model.config.hidden_size, device=p.device)
        for start, stop in _core_ranges(n_frames, core):
            lo, hi = max(0, start - overlap), min(n_frames, stop + overlap)
            states = model.transformer(cnn[:, lo:hi])
            out[start:stop] = torch.stack(states[1:], dim=2)[0, start - lo: stop - lo].to(torch.float32)
        return out


# --------------------------------------------------------------------------------------------- log-mel
@dataclass(frozen=True)
class MelConfig:
    """Whisper-style log-mel settings (16 kHz, 25 ms Hann window, 10 ms hop, 80 slaney mels up to 8 kHz)."""

    sample_rate: int = TARGET_SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    top_db: float = 8.0  # log10 units below the utterance's maximum that are kept (Whisper: 8)

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MelConfig.{name} must be a positive integer, got {value!r}.")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig needs 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={self.f_max}, "
                f"sample_rate={self.sample_rate}."
            )
        if not self.top_db > 0:
            raise ValueError(f"MelConfig.top_db must be > 0, got {self.top_db}.")

    @property
    def frame_rate(self) -> Fraction:
        """Mel frames per second (100 for the defaults)."""
        return Fraction(self.sample_rate, self.hop_length)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MelConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown MelConfig fields {sorted(unknown)}.")
        return cls(**dict(d))


def _hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    mel = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """Slaney-scale, slaney-normalised triangular filters ``[n_mels, n_fft // 2 + 1]`` (``librosa.filters.mel``).

    Computed in float64 and returned as float32.
    """
    n_freqs = cfg.n_fft // 2 + 1
    fft_freqs = torch.linspace(0, cfg.sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, hi = _hz_to_mel_slaney(torch.tensor([cfg.f_min, cfg.f_max], dtype=torch.float64))
    mel_f = _mel_to_hz_slaney(torch.linspace(float(lo), float(hi), cfg.n_mels + 2, dtype=torch.float64))
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
    return (weights * enorm[:, None]).to(torch.float32)


def _zero_extended(wave: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Samples ``[a, b)`` (0 <= a <= b) of ``wave`` followed by zeros, without copying the whole track."""
    real = wave[min(a, wave.shape[0]):min(b, wave.shape[0])]
    extra = (b - a) - real.shape[0]
    return real if extra == 0 else torch.cat([real, real.new_zeros(extra)])


def log_mel(wave16k: torch.Tensor, cfg: MelConfig = MelConfig(), *, length: int | None = None,
            chunk_frames: int = 500) -> torch.Tensor:
    """Whisper log-mel spectrogram ``[n_mels, T // hop]`` of a mono waveform at ``cfg.sample_rate``.

    Frame ``k`` is centred on sample ``k * hop`` (``torch.stft(center=True)``, reflect padding).
    ``length`` (>= the waveform's length) treats the signal as zero-padded (silence) to that many
    samples, without copying it. Signals shorter than ``n_fft`` are zero-padded first. Silence gives the
    constant ``(log10(1e-10) + 4) / 4 = -1.5`` (finite). The STFT runs over ``chunk_frames`` frames at a
    time (5 s by default) on slices of the signal, reflect-padded at its ends only, which gives exactly
    the frames of one whole-track STFT while keeping memory independent of the audio's length.
    """
    wave = _check_wave16k(wave16k).to(torch.float32)
    total = wave.shape[0] if length is None else int(length)
    if total < wave.shape[0]:
        raise ValueError(f"length {total} is shorter than the waveform ({wave.shape[0]} samples).")
    n_frames = max(1, total // cfg.hop_length)
    total = max(total, cfg.n_fft)
    half = cfg.n_fft // 2
    window = torch.hann_window(cfg.n_fft, device=wave.device)
    filters = mel_filterbank(cfg).to(wave.device)
    chunks = []
    for j0 in range(0, n_frames, chunk_frames):
        j1 = min(n_frames, j0 + chunk_frames)
        # samples [a, b) of the reflect-padded signal, taken from the unpadded one (edges reflected here)
        a, b = j0 * cfg.hop_length - half, (j1 - 1) * cfg.hop_length + cfg.n_fft - half
        parts = [_zero_extended(wave, max(a, 0), min(b, total))]
        if a < 0:  # reflect padding: padded[i] = signal[-i]
            parts.insert(0, _zero_extended(wave, 1, 1 - a).flip(0))
        if b > total:  # padded[total + k] = signal[total - 2 - k]
            parts.append(_zero_extended(wave, 2 * total - 1 - b, total - 1).flip(0))
        segment = torch.cat(parts) if len(parts) > 1 else parts[0]
        spec = torch.stft(segment, cfg.n_fft, cfg.hop_length, window=window, center=False, return_complex=True)
        chunks.append(torch.clamp(filters @ spec.abs() ** 2, min=1e-10).log10())
    logspec = torch.cat(chunks, dim=1)
    logspec = torch.maximum(logspec, logspec.max() - cfg.top_db)
    return (logspec + 4.0) / 4.0


def _frame_bounds(n_frames: int, rate: Fraction, fps: Fraction, available: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For video frame ``i``, feature frames ``[ceil(i r / fps), ceil((i+1) r / fps))`` clamped to the track
    (at least one frame: the last available one past the end)."""
    starts, stops = [], []
    for i in range(n_frames):
        a = min(math.ceil(i * rate / fps), available - 1)
        b = min(max(math.ceil((i + 1) * rate / fps), a + 1), available)
        starts.append(a)
        stops.append(b)
    return torch.tensor(starts), torch.tensor(stops)


def encode_speech_mel(wave16k: torch.Tensor, fps, cfg: MelConfig = MelConfig(), *,
                      n_frames: int | None = None, length: int | None = None) -> torch.Tensor:
    """Log-mel features per video frame ``[n_frames, 1, n_mels]``, ``n_frames = frame_count(len, sr, fps)``.

    Video frame ``i`` covers audio ``[i/fps, (i+1)/fps)``; its feature is the mean of the mel frames
    whose centres fall in that interval (at 25 fps: 4 frames of 10 ms). When fps exceeds the mel
    frame rate, or at the very end of the track, the nearest following available frame is used.
    ``length`` zero-pads the signal (silence) to that many samples without copying it (see ``log_mel``).
    """
    if not isinstance(cfg, MelConfig):
        raise TypeError(f"cfg must be a MelConfig, got {type(cfg).__name__}.")
    wave = _check_wave16k(wave16k)
    fps_q = as_fraction(fps)
    n_frames = _resolve_frames(n_frames, wave.shape[0] if length is None else length, cfg.sample_rate, fps_q)
    mel = log_mel(wave, cfg, length=length).T  # [M, n_mels]
    starts, stops = _frame_bounds(n_frames, cfg.frame_rate, fps_q, mel.shape[0])
    csum = torch.cat([torch.zeros(1, mel.shape[1], device=mel.device, dtype=torch.float64),
                      mel.to(torch.float64).cumsum(0)])
    starts, stops = starts.to(mel.device), stops.to(mel.device)
    avg = (csum[stops] - csum[starts]) / (stops - starts).to(torch.float64)[:, None]
    return avg.to(torch.float32)[:, None, :]


# --------------------------------------------------------------------------------------------- wrapper
_KINDS = ("wav2vec2", "mel")


@dataclass(frozen=True)
class SpeechEncoderConfig:
    """Which speech front end produces the per-frame features, and its settings.

    ``kind="wav2vec2"``: the Hallo recipe with a wav2vec2 checkpoint of architecture ``wav2vec2``
    (``normalize`` as the checkpoint was trained; ``max_frames_per_chunk`` for very long audio).
    ``kind="mel"``: the log-mel front end (``mel``). ``layers``/``channels`` give the per-frame
    feature shape ``[layers, channels]`` the audio projector consumes.
    """

    kind: str = "wav2vec2"
    wav2vec2: Wav2Vec2Config = field(default_factory=lambda: WAV2VEC2_PRESETS["wav2vec2-base"])
    normalize: bool = True
    max_frames_per_chunk: int | None = None
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"SpeechEncoderConfig.kind must be one of {_KINDS}, got {self.kind!r}.")
        if isinstance(self.wav2vec2, Mapping):
            object.__setattr__(self, "wav2vec2", Wav2Vec2Config.from_dict(self.wav2vec2))
        if isinstance(self.mel, Mapping):
            object.__setattr__(self, "mel", MelConfig.from_dict(self.mel))
        if not isinstance(self.wav2vec2, Wav2Vec2Config) or not isinstance(self.mel, MelConfig):
            raise TypeError("SpeechEncoderConfig.wav2vec2 / .mel must be a Wav2Vec2Config / MelConfig.")
        if self.max_frames_per_chunk is not None:
            require_positive(self.max_frames_per_chunk, "SpeechEncoderConfig.max_frames_per_chunk", integer=True)
        if not isinstance(self.normalize, bool):
            raise TypeError(f"SpeechEncoderConfig.normalize must be a bool, got {self.normalize!r}.")

    @property
    def layers(self) -> int:
        return self.wav2vec2.num_layers if self.kind == "wav2vec2" else 1

    @property
    def channels(self) -> int:
        return self.wav2vec2.hidden_size if self.kind == "wav2vec2" else self.mel.n_mels

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "wav2vec2": self.wav2vec2.to_dict(),
            "normalize": self.normalize,
            "max_frames_per_chunk": self.max_frames_per_chunk,
            "mel": self.mel.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "SpeechEncoderConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown SpeechEncoderConfig fields {sorted(unknown)}.")
        return cls(**dict(d))


class SpeechEncoder:
    """Audio in, per-video-frame features ``[n_frames, layers, channels]`` out.

    ``SpeechEncoder(config, wav2vec2_model=None)``; a ``wav2vec2`` config needs a loaded
    :class:`Wav2Vec2Encoder` whose architecture matches ``config.wav2vec2`` (hidden size, layers).
    :meth:`encode` accepts what :func:`prepare_waveform` accepts (``[T]``, ``[C, T]``, ``[1, C, T]``).
    """

    def __init__(self, config: SpeechEncoderConfig, wav2vec2_model: Wav2Vec2Encoder | None = None):
        if not isinstance(config, SpeechEncoderConfig):
            raise TypeError(f"config must be a SpeechEncoderConfig, got {type(config).__name__}.")
        if config.kind == "wav2vec2":
            if wav2vec2_model is None:
                raise ValueError(
                    "This speech encoder uses wav2vec2 features but no wav2vec2 model was given. "
                    "Load one with load_wav2vec2 (e.g. wav2vec2-base-960h in models/audio_encoders)."
                )
            if not isinstance(wav2vec2_model, Wav2Vec2Encoder):
                raise TypeError(f"wav2vec2_model must be a Wav2Vec2Encoder, got {type(wav2vec2_model).__name__}.")
            got, want = wav2vec2_model.config, config.wav2vec2
            if (got.hidden_size, got.num_layers) != (want.hidden_size, want.num_layers):
                raise ValueError(
                    f"The wav2vec2 model has hidden size {got.hidden_size} and {got.num_layers} layers, but the "
                    f"checkpoint expects {want.hidden_size} and {want.num_layers}. Load the matching speech encoder "
                    "(base: 768/12, large: 1024/24)."
                )
        self.config = config
        self.model = wav2vec2_model

    @property
    def feature_shape(self) -> tuple[int, int]:
        return self.config.layers, self.config.channels

    def encode(self, waveform, sample_rate, fps) -> torch.Tensor:
        """Features ``[frame_count(T, sample_rate, fps), layers, channels]`` (float32)."""
        wave = prepare_waveform(waveform, sample_rate)
        # Count frames on the original samples (the contract: ceil(seconds * fps)), not the resampled ones.
        n = frame_count(int(waveform.shape[-1]), int(sample_rate), fps)
        return self.encode_prepared(wave, fps, n_frames=n)

    def encode_prepared(self, wave16k: torch.Tensor, fps, *, n_frames: int | None = None,
                        pad_to: int | None = None) -> torch.Tensor:
        """Features of an already prepared mono 16 kHz waveform (``prepare_waveform``'s output).
        ``pad_to`` extends the signal with silence to that many samples (the mel path does so without
        copying the track). ``n_frames`` defaults to ``frame_count(samples, 16000, fps)``."""
        if pad_to is not None and pad_to < wave16k.shape[0]:
            raise ValueError(f"pad_to {pad_to} is shorter than the waveform ({wave16k.shape[0]} samples).")
        if self.config.kind == "wav2vec2":
            if pad_to is not None and pad_to > wave16k.shape[0]:
                wave16k = F.pad(wave16k, (0, pad_to - wave16k.shape[0]))
            return encode_speech_wav2vec2(self.model, wave16k, fps, normalize=self.config.normalize,
                                          max_frames_per_chunk=self.config.max_frames_per_chunk, n_frames=n_frames)
        return encode_speech_mel(wave16k, fps, self.config.mel, n_frames=n_frames, length=pad_to)
