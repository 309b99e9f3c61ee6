"""Waveform preparation: mono downmix, resampling to 16 kHz, per-utterance normalisation, frame timing.

References followed:

* ``resample`` ports ``torchaudio.functional.resample`` (``_get_sinc_resample_kernel`` and
  ``_apply_sinc_resample_kernel``, default ``sinc_interp_hann``, ``lowpass_filter_width=6``,
  ``rolloff=0.99``, rates reduced by their gcd) so no torchaudio is needed (see
  ``reference/components.md`` §3.4).
* ``normalize_waveform`` is transformers' ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
* ``frame_count`` is the project's frame-timing contract (``DESIGN.md``): ``S`` seconds of audio at
  ``fps`` give exactly ``ceil(S * fps)`` frames (Hallo ``audio_processor.py``: ``math.ceil(len / 16000 * fps)``),
  computed with exact rational arithmetic.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import require_finite, require_positive

__all__ = [
    "MIN_AUDIO_SECONDS",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "TARGET_SAMPLE_RATE",
    "resample",
    "prepare_waveform",
    "normalize_waveform",
    "frame_count",
    "as_fraction",
]

MIN_AUDIO_SECONDS = 0.1
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
TARGET_SAMPLE_RATE = 16000
_MAX_CHANNELS = 64
# Above this many kernel elements (reduced new rate x kernel length) the strided-convolution form of
# torchaudio's algorithm is replaced by an equivalent gather form whose memory does not depend on
# the gcd of the two rates (e.g. 44101 Hz -> 16000 Hz would need a 16000 x 44137 kernel).
_MAX_KERNEL_ELEMENTS = 1 << 22


def _check_rate(rate, name: str) -> int:
    """Return ``rate`` as an int, raising an actionable error for non-integral or absurd rates."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of samples per second (e.g. 16000), got {rate!r}.")
    if not math.isfinite(float(rate)) or float(rate) != int(rate):
        raise ValueError(f"{name} must be a whole number of Hz (e.g. 44100), got {rate!r}.")
    rate = int(rate)
    if rate < MIN_SAMPLE_RATE or rate > MAX_SAMPLE_RATE:
        raise ValueError(
            f"{name} is {rate} Hz, outside the supported range {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz. "
            "Check that the AUDIO input carries its real sample rate."
        )
    return rate


def _sinc_kernel(orig: int, new: int, width: int, lowpass_filter_width: int, rolloff: float,
                 dtype: torch.dtype, device) -> torch.Tensor:
    """torchaudio ``_get_sinc_resample_kernel`` (Hann window) for gcd-reduced rates: ``[new, 1, 2w+orig]``."""
    base = min(orig, new) * rolloff
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / orig)
    return kernels


