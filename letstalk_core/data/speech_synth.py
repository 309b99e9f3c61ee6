"""Synthetic speech for the procedural dataset: a numpy source-filter babbler with mouth tracks.

:func:`synthesize_speech` lays out phrases of words of syllables (optional consonant + vowel),
separated by word gaps and 0.2-0.8 s pauses, as control curves at 1 kHz (voicing amplitude, f0,
three formants, noise-band levels, mouth opening and width). The waveform is built from them:

* voiced sound: a glottal pulse train (f0 with declination, stress, drift and jitter); every pulse
  adds three damped sinusoids, one per formant (parallel formant synthesis, pitch-synchronous);
* consonants: band-limited noise (s, sh, f, plosive bursts), silent or voice-bar closures
  (p t k / b d g), nasal murmur (m n) and approximants (l w).

The mouth curves are derived from the same plan: ``mouth_open`` is the vowel's openness (a > e, o >
i, u) times the syllable's loudness, about 0 in silence and bilabial closures, smoothed with a 50 ms
window (about 30 ms attack and decay); ``mouth_width`` is wide for i/e and round for o/u.
Everything is deterministic in ``seed``; speakers (f0, formant scale, rate) are drawn from it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Rate of the control curves (Hz).
CONTROL_RATE = 1000
#: Vowel -> (F1, F2, F3) Hz (adult textbook values), openness 0..1, width 0..1 (0 round, 1 spread).
VOWELS = {
    "a": ((730, 1090, 2440), 1.00, 0.60),
    "e": ((530, 1840, 2480), 0.62, 0.85),
    "i": ((290, 2290, 3010), 0.30, 1.00),
    "o": ((570, 840, 2410), 0.66, 0.20),
    "u": ((300, 870, 2240), 0.28, 0.05),
}
CONSONANTS = ("p", "b", "t", "d", "k", "g", "m", "n", "s", "sh", "f", "l", "w")
_CONSONANT_P = np.array([8, 6, 10, 7, 8, 4, 9, 9, 10, 5, 7, 9, 5], float)
#: Noise bands (Hz) of the fricatives and bursts.
_BANDS = {"s": (3800, 7500), "sh": (1800, 4500), "f": (900, 7500), "burst": (300, 6000)}
_BANDWIDTHS = (90.0, 110.0, 160.0)
_FORMANT_GAINS = (1.0, 0.55, 0.3)
_NEUTRAL_WIDTH = 0.5
_PULSE_SECONDS = 0.02


@dataclass
class SpeechTrack:
    """A synthetic utterance: ``waveform`` (float32 mono) and its control curves at ``control_rate``.

    ``curves`` holds ``mouth_open`` and ``mouth_width`` (0..1) among others; sample ``j`` of a
    curve covers ``[j / control_rate, (j + 1) / control_rate)`` seconds.
    """

    waveform: np.ndarray
    sample_rate: int
    seconds: float
    seed: int
    control_rate: int = CONTROL_RATE
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    speaker: dict[str, float] = field(default_factory=dict)

    def frame_count(self, fps: float) -> int:
        """Video frames covering the utterance: ``ceil(seconds * fps)``."""
        return math.ceil(round(self.seconds * fps, 6))

    def frame_tracks(self, fps: float) -> dict[str, np.ndarray]:
        """Per-frame ``mouth_open`` and ``mouth_width`` (float32): frame ``i`` averages ``[i/fps, (i+1)/fps)``."""
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
        n = self.frame_count(fps)
        edges = np.arange(n + 1) / fps
        return {name: interval_means(self.curves[name], self.control_rate, edges)
                for name in ("mouth_open", "mouth_width")}


def interval_means(curve: np.ndarray, rate: float, edges: np.ndarray) -> np.ndarray:
    """Means of a piecewise-constant ``curve`` (sample ``j`` on ``[j/rate, (j+1)/rate)``) between ``edges``.

    Past its end the curve holds its last value.
    """
    need = math.ceil(edges[-1] * rate) + 2
    c = np.concatenate([curve, np.full(max(0, need - len(curve)), curve[-1])]).astype(np.float64)
    integral = np.concatenate([[0.0], np.cumsum(c)])  # integral[j] = sum of c[:j] (in samples)
    pos = edges * rate
    lo = np.floor(pos).astype(np.int64)
    at = integral[lo] + (pos - lo) * c[lo]
    return (np.diff(at) / np.diff(pos)).astype(np.float32)


def _hann_smooth(x: np.ndarray, ms: float) -> np.ndarray:
    """Zero-phase smoothing with a normalised Hann window of ``ms`` milliseconds (edges held)."""
    n = max(3, round(ms * CONTROL_RATE / 1000) | 1)
    w = np.hanning(n + 2)[1:-1]
    w /= w.sum()
    pad = n // 2
    xp = np.concatenate([np.full(pad, x[0]), x, np.full(pad, x[-1])])
    return np.convolve(xp, w, mode="valid")


def _sample_speaker(rng: np.random.Generator) -> dict[str, float]:
    f0 = float(rng.uniform(100, 250))
    # Higher voices tend to have shorter vocal tracts: formant scale follows f0 loosely.
    scale = float(np.clip(0.95 + 0.1 * (f0 - 100) / 150 + rng.normal(0, 0.03), 0.9, 1.1))
    return {"f0": f0, "formant_scale": scale, "rate": float(rng.uniform(0.8, 1.25)),
            "f0_range": float(rng.uniform(0.1, 0.25))}


class _Plan:
    """Control-curve targets at ``CONTROL_RATE``, filled segment by segment."""

    KEYS = ("voice", "f0", "F1", "F2", "F3", "G1", "G2", "G3", "s", "sh", "f", "burst", "open", "width")

    def __init__(self, n: int, speaker: dict[str, float]):
        self.n = n
        self.c = {k: np.zeros(n, np.float64) for k in self.KEYS}
        self.c["width"][:] = _NEUTRAL_WIDTH
        self.c["f0"][:] = speaker["f0"]
        self.c["G1"][:], self.c["G2"][:], self.c["G3"][:] = _FORMANT_GAINS
        self.scale = speaker["formant_scale"]

    def put(self, t0: float, t1: float, **values) -> None:
        a, b = round(t0 * CONTROL_RATE), round(t1 * CONTROL_RATE)
        a, b = min(a, self.n), min(b, self.n)
        for key, value in values.items():
            self.c[key][a:b] = value

    def formants(self, t0: float, t1: float, f, gains=_FORMANT_GAINS) -> None:
        self.put(t0, t1, F1=f[0] * self.scale, F2=f[1] * self.scale, F3=f[2] * self.scale,
                 G1=gains[0], G2=gains[1], G3=gains[2])


def _consonant(plan: _Plan, cons: str, t: float, vowel_formants, vowel_width: float, g: float,
               rng: np.random.Generator, rate: float) -> float:
    """Lay out consonant ``cons`` from time ``t``; returns the time it ends."""
    u = lambda lo, hi: float(rng.uniform(lo, hi)) / rate
    plan.formants(t, t + 0.3, vowel_formants)  # coarticulation: formants head for the vowel
    if cons in ("p", "b", "t", "d", "k", "g"):
        voiced = cons in ("b", "d", "g")
        closure = u(0.04, 0.06) if voiced else u(0.05, 0.08)
        burst = u(0.008, 0.014) if voiced else u(0.014, 0.025)
        shut = {"p": 0.0, "b": 0.0, "t": 0.12, "d": 0.12, "k": 0.2, "g": 0.2}[cons]
        width = _NEUTRAL_WIDTH if cons in ("p", "b") else vowel_width
        if voiced:
            plan.formants(t, t + closure, (180, 1000, 2400), gains=(1.0, 0.0, 0.0))
        plan.put(t, t + closure, voice=0.12 * g if voiced else 0.0, open=shut, width=width)
        t += closure
        band = {"p": "burst", "b": "burst", "t": "s", "d": "s", "k": "sh", "g": "sh"}[cons]
        level = (0.35 if voiced else 0.7) * g
        levels = {"burst": level * 0.6}
        levels[band] = levels.get(band, 0.0) + level
        plan.put(t, t + burst, **levels, open=shut + 0.2, width=width)
        return t + burst
    if cons in ("m", "n"):
        d = u(0.055, 0.09)
        plan.formants(t, t + d, (250, 1100, 2300), gains=(1.0, 0.12, 0.05))
        plan.put(t, t + d, voice=0.35 * g, open=0.0 if cons == "m" else 0.12,
                 width=_NEUTRAL_WIDTH if cons == "m" else vowel_width)
        return t + d
    if cons in ("s", "sh", "f"):
        d = u(0.08, 0.13)
        level = {"s": 0.32, "sh": 0.32, "f": 0.18}[cons] * g
        shape = {"s": (0.12, 0.8), "sh": (0.2, 0.15), "f": (0.06, _NEUTRAL_WIDTH)}[cons]
        plan.put(t, t + d, **{cons: level}, open=shape[0], width=shape[1])
        return t + d
    # approximants
    d = u(0.05, 0.08)
    f, shape = ((350, 1100, 2700), (0.3, vowel_width)) if cons == "l" else ((300, 700, 2200), (0.15, 0.05))
    plan.formants(t, t + d, f, gains=(1.0, 0.4, 0.2))
    plan.put(t, t + d, voice=0.55 * g, open=shape[0], width=shape[1])
    return t + d


def _lay_out(plan: _Plan, seconds: float, speaker: dict[str, float], rng: np.random.Generator) -> None:
    """Phrases of words of syllables until ``seconds``; pauses of 0.2-0.8 s between phrases."""
    rate, base = speaker["rate"], speaker["f0"]
    vowels = list(VOWELS)
    t = float(rng.uniform(0.15, 0.5))
    while t < seconds:
        phrase_start, phrase_gain = t, float(rng.uniform(0.8, 1.0))
        n_words = int(rng.integers(2, 7))
        for w in range(n_words):
            n_syl = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
            stress = int(rng.integers(n_syl))
            for s in range(n_syl):
                v = vowels[int(rng.integers(len(vowels)))]
                f, openness, vwidth = VOWELS[v]
                f = tuple(x * float(rng.uniform(0.95, 1.05)) for x in f)
                stressed = s == stress
                g = phrase_gain * (1.0 if stressed else float(rng.uniform(0.7, 0.85)))
                if rng.random() < 0.8:
                    cons = CONSONANTS[int(rng.choice(len(CONSONANTS), p=_CONSONANT_P / _CONSONANT_P.sum()))]
                    t = _consonant(plan, cons, t, f, vwidth, g, rng, rate)
                d = float(rng.uniform(0.09, 0.19)) / rate * (1.25 if stressed else 1.0)
                loud = g * (0.7 + 0.3 * openness)  # open vowels are intrinsically louder
                plan.formants(t, t + d, f)
                plan.put(t, t + d, voice=loud, open=openness * g, width=vwidth,
                         f0=base * (1 + (0.5 * speaker["f0_range"] if stressed else 0.0)))
                t += d
            if w < n_words - 1 and rng.random() < 0.6:
                t += float(rng.uniform(0.03, 0.09))
        # Declination over the phrase: from +range/2 down to -range/2 around the base f0.
        a, b = round(phrase_start * CONTROL_RATE), min(plan.n, round(t * CONTROL_RATE))
        if b > a:
            ramp = np.linspace(0.5, -0.5, b - a) * speaker["f0_range"]
            plan.c["f0"][a:b] *= 1 + ramp
        t += float(rng.uniform(0.2, 0.8))


def _noise_bands(n: int, sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Unit-RMS band-limited noises (one FFT of white noise, masked per band)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    out = {}
    for name, (lo, hi) in _BANDS.items():
        x = np.fft.irfft(spectrum * ((freqs >= lo) & (freqs <= min(hi, sample_rate / 2 - 100))), n)
        out[name] = x / max(np.sqrt(np.mean(x * x)), 1e-12)
    return out


def _voiced(curves: dict[str, np.ndarray], n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulses at f0, each exciting three damped sinusoids at the formants (overlap-added)."""
    t_ctrl = (np.arange(len(curves["f0"])) + 0.5) / CONTROL_RATE
    t = np.arange(n) / sample_rate
    f0 = np.interp(t, t_ctrl, curves["f0"])
    phase = np.cumsum(f0) / sample_rate
    pulses = np.flatnonzero(np.diff(np.floor(phase))) + 1
    pulses = pulses + np.round(rng.normal(0, 0.01, len(pulses)) * sample_rate / f0[pulses]).astype(np.int64)
    pulses = np.clip(pulses, 0, n - 1)
    ctrl = np.minimum((pulses * CONTROL_RATE) // sample_rate, len(curves["f0"]) - 1)
    amp = curves["voice"][ctrl] * rng.uniform(0.95, 1.05, len(pulses)) * np.sqrt(150.0 / f0[pulses])
    keep = amp > 1e-3
    pulses, ctrl, amp = pulses[keep], ctrl[keep], amp[keep]
    length = int(_PULSE_SECONDS * sample_rate)
    tau = np.arange(length) / sample_rate
    shapes = np.zeros((len(pulses), length))
    for k, bw in enumerate(_BANDWIDTHS):
        freq = curves[f"F{k + 1}"][ctrl]
        gain = curves[f"G{k + 1}"][ctrl] * amp
        shapes += gain[:, None] * np.exp(-math.pi * bw * tau)[None] * np.sin(2 * math.pi * freq[:, None] * tau[None])
    idx = pulses[:, None] + np.arange(length)[None]
    inside = idx < n
    return np.bincount(idx[inside], weights=shapes[inside], minlength=n)[:n].astype(np.float64)


def synthesize_speech(seconds: float, *, seed: int, sample_rate: int = 16000) -> SpeechTrack:
    """Babble for ``seconds`` at ``sample_rate`` from ``seed`` (float32 waveform peaking at 0.8)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer >= 8000 Hz, got {sample_rate!r}.")
    rng = np.random.default_rng(seed)
    speaker = _sample_speaker(rng)
    n = round(seconds * sample_rate)
    plan = _Plan(math.ceil(seconds * CONTROL_RATE) + 1, speaker)
    _lay_out(plan, seconds, speaker, rng)

    raw = plan.c
    drift = _hann_smooth(rng.normal(0, 1, plan.n), 300)
    drift *= 0.03 / max(drift.std(), 1e-9)
    curves = {
        "voice": _hann_smooth(raw["voice"], 20),
        "f0": _hann_smooth(raw["f0"], 80) * (1 + drift),
        **{k: _hann_smooth(raw[k], 30) for k in ("F1", "F2", "F3", "G1", "G2", "G3")},
        **{k: _hann_smooth(raw[k], 8) for k in _BANDS},
        "mouth_open": np.clip(_hann_smooth(raw["open"], 50), 0, 1),
        "mouth_width": np.clip(_hann_smooth(raw["width"], 60), 0, 1),
    }

    wave = _voiced(curves, n, sample_rate, rng)
    bands = _noise_bands(n, sample_rate, rng)
    t = np.arange(n) / sample_rate
    t_ctrl = (np.arange(plan.n) + 0.5) / CONTROL_RATE
    for name, noise in bands.items():
        wave += np.interp(t, t_ctrl, curves[name]) * noise
    peak = float(np.max(np.abs(wave)))
    wave = wave * (0.8 / peak) if peak > 0 else wave
    wave += rng.normal(0, 2e-4, n)  # a faint noise floor, so log-mel features stay finite
    curves = {k: v.astype(np.float32) for k, v in curves.items()}
    return SpeechTrack(waveform=np.clip(wave, -1, 1).astype(np.float32), sample_rate=sample_rate,
                       seconds=float(seconds), seed=int(seed), curves=curves, speaker=speaker)
