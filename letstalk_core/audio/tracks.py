"""Several speech tracks for one video: a conversation, one voice per face.

Each face of a conversation is driven by its own track, and a face must *listen* while the others speak: its
track is silent there, and silence is what the models learned as a closed, still mouth (``waveform.py``,
:func:`~letstalk_core.audio.waveform.silence_warning`). So the tracks are brought to one rate and padded at the
end with silence to the longest (:func:`align_tracks`): every face's run then has the same frame count, and the
video lasts as long as the longest track. The video's sound is the tracks' sum (:func:`mix_tracks`).
"""
from __future__ import annotations

import torch

from ..validation import require_finite, require_tensor
from .waveform import resample


def _as_channels(wave: torch.Tensor, name: str) -> torch.Tensor:
    require_tensor(wave, name)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[-1] == 0:
        raise ValueError(f"{name} must be a waveform [channels, samples] with samples; got shape {tuple(wave.shape)}.")
    require_finite(wave, name)
    return wave.float()


def align_tracks(tracks: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], int]:
    """``[(waveform [C, T] or [T], rate), ...]`` → the tracks at one rate (the highest of them), each with the
    channel count of the widest (a mono track is repeated), padded at the end with silence to the longest.
    Returns ``([waveform [C, T_max], ...], rate)``; the order is kept (track ``i`` drives face ``i``)."""
    if not tracks:
        raise ValueError("give at least one speech track.")
    rate = max(int(r) for _, r in tracks)
    waves = []
    for i, (wave, r) in enumerate(tracks):
        wave = _as_channels(wave, f"speech track {i + 1}")
        waves.append(resample(wave, int(r), rate) if int(r) != rate else wave)
    channels = max(w.shape[0] for w in waves)
    for i, w in enumerate(waves):
        if w.shape[0] not in (1, channels):
            raise ValueError(f"speech track {i + 1} has {w.shape[0]} channels and another has {channels}; give mono "
                             "or stereo tracks.")
    length = max(w.shape[-1] for w in waves)
    out = []
    for w in waves:
        w = w.expand(channels, -1) if w.shape[0] != channels else w
        out.append(torch.nn.functional.pad(w, (0, length - w.shape[-1])))
    return out, rate


def mix_tracks(waves: list[torch.Tensor]) -> torch.Tensor:
    """The sum of aligned tracks (:func:`align_tracks`), scaled down only where the sum would clip: the result
    is ``sum / max(1, peak)``, so turn-taking speech keeps each voice's own level."""
    if not waves:
        raise ValueError("give at least one track to mix.")
    shapes = {tuple(w.shape) for w in waves}
    if len(shapes) != 1:
        raise ValueError(f"the tracks to mix must be aligned (one rate, one length); got shapes {sorted(shapes)}.")
    total = torch.stack([w.float() for w in waves]).sum(0)
    peak = float(total.abs().max()) if total.numel() else 0.0
    return total / peak if peak > 1.0 else total