def _resample_gather(x: torch.Tensor, orig: int, new: int, width: int, lowpass_filter_width: int,
                     rolloff: float, out_len: int, chunk: int = 4096) -> torch.Tensor:
    """The same formula as the strided convolution, evaluated per output sample.

    Output ``j`` is ``sum_i x[i] h(base (i/orig - j/new))`` with ``h`` torchaudio's windowed sinc. ``h``
    vanishes for ``|i - j*orig/new| >= width``, so only the ``2*width + 2`` inputs around
    ``j*orig/new`` are gathered (torchaudio's row spans ``2*width + orig``, mostly zeros); tap
    positions are exact integers and the kernel values are computed in float64.
    """
    base = min(orig, new) * rolloff
    taps = torch.arange(-width, width + 2, device=x.device)
    padded = F.pad(x, (width + 1, width + 2))
    out = []
    for start in range(0, out_len, chunk):
        j = torch.arange(start, min(start + chunk, out_len), device=x.device)
        i = ((j * orig) // new)[:, None] + taps[None, :]
        t = (i * new - j[:, None] * orig).to(torch.float64) * (base / (orig * new))
        t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t = t * math.pi
        kern = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
        gathered = padded[:, (i + width + 1).clamp(0, padded.shape[1] - 1)].to(torch.float64)
        out.append(torch.einsum("rjk,jk->rj", gathered, kern).to(x.dtype))
    return torch.cat(out, dim=1)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int, *, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Resample ``waveform [..., T]`` from ``orig_rate`` to ``new_rate`` Hz (band-limited sinc, Hann window).

    A pure-torch port of ``torchaudio.functional.resample`` with its defaults: the rates are reduced by
    their gcd, a bank of ``new`` polyphase sinc kernels of length ``2*width + orig`` is applied with a
    strided convolution, and the output holds ``ceil(T * new_rate / orig_rate)`` samples (computed
    exactly with integers). Equal rates return the input unchanged. Works for any integer rates; when
    the gcd-reduced rates are large (e.g. 44101 -> 16000 Hz) the same formula is evaluated in a
    gather form so memory stays small.
    """
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}.")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be a floating-point tensor, got {waveform.dtype}.")
    for value, name in ((orig_rate, "orig_rate"), (new_rate, "new_rate")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
            isinstance(value, (float, np.floating)) and float(value).is_integer()
        ):
            raise ValueError(f"{name} must be a whole number of Hz, got {value!r}.")
        if value <= 0:
            raise ValueError(f"{name} must be > 0 Hz, got {value!r}.")
    if not isinstance(lowpass_filter_width, int) or lowpass_filter_width <= 0:
        raise ValueError(f"lowpass_filter_width must be a positive integer, got {lowpass_filter_width!r}.")
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    length = x.shape[-1]
    out_len = -(-new * length // orig)
    if new * (2 * width + orig) <= _MAX_KERNEL_ELEMENTS:
        kernel = _sinc_kernel(orig, new, width, lowpass_filter_width, rolloff, waveform.dtype, waveform.device)
        padded = F.pad(x, (width, width + orig))
        y = F.conv1d(padded[:, None], kernel, stride=orig)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]
    else:
        y = _resample_gather(x, orig, new, width, lowpass_filter_width, rolloff, out_len)
    return y.reshape(*shape[:-1], y.shape[-1])


def as_fraction(fps) -> Fraction:
    """``fps`` as an exact Fraction: ints and Fractions as they are, floats via ``limit_denominator(1001)``
    (so 29.97 is 2997/100 and 30000/1001 stays 30000/1001)."""
    if isinstance(fps, Fraction):
        value = fps
    elif isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number of frames per second (e.g. 25), got {fps!r}.")
    elif isinstance(fps, (int, np.integer)):
        value = Fraction(int(fps))
    else:
        if not math.isfinite(float(fps)):
            raise ValueError(f"fps must be a finite number, got {fps!r}.")
        value = Fraction(float(fps)).limit_denominator(1001)
    if value <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}.")
    return value


def frame_count(num_samples: int, sample_rate: int, fps) -> int:
    """Number of video frames for ``num_samples`` of audio: exactly ``ceil(num_samples / sample_rate * fps)``.

    Exact rational arithmetic, so 4.0 s at 25 fps is 100 frames (not 101 through float error), one
    sample gives one frame and zero samples give zero frames. ``fps`` may be a float (29.97) or a
    ``fractions.Fraction`` (30000/1001).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"num_samples must be an integer, got {num_samples!r}.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    require_positive(int(sample_rate) if isinstance(sample_rate, np.integer) else sample_rate,
                     "sample_rate", integer=True)
    return math.ceil(Fraction(int(num_samples), int(sample_rate)) * as_fraction(fps))


