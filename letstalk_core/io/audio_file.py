"""Audio files through PyAV: decode any container PyAV reads to a float waveform, write PCM WAV.

``load_audio`` returns ``(waveform [C, T] float32 in [-1, 1], sample_rate)``. Every sample format
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


def load_audio(path) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any audio or video file PyAV reads.

    Returns ``(waveform, sample_rate)`` with ``waveform`` a float32 tensor ``[channels, samples]``
    in [-1, 1]. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file with
    no audio stream or one that cannot be decoded (the message names the file and FFmpeg's reason).
    """
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
            raise ValueError(f"Cannot decode the audio of '{p}': {exc}.") from exc
        if not chunks:
            raise ValueError(f"The audio stream of '{p}' holds no samples; give a file with sound.")
        waveform = np.concatenate(chunks, axis=1)
        declared = _declared_samples(container, stream, rate)
    excess = waveform.shape[1] - declared if declared else 0
    if 0 < excess < chunks[-1].shape[1]:
        waveform = waveform[:, :declared]
    return torch.from_numpy(np.ascontiguousarray(waveform)), int(rate)


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
