"""Audio files through PyAV: decode any container PyAV reads to a float waveform, write PCM WAV.

``load_audio`` returns ``(waveform [C, T] float32 in [-1, 1], sample_rate)``; :func:`read_audio` returns
the same with the duration the container declares, so a caller can report a file that decodes to far
less than it claims (:meth:`DecodedAudio.shortfall`: a truncated download or copy). A stream the
decoder cannot read past (corrupt data) is an error, not a short track. Every sample format
is converted exactly: integer formats are divided by their full scale (``s16 / 32768``,
``s32 / 2**31``, ``u8 -> (x - 128) / 128``), float formats are kept as they are, and packed
(interleaved) frames are de-interleaved into channels.

Encoder padding: AAC in MP4/MOV carries a priming frame and pads its last frame. FFmpeg's decoder
drops the priming samples by itself; the end padding it does not drop, so ``load_audio`` trims it
to the duration the container declares (only when the excess lies inside the last decoded frame,
which is exactly the padding case). A file written by :class:`letstalk_core.io.VideoWriter`
therefore loads back with exactly the number of samples that was written. Other containers are
decoded as FFmpeg gives them (MP3 and Opus/Ogg trim their own padding; AAC in Matroska may keep up
to one frame, 1024 samples, of it).
"""
from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..validation import require_file, require_finite, require_positive, require_tensor