def normalize_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance normalisation over the last axis: ``(x - mean) / sqrt(var + 1e-7)``.

    transformers ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` (population variance), the
    normalisation wav2vec2-base-960h was trained with. Statistics are taken in float64; silence maps
    to zeros (no division by zero thanks to the 1e-7).
    """
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}.")
    if waveform.shape[-1] == 0:
        raise ValueError("Cannot normalise an empty waveform (0 samples).")
    x = waveform.to(torch.float64)
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + 1e-7)).to(waveform.dtype if waveform.is_floating_point() else torch.float32)


def _to_tensor(waveform) -> torch.Tensor:
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(
            f"waveform must be a torch.Tensor or numpy array ([T], [C, T] or ComfyUI AUDIO [1, C, T]), "
            f"got {type(waveform).__name__}."
        )
    if not (waveform.is_floating_point()):
        raise TypeError(
            f"waveform must hold floating-point samples in -1..1, got dtype {waveform.dtype}. "
            "Convert integer PCM first (e.g. int16 / 32768)."
        )
    return waveform


def prepare_waveform(waveform, sample_rate, *, target_rate: int = TARGET_SAMPLE_RATE) -> torch.Tensor:
    """Turn any speech input into a mono float32 ``[T]`` waveform at ``target_rate`` Hz.

    Accepts ``[T]``, ``[C, T]`` or ComfyUI AUDIO's ``[1, C, T]`` (numpy or torch); channels are
    averaged (stereo or any multichannel layout, as ComfyUI's ``encode_audio`` does), then the
    signal is resampled with :func:`resample`. Raises ``ValueError`` with an actionable message for
    a batch of several clips, empty or too-short audio (< ``MIN_AUDIO_SECONDS``), NaN/inf samples,
    or a sample rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``. Silence is valid. A mono float32
    input already at ``target_rate`` is returned as a view (no copy of a long track); nothing in this
    package modifies it in place.
    """
    x = _to_tensor(waveform)
    rate = _check_rate(sample_rate, "sample_rate")
    target = _check_rate(target_rate, "target_rate")
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(
                f"The AUDIO waveform holds a batch of {x.shape[0]} clips (shape {tuple(x.shape)}); "
                "pass one item at a time (e.g. waveform[i:i+1])."
            )
        x = x[0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(
            f"waveform must have shape [T], [C, T] or [1, C, T], got {tuple(x.shape)}."
        )
    channels, samples = x.shape
    if channels == 0 or samples == 0:
        raise ValueError(
            f"The audio is empty (shape {tuple(waveform.shape)}, 0 samples). Connect an audio input that has sound."
        )
    if channels > _MAX_CHANNELS:
        raise ValueError(
            f"waveform has {channels} channels and {samples} samples (shape {tuple(x.shape)}); this looks like a "
            "[T, C] array. Pass channels first, [C, T] (transpose it)."
        )
    require_finite(x, "The audio waveform", "Fix or re-export the audio file; NaN/inf samples cannot be encoded.")
    seconds = samples / rate
    if seconds < MIN_AUDIO_SECONDS:
        raise ValueError(
            f"The audio is too short: {samples} samples at {rate} Hz = {seconds:.4f} s; at least "
            f"{MIN_AUDIO_SECONDS} s is needed. Use a longer audio clip."
        )
    x = x.to(torch.float32)
    mono = x[0] if channels == 1 else x.mean(dim=0)  # mono input: a view, no copy of a long track
    return resample(mono, rate, target).contiguous()


SILENCE_PEAK = 10 ** (-80 / 20)  # −80 dBFS: below one step of 16-bit audio


def cover_frames(waveform: torch.Tensor, sample_rate: int, num_frames: int, fps) -> torch.Tensor:
    """The track a video of ``num_frames`` at ``fps`` covers: ``[..., T]`` padded with silence (or cut) to exactly
    ``ceil(num_frames · rate / fps)`` samples (DESIGN.md, "Frame timing": ``ceil(S·fps)`` frames cover at most one
    frame more than the track)."""
    rate = _check_rate(sample_rate, "sample_rate")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 0:
        raise ValueError(f"num_frames must be an integer >= 0; got {num_frames!r}.")
    want = math.ceil(num_frames * rate / float(as_fraction(fps)) - 1e-9)
    have = waveform.shape[-1]
    if have < want:
        waveform = F.pad(waveform, (0, want - have))
    return waveform[..., :want]


def silence_warning(waveform, what: str = "The audio") -> str | None:
    """A warning for a track with no sound in it (peak below −80 dBFS), else ``None``; an empty track
    is an error. A silent track is legitimate (a "listening" clip: the face stays closed-mouthed), but
    it is also what a wrong file, a muted channel or a failed decode looks like, so it is reported."""
    x = _to_tensor(waveform)
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (0 samples). Connect an audio input that has sound.")
    peak = float(x.detach().abs().max())
    if peak >= SILENCE_PEAK:
        return None
    return (f"{what} is silent (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS over {x.shape[-1]} samples): "
            "the video will show a listening face with a closed mouth. If it should hold speech, check the file, "
            "its channels, or the node that made it.")
