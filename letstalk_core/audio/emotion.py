"""MEMO's per-frame and per-clip emotion labels from speech, natively (reference/letstalk_memo.md §2.4).

* :func:`emotion_labels` follows ``memo/utils/audio_utils.py::extract_audio_emotion_labels``: the first
  2 s, then 3 s windows every second (``wav[i - sr : i + 2 sr]`` for ``i`` in ``range(sr, len - sr, sr)``),
  then the last 2 s are each ``F.layer_norm``-ed over the whole window, encoded by emotion2vec
  (:class:`letstalk_core.audio.emotion2vec.Emotion2vecEncoder`), mean-pooled over time and classified
  (:class:`letstalk_core.families.memo.projections.EmotionClassifier`; MEMO applies a second softmax before
  ``argmax``, kept). Each window labels one second of samples (the first and last second, and
  ``[i, i + sr)``; later writes win), and the per-sample track is nearest-interpolated to ``frames``.
* :func:`clip_emotion` is how MEMO picks one label per clip: ``inference.py`` slices the frame labels
  ``[t * 16, min((t + 1) * 16, n))`` and ``memo/pipelines/video_pipeline.py`` conditions on
  ``torch.mode(slice).values`` (the most frequent label; ties go to the smallest, CPU ``torch.mode``).
  With CFG the unconditional half uses the null class :data:`NULL_EMOTION` (= 9 = ``emotion_class_num``).

MEMO's caller details, kept with the caller: the waveform is the input file's **first channel** at
16 kHz (``torchaudio.load`` → ``wav[0]``), not the vocal-separated track (training used vocals,
``scripts/prepare_data.py``), and ``frames`` is ``preprocess_audio``'s ``audio_length``, i.e.
``ceil(samples / 16000 * fps)`` padded up to a multiple of the 16-frame clip.

Class names: MEMO does not publish its classifier's classes. :data:`EMOTION_CLASSES` is emotion2vec+'s
9-class order (angry … unknown), the best-known guess; that MEMO's classifier was trained on that order
is *not verified*.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from ..validation import require_tensor
from .emotion2vec import DOWNLOAD_HINT

__all__ = [
    "EMOTION_CLASSES",
    "NULL_EMOTION",
    "clip_emotion",
    "clip_emotions",
    "emotion_choice",
    "emotion_labels",
    "emotion_windows",
    "parse_emotion_choice",
]

EMOTION_CLASSES = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
NULL_EMOTION = len(EMOTION_CLASSES)  # MEMO's unconditional row of the emotion embedding
SAMPLE_RATE = 16000


def emotion_windows(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[slice, slice]]:
    """``(window, labelled samples)`` pairs in MEMO's order, as Python slices of the waveform/labels
    (``extract_audio_emotion_labels``: start, per-second middles, end; later entries overwrite)."""
    n, sr = int(num_samples), int(sample_rate)
    if n <= 0 or sr <= 0:
        raise ValueError(f"Need a positive sample count and rate; got {num_samples} and {sample_rate}.")
    out = [(slice(None, sr * 2), slice(None, sr))]
    for i in range(sr, n - sr, sr):
        out.append((slice(i - sr, i - sr + sr * 3), slice(i, i + sr)))
    out.append((slice(-sr * 2, None), slice(-sr, None)))
    return out


def _window_label(encoder, classifier: Callable, x: torch.Tensor) -> int:
    device = next(encoder.parameters()).device if hasattr(encoder, "parameters") else x.device
    x = x.to(device=device, dtype=torch.float32)
    x = F.layer_norm(x, x.shape).view(1, -1)
    feats = encoder.extract_features(x)
    if isinstance(feats, Mapping):  # FunASR's Emotion2vec returns {"x": ...}
        feats = feats["x"]
    probs = classifier(feats.float().mean(dim=1))
    return int(torch.argmax(torch.softmax(probs.float(), dim=-1), dim=-1).item())


@torch.no_grad()
def emotion_labels(wave16k: torch.Tensor, encoder, classifier: Callable, frames: int, *,
                   sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """MEMO's label track: ``[frames]`` int64 class indices (0..8) for a mono 16 kHz waveform.

    ``encoder``: an :class:`~letstalk_core.audio.emotion2vec.Emotion2vecEncoder` (or anything with
    ``extract_features([1, S]) -> [1, T, D]``); ``classifier``: ``[1, D] -> [1, 9]`` probabilities, e.g.
    :class:`~letstalk_core.families.memo.projections.EmotionClassifier`. Equals ``extract_audio_emotion_labels``
    (see the module doc; the per-sample track costs 8 bytes per sample, ~0.5 GB per hour)."""
    require_tensor(wave16k, "waveform", ndim=1)
    if not wave16k.is_floating_point():
        raise TypeError(f"The waveform must be a float tensor, got {wave16k.dtype}.")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
        raise ValueError(f"frames must be a positive integer (the number of video frames), got {frames!r}.")
    n = wave16k.shape[0]
    need = getattr(getattr(encoder, "config", None), "min_samples", 400)
    if n < need:
        raise ValueError(f"The audio is too short for emotion detection: {n} samples, need at least {need} "
                         f"({need / sample_rate * 1000:.0f} ms at {sample_rate} Hz).")
    wave = wave16k.detach().cpu().float()
    labels = torch.full((n,), -1, dtype=torch.int32)
    for window, fill in emotion_windows(n, sample_rate):
        labels[fill] = _window_label(encoder, classifier, wave[window])
    track = F.interpolate(labels[None, None].float(), size=frames, mode="nearest")[0, 0]
    return track.int().long()


def clip_emotion(labels: torch.Tensor, start: int, end: int) -> int:
    """The label MEMO conditions one clip on: ``torch.mode(labels[start:min(end, len)]).values``."""
    require_tensor(labels, "emotion labels", ndim=1)
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
        raise TypeError(f"start and end must be integers, got {start!r} and {end!r}.")
    clip = labels[start:min(end, labels.shape[0])]
    if start < 0 or clip.numel() == 0:
        raise ValueError(f"The clip [{start}, {end}) holds no frame of the {labels.shape[0]}-frame label track.")
    return int(torch.mode(clip.detach().cpu().to(torch.int32)).values.item())


def clip_emotions(labels: torch.Tensor, frames_per_clip: int = 16) -> list[int]:
    """One label per clip, for clips ``[t * frames_per_clip, (t + 1) * frames_per_clip)`` covering the
    track (the last one may be short), as ``inference.py`` loops over them."""
    require_tensor(labels, "emotion labels", ndim=1)
    if isinstance(frames_per_clip, bool) or not isinstance(frames_per_clip, int) or frames_per_clip <= 0:
        raise ValueError(f"frames_per_clip must be a positive integer, got {frames_per_clip!r}.")
    n = labels.shape[0]
    return [clip_emotion(labels, s, s + frames_per_clip) for s in range(0, n, frames_per_clip)]


def parse_emotion_choice(choice) -> int | None:
    """A user's emotion choice → ``None`` for ``"auto"`` (detect from the audio), else a class index:
    a name of :data:`EMOTION_CLASSES` (any case), its index ``0..8``, or ``"none"`` for MEMO's null class
    :data:`NULL_EMOTION` (no emotion conditioning, what the unconditional CFG branch uses)."""
    options = "'auto', " + ", ".join(f"'{c}'" for c in EMOTION_CLASSES) + ", 'none' or an index 0-8"
    if isinstance(choice, bool):
        raise TypeError(f"Emotion must be one of {options}; got {choice!r}.")
    if isinstance(choice, int):
        if 0 <= choice <= NULL_EMOTION:
            return choice
        raise ValueError(f"Emotion index {choice} is out of range; use {options}.")
    if not isinstance(choice, str):
        raise TypeError(f"Emotion must be one of {options}; got {type(choice).__name__}.")
    key = choice.strip().lower()
    if key == "auto":
        return None
    if key == "none":
        return NULL_EMOTION
    if key in EMOTION_CLASSES:
        return EMOTION_CLASSES.index(key)
    if key.isdigit():
        return parse_emotion_choice(int(key))
    raise ValueError(f"Unknown emotion '{choice}'; use {options}.")


def emotion_choice(choice, encoder_path=None) -> int | None:
    """:func:`parse_emotion_choice`, refusing ``"auto"`` when no emotion2vec file is given (with what to
    download and where, or which fixed emotions to pick instead)."""
    value = parse_emotion_choice(choice)
    if value is None and (encoder_path is None or str(encoder_path).strip() == ""):
        raise ValueError("Emotion 'auto' detects the emotion from the speech with emotion2vec_plus_large, but no "
                         f"emotion2vec file was given. {DOWNLOAD_HINT} Or pick a fixed emotion instead: "
                         + ", ".join(EMOTION_CLASSES) + " (or 'none').")
    return value