#: Full scale of each integer sample format (FFmpeg names, planar and packed share a scale).
_INT_SCALE = {"s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}
#: Containers whose declared stream duration is exact (edit list / sample tables).
_EXACT_DURATION_FORMATS = ("mov", "mp4", "m4a", "3gp")


def _frame_to_float(frame) -> np.ndarray:
    """Convert one decoded ``av.AudioFrame`` to a float32 array ``[C, n]`` in [-1, 1], exactly."""
    channels = frame.layout.nb_channels
    data = frame.to_ndarray()
    fmt = frame.format.name.rstrip("p")
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if fmt == "u8":
        out = (data.astype(np.float32) - 128.0) / 128.0
    elif fmt in _INT_SCALE:
        out = (data.astype(np.float64) / _INT_SCALE[fmt]).astype(np.float32)
    elif fmt in ("flt", "dbl"):
        out = data.astype(np.float32)
    else:
        raise ValueError(f"Unsupported audio sample format '{frame.format.name}'.")
    return np.ascontiguousarray(out)


def _declared_samples(container, stream, rate: int) -> int | None:
    """Samples the container declares for ``stream``, when that figure is exact; else ``None``."""
    if stream.duration is None or stream.time_base is None:
        return None
    if not any(name in container.format.name for name in _EXACT_DURATION_FORMATS):
        return None
    return int(round(stream.duration * stream.time_base * rate))


def _open(path: Path, what: str):
    """Open ``path`` with PyAV, turning its errors into a ``ValueError`` that names the file."""
    import av

    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise ValueError(f"Cannot read {what} '{path}': {exc}. Is it a media file PyAV/FFmpeg can decode?") from exc


#: A decoded track shorter than this share of the declared duration (and by more than
#: ``SHORTFALL_MIN_SECONDS``) is reported as truncated.
SHORTFALL_RATIO = 0.9
SHORTFALL_MIN_SECONDS = 0.25


@dataclass
class DecodedAudio:
    """A decoded track: ``waveform`` ``[C, T]`` float32, ``rate`` in Hz, the file's path and the
    duration its container declares (``None`` where it declares none)."""

    waveform: torch.Tensor
    rate: int
    path: Path
    declared_seconds: float | None

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.rate

    def shortfall(self) -> str | None:
        """A warning when the file decodes to far less than its container declares, else ``None``."""
        d = self.declared_seconds
        if d is None or not (self.seconds < SHORTFALL_RATIO * d and d - self.seconds > SHORTFALL_MIN_SECONDS):
            return None
        return (f"'{self.path.name}' decodes to {self.seconds:.2f} s of audio, but its header declares {d:.2f} s: "
                "the file is probably truncated (an interrupted download or copy). The video will cover only the "
                f"{self.seconds:.2f} s that decode; use the complete file for the full length.")


def _declared_seconds(container, stream) -> float | None:
    """The duration the file declares for ``stream`` (stream header, else the container's when the
    audio is its only stream: a video's container duration may be its picture's)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if len(container.streams) == 1 and container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def load_audio(path) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any audio or video file PyAV reads.

    Returns ``(waveform, sample_rate)`` with ``waveform`` a float32 tensor ``[channels, samples]``
    in [-1, 1]. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file with
    no audio stream or one that cannot be decoded (the message names the file and FFmpeg's reason).
    :func:`read_audio` also gives the declared duration, to report truncated files.
    """
    decoded = read_audio(path)
    return decoded.waveform, decoded.rate


def read_audio(path) -> DecodedAudio:
    """:func:`load_audio` with the declared duration (see :class:`DecodedAudio`)."""
    import av

    p = require_file(path, "Audio file")
    with _open(p, "audio file") as container:
        if not container.streams.audio:
            raise ValueError(
                f"'{p}' has no audio stream; give a speech file (wav, mp3, flac, …) or a video with sound."
            )
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = None
        try:
            for frame in container.decode(stream):
                if rate is not None and frame.sample_rate != rate:
                    raise ValueError(
                        f"The sample rate of '{p}' changes mid-stream ({rate} -> {frame.sample_rate} Hz); "
                        "convert it to a constant rate first."
                    )
                rate = frame.sample_rate
                chunks.append(_frame_to_float(frame))
        except av.FFmpegError as exc:
            done = sum(c.shape[1] for c in chunks) / rate if rate else 0.0
            raise ValueError(f"Cannot decode the audio of '{p}' past {done:.2f} s: {exc}. The file is damaged; "
                             "re-export or re-download it (or convert it to WAV with another tool).") from exc
        if not chunks:
            raise ValueError(f"The audio stream of '{p}' holds no samples; give a file with sound.")
        waveform = np.concatenate(chunks, axis=1)
        declared = _declared_samples(container, stream, rate)
        declared_seconds = _declared_seconds(container, stream)
    excess = waveform.shape[1] - declared if declared else 0
    if 0 < excess < chunks[-1].shape[1]:
        waveform = waveform[:, :declared]
    return DecodedAudio(torch.from_numpy(np.ascontiguousarray(waveform)), int(rate), p, declared_seconds)


def as_channels_first(waveform, name: str = "waveform") -> torch.Tensor:
    """Return ``waveform`` (``[T]`` or ``[C, T]`` float tensor) as a finite float32 ``[C, T]`` tensor."""
    require_tensor(waveform, name, ndim=(1, 2))
    if not waveform.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {waveform.dtype}.")
    w = waveform.detach().to("cpu", torch.float32)
    w = w.unsqueeze(0) if w.ndim == 1 else w
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{name} is empty (shape {tuple(waveform.shape)}); give at least one sample.")
    if w.shape[0] > w.shape[1]:
        raise ValueError(
            f"{name} has shape {tuple(waveform.shape)}: more channels than samples. "
            "Give it as [channels, samples] (transpose a [samples, channels] array)."
        )
    return require_finite(w, name)


def save_wav(path, waveform, sample_rate: int) -> Path:
    """Write ``waveform`` (``[C, T]`` or ``[T]`` float in [-1, 1]) as a 16-bit PCM WAV file.

    Values outside [-1, 1] are refused (``ValueError``), not clipped. Samples are scaled by 32768
    (the scale ``load_audio`` divides by, so ``k / 32768`` round-trips exactly); +1.0 itself maps to
    the largest code, 32767. Returns the written path.
    """
    require_positive(sample_rate, "sample_rate", integer=True)
    w = as_channels_first(waveform)
    peak = float(w.abs().max())
    if peak > 1.0:
        raise ValueError(
            f"waveform peaks at {peak:.3f}, outside [-1, 1]; normalise it (divide by its peak) before saving."
        )
    pcm = torch.round(w * 32768.0).clamp(-32768, 32767).to(torch.int16).T.contiguous().numpy()
    p = Path(path)
    with wave.open(str(p), "wb") as out:
        out.setnchannels(w.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.astype("<i2").tobytes())
    return p
