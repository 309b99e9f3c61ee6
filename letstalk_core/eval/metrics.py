"""Video metrics for long talking-head videos: numpy only, float64, small pure functions.

Frames everywhere are uint8 ``[F, H, W, 3]`` RGB (a single image ``[H, W, 3]``). The metrics that
need a whole video have an accumulator (``update(chunk)`` ... ``result()``) so that a long video is
streamed chunk by chunk; feeding a video in any chunking gives the same result as feeding it whole
(up to float summation order), and the plain function is a thin wrapper that feeds one chunk.

* :func:`lip_sync`: Pearson correlation of a measured mouth-opening track with the ground truth,
  over a range of lags.
* :func:`srgb_to_lab`, :func:`delta_e76`, :func:`delta_e2000`: colour conversion and differences.
* :class:`ColourDriftAccumulator` / :func:`colour_drift`: how far each region's mean colour moves
  away from the portrait's, per time window, and its trend in ΔE00 per minute.
* :class:`PixelDriftAccumulator` / :func:`pixel_drift`: how far the frames themselves (not just
  their mean colour) move away from the portrait, per time window, and its trend per minute.
* :class:`BoundaryJumpAccumulator` / :func:`boundary_jump`: frame change across clip boundaries
  versus within clips.
* :class:`FlickerAccumulator` / :func:`flicker`: temporal second difference of low-passed frames.

Undefined values (e.g. a ratio with a zero denominator) are ``nan`` (or ``inf`` for x / 0 with
x > 0), never an exception; callers that write JSON should map non-finite numbers to ``null``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _check_frames(frames, name: str = "frames") -> np.ndarray:
    """``frames`` must be uint8 ``[N, H, W, 3]`` with N >= 1."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array [N, H, W, 3], got {type(frames).__name__}.")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{name} must be uint8 [N, H, W, 3] (RGB, 0..255), got {frames.dtype} with shape {tuple(frames.shape)}. "
            "Convert float frames in [0, 1] with (x * 255).round().astype(np.uint8)."
        )
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(frames.shape)}).")
    return frames


def _check_fps(fps) -> float:
    if isinstance(fps, bool):
        raise TypeError(f"fps must be a number, got {fps!r}.")
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise TypeError(f"fps must be a number, got {fps!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
    return value


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _check_clip_frames(clip_frames) -> int:
    if isinstance(clip_frames, bool) or not isinstance(clip_frames, (int, np.integer)) or clip_frames < 1:
        raise ValueError(f"clip_frames must be an integer >= 1 (frames per generated clip, e.g. 16), got {clip_frames!r}.")
    return int(clip_frames)


def _check_overlap(overlap, clip_frames: int) -> int:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= (clip_frames - 1) // 2:
        raise ValueError(f"overlap must be an integer from 0 to {(clip_frames - 1) // 2} (frames consecutive clips of "
                         f"{clip_frames} share, fewer than half a clip), got {overlap!r}.")
    return int(overlap)


def seam_transitions(targets: np.ndarray, clip_frames: int, overlap: int = 0) -> np.ndarray:
    """Which transitions ``t-1 -> t`` (given by ``t``) belong to a seam between generated clips.

    Clips start every ``clip_frames - overlap`` frames. Without overlap a seam is the one transition
    into a clip's first frame; with an overlap of m crossfaded frames it is the m + 1 transitions from
    the last frame of the old clip alone to the first frame of the new clip alone (into frames
    ``start .. start + m``), so a jump spread over the blend is counted in full."""
    stride = clip_frames - overlap
    k = targets // stride
    return (k >= 1) & (targets - k * stride <= overlap)


def _ratio(num: float, den: float) -> float:
    """``num / den``; ``nan`` if either is nan or both are 0, ``inf`` for x / 0 with x > 0."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def _sub_batch(height: int, width: int, pixels: int = 1_000_000) -> int:
    """Frames per internal sub-batch, so temporaries stay near ``pixels`` float64 RGB pixels."""
    return max(1, pixels // max(1, height * width))


# ---------------------------------------------------------------------------------------------
# lip sync
# ---------------------------------------------------------------------------------------------

#: Fewest frames :func:`lip_sync` accepts, and fewest overlapping samples at any lag.
MIN_LIPSYNC_FRAMES = 10


@dataclass(frozen=True)
class LipSync:
    """Result of :func:`lip_sync`: correlation at lag 0, and the lag (frames) with the highest one."""

    corr_at_zero: float
    best_lag: int
    best_corr: float


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 when ``x`` (the measured track) is constant (no linear relation)."""
    xd, yd = x - x.mean(), y - y.mean()
    sx, sy = float(np.sqrt(np.dot(xd, xd))), float(np.sqrt(np.dot(yd, yd)))
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))), 1e-300)
    if sx <= 1e-12 * scale * math.sqrt(x.size) or sy <= 1e-12 * scale * math.sqrt(y.size):
        return 0.0
    return float(np.clip(np.dot(xd, yd) / (sx * sy), -1.0, 1.0))


def lip_sync(measured, truth, max_lag: int = 5) -> LipSync:
    """Pearson correlation between a measured mouth opening and the ground truth, at lags.

    ``measured[t]`` is the mouth opening measured in generated frame ``t`` and ``truth[t]`` the
    ground-truth opening at frame ``t`` (both 1-D, same length F >= 10). For each lag L in
    ``-max_lag .. max_lag`` the correlation is taken between ``measured[t]`` and ``truth[t - L]``
    over the overlapping samples only (F - |L| of them). **Positive L means the generated video
    lags behind the truth** (the mouth moves L frames late): if ``measured[t] = truth[t - 3]``
    the best lag is +3.

    ``best_lag`` is the lag with the highest correlation (ties go to the smaller |L|, then to the
    negative one); ``best_corr`` its correlation; ``corr_at_zero`` the correlation at L = 0.

    A measured track that is constant over an overlap gives correlation 0.0 there (a frozen mouth
    has no linear relation with speech; this is a valid, bad, result and not an error). A constant
    ground truth is refused: it carries no signal to sync with.

    Raises ``ValueError`` for non-1-D input, different lengths, fewer than 10 frames, NaN/inf,
    a constant truth, or ``max_lag`` so large that an overlap would have fewer than 10 samples.
    """
    m = np.asarray(measured, dtype=np.float64)
    g = np.asarray(truth, dtype=np.float64)
    if m.ndim != 1 or g.ndim != 1:
        raise ValueError(f"measured and truth must be 1-D tracks (one value per frame), got shapes {m.shape} and {g.shape}.")
    if m.size != g.size:
        raise ValueError(
            f"measured has {m.size} frames but truth has {g.size}; they must cover the same frames "
            "(was the video generated from this ground truth's audio, at the same fps?)."
        )
    if m.size < MIN_LIPSYNC_FRAMES:
        raise ValueError(f"lip sync needs at least {MIN_LIPSYNC_FRAMES} frames, got {m.size}.")
    if not (np.isfinite(m).all() and np.isfinite(g).all()):
        raise ValueError("measured and truth must be finite (no NaN/inf); check the mouth measuring function.")
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise ValueError(f"max_lag must be an integer >= 0, got {max_lag!r}.")
    max_lag = int(max_lag)
    if m.size - max_lag < MIN_LIPSYNC_FRAMES:
        raise ValueError(
            f"max_lag={max_lag} leaves fewer than {MIN_LIPSYNC_FRAMES} overlapping frames of {m.size}; "
            f"use max_lag <= {m.size - MIN_LIPSYNC_FRAMES} or a longer video."
        )
    if np.ptp(g) <= 1e-12 * max(1.0, float(np.max(np.abs(g)))):
        raise ValueError("truth is constant; a ground-truth mouth track with no movement cannot measure lip sync.")

    def corr(lag: int) -> float:
        if lag >= 0:
            return _pearson(m[lag:], g[: g.size - lag])
        return _pearson(m[: m.size + lag], g[-lag:])

    best_lag, best = 0, corr(0)
    at_zero = best
    for k in range(1, max_lag + 1):
        for lag in (-k, k):
            c = corr(lag)
            if c > best:
                best_lag, best = lag, c
    return LipSync(corr_at_zero=at_zero, best_lag=best_lag, best_corr=best)


# ---------------------------------------------------------------------------------------------
# colour
# ---------------------------------------------------------------------------------------------

#: Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1 primaries (Lindbloom's 7-digit matrix).
SRGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
], dtype=np.float64)
#: D65 reference white as the matrix maps RGB (1, 1, 1) (0.95047, 1.0, 1.08883), so white -> a = b = 0.
WHITE_D65 = SRGB_TO_XYZ.sum(axis=1)
_EPS_LAB = (6.0 / 29.0) ** 3


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


#: sRGB decoding of the 256 uint8 levels (exact same formula, as a lookup table).
_LINEAR_LUT = _srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)


#: Linear sRGB -> XYZ / white (rows X, Y, Z), so that white maps to (1, 1, 1).
_RGB_TO_XYZN = SRGB_TO_XYZ / WHITE_D65[:, None]
_LAB_SLOPE = 1.0 / (3.0 * (6.0 / 29.0) ** 2)


def _lab_f_inplace(t: np.ndarray) -> np.ndarray:
    """CIELAB's ``f``, in place: cube root above ``(6/29)^3``, ``t / (3 (6/29)^2) + 4/29`` below."""
    low = t <= _EPS_LAB
    low_values = t[low] * _LAB_SLOPE + 4.0 / 29.0
    np.cbrt(t, out=t)
    t[low] = low_values
    return t


def _f_to_lab(f: np.ndarray) -> np.ndarray:
    """``(f(X), f(Y), f(Z))`` in the last axis -> ``(L, a, b)`` (a linear map)."""
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def _linear_to_lab(lin: np.ndarray) -> np.ndarray:
    xyz = np.einsum("...c,xc->...x", lin, _RGB_TO_XYZN)
    return _f_to_lab(_lab_f_inplace(xyz))


def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB ``[..., 3]`` (uint8 0..255, or float in [0, 1]) -> CIELAB ``[..., 3]`` float64 (D65).

    Standard formulas: sRGB decoding (``c / 12.92`` for ``c <= 0.04045``, else
    ``((c + 0.055) / 1.055) ** 2.4``), linear RGB -> XYZ with :data:`SRGB_TO_XYZ`, XYZ normalised
    by the D65 white :data:`WHITE_D65`, then ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``,
    ``b = 200 (f(Y) - f(Z))`` with ``f(t) = t^(1/3)`` above ``(6/29)^3`` and linear below.
    White gives L = 100, a = b = 0; pure red (255, 0, 0) gives (53.24, 80.09, 67.20).
    """
    arr = np.asarray(rgb)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"rgb must have 3 channels in its last axis ([..., 3]), got shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return _linear_to_lab(_LINEAR_LUT[arr])
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"rgb must be uint8 (0..255) or float in [0, 1], got dtype {arr.dtype}.")
    c = arr.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError("rgb contains NaN/inf.")
    if c.size and (c.min() < -1e-6 or c.max() > 1 + 1e-6):
        raise ValueError(
            f"float rgb must be in [0, 1], got values in [{c.min():.4g}, {c.max():.4g}]; "
            "divide 0..255 values by 255 (or pass uint8)."
        )
    return _linear_to_lab(_srgb_to_linear(np.clip(c, 0.0, 1.0)))


def _check_lab_pair(lab1, lab2) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(lab1, dtype=np.float64)
    b = np.asarray(lab2, dtype=np.float64)
    if a.shape[-1:] != (3,) or b.shape[-1:] != (3,):
        raise ValueError(f"Lab colours must have 3 values in their last axis, got shapes {a.shape} and {b.shape}.")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"Lab arrays of shapes {a.shape} and {b.shape} do not broadcast.") from None
    return a, b


def delta_e76(lab1, lab2) -> np.ndarray:
    """CIE76 colour difference: Euclidean distance in CIELAB over the last axis (broadcasts)."""
    a, b = _check_lab_pair(lab1, lab2)
    return np.sqrt(np.sum((a - b) ** 2, axis=-1))


def delta_e2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) over the last axis (broadcasts).

    Follows Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation
    notes, supplementary test data, and mathematical observations", including their conventions
    for hue angles when a chroma is zero and for the mean hue across the 0/360 discontinuity.
    """
    lab_a, lab_b = _check_lab_pair(lab1, lab2)
    L1, a1, b1 = lab_a[..., 0], lab_a[..., 1], lab_a[..., 2]
    L2, a2, b2 = lab_b[..., 0], lab_b[..., 1], lab_b[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    c_bar7 = c_bar ** 7
    g = 0.5 * (1.0 - np.sqrt(c_bar7 / (c_bar7 + 25.0 ** 7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360.0)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360.0)

    dLp = L2 - L1
    dCp = c2p - c1p
    chroma_zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    dHp = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2.0)

    L_bar = (L1 + L2) / 2.0
    cp_bar = (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    h_bar = np.where(
        chroma_zero, h_sum,
        np.where(np.abs(h1p - h2p) <= 180.0, h_sum / 2.0,
                 np.where(h_sum < 360.0, (h_sum + 360.0) / 2.0, (h_sum - 360.0) / 2.0)))
    t = (1.0 - 0.17 * np.cos(np.radians(h_bar - 30.0)) + 0.24 * np.cos(np.radians(2.0 * h_bar))
         + 0.32 * np.cos(np.radians(3.0 * h_bar + 6.0)) - 0.20 * np.cos(np.radians(4.0 * h_bar - 63.0)))
    d_theta = 30.0 * np.exp(-(((h_bar - 275.0) / 25.0) ** 2))
    cp_bar7 = cp_bar ** 7
    r_c = 2.0 * np.sqrt(cp_bar7 / (cp_bar7 + 25.0 ** 7))
    s_l = 1.0 + 0.015 * (L_bar - 50.0) ** 2 / np.sqrt(20.0 + (L_bar - 50.0) ** 2)
    s_c = 1.0 + 0.045 * cp_bar
    s_h = 1.0 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c
    return np.sqrt((dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2 + r_t * (dCp / s_c) * (dHp / s_h))


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def erode(mask, pixels: int) -> np.ndarray:
    """Binary erosion of a bool ``[H, W]`` mask by ``pixels`` with a square structuring element.

    A pixel stays True only if every pixel within Chebyshev distance ``pixels`` (a
    ``(2p+1) x (2p+1)`` square) is True; pixels outside the image count as False, so the mask
    also shrinks away from the image border. ``pixels = 0`` returns a copy.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}.")
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
        raise ValueError(f"pixels must be an integer >= 0, got {pixels!r}.")
    out = m.astype(bool, copy=True)
    p = int(pixels)
    if p == 0:
        return out
    for axis in (0, 1):  # a square element is separable: erode rows, then columns
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (p, p)
        padded = np.pad(out, pad, constant_values=False)
        acc = np.ones_like(out)
        for shift in range(2 * p + 1):
            acc &= np.take(padded, np.arange(shift, shift + n), axis=axis)
        out = acc
    return out


# ---------------------------------------------------------------------------------------------
# colour drift
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionDrift:
    """Colour drift of one region: ΔE00 per window, its trend and maximum.

    ``windows``: mean per-frame ΔE00 in each time window; ``window_times``: the mean time (s) of
    each window's frames; ``slope_per_min``: least-squares slope of ``windows`` against
    ``window_times`` in ΔE00 per minute (0.0 with fewer than two windows); ``max``: the largest
    window value; ``mean``: mean per-frame ΔE00 over all frames; ``per_frame``: every frame's ΔE00.
    """

    windows: list[float]
    window_times: list[float]
    slope_per_min: float
    max: float
    mean: float
    per_frame: list[float] = field(repr=False, default_factory=list)


@dataclass(frozen=True)
class ColourDrift:
    """Result of :func:`colour_drift`: a :class:`RegionDrift` per region name (``drift["face"]``)."""

    regions: dict[str, RegionDrift]
    frames: int
    fps: float
    window_seconds: float

    def __getitem__(self, name: str) -> RegionDrift:
        return self.regions[name]


def _window_stats(values: np.ndarray, fps: float, window_seconds: float) -> tuple[list[float], list[float]]:
    """Mean of ``values`` (one per frame) per window of ``window_seconds``, and each window's mean time.

    Frame ``t`` (time ``t / fps``) is in window ``floor(t / (window_seconds * fps))``. The last
    window is kept when it is complete, covers at least 1 s of frames, or is the only window.
    """
    n = values.size
    if n == 0:
        return [], []
    per_window = window_seconds * fps
    index = np.floor((np.arange(n) + 1e-9) / per_window).astype(np.int64)
    count = int(index[-1]) + 1
    sums = np.bincount(index, weights=values, minlength=count)
    counts = np.bincount(index, minlength=count)
    times = np.bincount(index, weights=np.arange(n) / fps, minlength=count) / counts
    means = sums / counts
    last_complete = counts[-1] >= per_window - 1e-6
    if count > 1 and not last_complete and counts[-1] < fps - 1e-6:
        means, times = means[:-1], times[:-1]
    return [float(v) for v in means], [float(v) for v in times]


def _slope_per_minute(values: list[float], times: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    x = np.asarray(times) / 60.0
    y = np.asarray(values)
    xd = x - x.mean()
    return float(np.dot(xd, y - y.mean()) / np.dot(xd, xd))


class ColourDriftAccumulator:
    """Chunk-wise :func:`colour_drift`: ``acc.update(chunk)`` for each chunk of frames, then ``acc.result()``.

    Memory is O(frames) floats per region (one ΔE00 per frame), never the frames themselves.
    See :func:`colour_drift` for what is computed.
    """

    def __init__(self, portrait, masks: dict | None, fps, window_seconds: float = 10.0):
        p = np.asarray(portrait)
        if p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3:
            raise ValueError(f"portrait must be uint8 [H, W, 3] (RGB), got {p.dtype} with shape {p.shape}.")
        self.fps = _check_fps(fps)
        self.window_seconds = _check_positive(window_seconds, "window_seconds")
        height, width = p.shape[:2]
        named = dict(masks or {})
        if "frame" not in named:
            named["frame"] = np.ones((height, width), dtype=bool)
        weights = []
        for name, mask in named.items():
            m = np.asarray(mask)
            if m.shape != (height, width):
                raise ValueError(
                    f"mask '{name}' has shape {m.shape} but the portrait is {height}x{width}; masks are in portrait "
                    "coordinates and must have the portrait's [H, W]."
                )
            if m.dtype != bool:
                raise ValueError(f"mask '{name}' must be a bool array, got {m.dtype}; use mask.astype(bool) or (labels == k).")
            pixel_count = int(m.sum())
            if pixel_count == 0:
                raise ValueError(f"mask '{name}' is empty (no True pixels); erode it less or check the label map.")
            weights.append(m.reshape(-1).astype(np.float64) / pixel_count)
        self.names = list(named)
        self.size = (height, width)
        self._weights = np.stack(weights)  # [R, H*W], each row sums to 1
        self.reference = self._mean_lab(p[None])[0]  # [R, 3]
        self._per_frame: list[np.ndarray] = []  # chunks of [n, R] ΔE00
        self.frames = 0

    def _mean_lab(self, frames: np.ndarray) -> np.ndarray:
        """Mean Lab of each region of each frame: ``[n, R, 3]`` (mean of per-pixel Lab values).

        Same numbers as averaging :func:`srgb_to_lab` over the region's pixels, computed faster:
        Lab is linear in ``(f(X), f(Y), f(Z))``, so those are averaged (a matrix-vector product per
        frame and channel) and turned into Lab afterwards; the per-pixel work runs on flat planes.
        """
        n, pixels = frames.shape[0], self.size[0] * self.size[1]
        out = np.empty((n, len(self.names), 3))
        step = _sub_batch(*self.size)
        for s in range(0, n, step):
            part = frames[s:s + step]
            m = part.shape[0]
            flat = part.reshape(m * pixels, 3)
            planes = [np.take(_LINEAR_LUT, flat[:, c]) for c in range(3)]  # linear R, G, B
            tmp = np.empty(m * pixels)
            means = np.empty((m, len(self.names), 3))
            for i in range(3):  # X, Y, Z (normalised by the white), then f, then region means
                t = np.multiply(planes[0], _RGB_TO_XYZN[i, 0])
                t += np.multiply(planes[1], _RGB_TO_XYZN[i, 1], out=tmp)
                t += np.multiply(planes[2], _RGB_TO_XYZN[i, 2], out=tmp)
                f_planes = _lab_f_inplace(t).reshape(m, pixels)
                for k in range(m):  # frame by frame: the same sums whatever the batching (a still
                    means[k, :, i] = self._weights @ f_planes[k]  # video gives exactly ΔE = 0)
            out[s:s + m] = _f_to_lab(means)
        return out

    def update(self, frames) -> None:
        """Add the next frames (uint8 ``[n, H, W, 3]``, the portrait's size)."""
        f = _check_frames(frames)
        if f.shape[1:3] != self.size:
            raise ValueError(
                f"frames are {f.shape[2]}x{f.shape[1]} but the portrait is {self.size[1]}x{self.size[0]}; "
                "resize/crop the portrait (and masks) to the video's size first."
            )
        self._per_frame.append(delta_e2000(self.reference[None], self._mean_lab(f)))
        self.frames += f.shape[0]

    def result(self) -> ColourDrift:
        if self.frames == 0:
            raise ValueError("no frames were given to the colour drift accumulator; call update() first.")
        de = np.concatenate(self._per_frame, axis=0)  # [F, R]
        regions = {}
        for r, name in enumerate(self.names):
            windows, times = _window_stats(de[:, r], self.fps, self.window_seconds)
            regions[name] = RegionDrift(windows=windows, window_times=times, slope_per_min=_slope_per_minute(windows, times),
                                        max=max(windows), mean=float(de[:, r].mean()), per_frame=[float(v) for v in de[:, r]])
        return ColourDrift(regions=regions, frames=self.frames, fps=self.fps, window_seconds=self.window_seconds)


def colour_drift(frames, portrait, masks: dict | None, fps, window_seconds: float = 10.0) -> ColourDrift:
    """Identity colour drift of named regions relative to the portrait.

    For each region (``masks``: name -> bool ``[H, W]`` in portrait coordinates; a whole-image
    region ``"frame"`` is added unless given) the reference is the mean CIELAB colour of the
    region's portrait pixels and each frame's value is the mean CIELAB colour of the same pixels
    in that frame (means of per-pixel Lab values, :func:`srgb_to_lab`). Per frame,
    ΔE = CIEDE2000(reference mean, frame mean) (:func:`delta_e2000`). The head moves by a few
    pixels, so callers should :func:`erode` part masks (e.g. by 3 px) to keep them inside the part.

    Per-frame ΔE is averaged over windows of ``window_seconds`` (frame ``t`` lies in window
    ``floor(t / (window_seconds * fps))``); the last, partial, window is kept if it holds at
    least 1 s of frames (or is the only window). ``slope_per_min`` is the least-squares slope of
    window values against window time (mean time of the window's frames) in ΔE00 per minute;
    ``max`` the largest window value. ``frames``: uint8 ``[F, H, W, 3]`` of the portrait's size.
    """
    acc = ColourDriftAccumulator(portrait, masks, fps, window_seconds)
    acc.update(frames)
    return acc.result()


# ---------------------------------------------------------------------------------------------
# pixel drift
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelDrift:
    """Mean absolute difference (0..255) between each frame and the portrait, per time window.

    A talking face differs from its portrait by its motion only, so on a faithful video this stays
    flat at the motion's level (the ground truth's value gives the scale); a video whose structure
    decays (blur, blotches, a face dissolving) climbs, even where mean colours barely move."""

    windows: list[float]
    times: list[float]
    max: float
    mean: float
    slope_per_min: float


class PixelDriftAccumulator:
    """Chunk-wise :func:`pixel_drift` (keeps one float per frame)."""

    def __init__(self, portrait, fps, window_seconds: float = 10.0):
        p = np.asarray(portrait)
        if p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3:
            raise ValueError(f"portrait must be uint8 [H, W, 3] (RGB), got {p.dtype} with shape {p.shape}.")
        self.portrait = p.astype(np.int16)
        self.fps = _check_fps(fps)
        self.window_seconds = _check_positive(window_seconds, "window_seconds")
        self._values: list[np.ndarray] = []

    def update(self, frames) -> None:
        f = _check_frames(frames)
        if f.shape[1:] != self.portrait.shape:
            raise ValueError(f"frames are {f.shape[1:]} but the portrait is {self.portrait.shape}; give the portrait at the video's size.")
        step = _sub_batch(f.shape[1], f.shape[2])
        for s in range(0, f.shape[0], step):
            part = f[s:s + step].astype(np.int16)
            self._values.append(np.abs(part - self.portrait).reshape(part.shape[0], -1).mean(axis=1))

    def result(self) -> PixelDrift:
        values = np.concatenate(self._values) if self._values else np.empty(0)
        windows, times = _window_stats(values, self.fps, self.window_seconds)
        return PixelDrift(windows=windows, times=times, max=max(windows) if windows else math.nan,
                          mean=float(values.mean()) if values.size else math.nan,
                          slope_per_min=_slope_per_minute(windows, times))


def pixel_drift(frames, portrait, fps, window_seconds: float = 10.0) -> PixelDrift:
    """Mean absolute difference between uint8 frames ``[F, H, W, 3]`` and the uint8 ``portrait``
    ``[H, W, 3]``, averaged per window of ``window_seconds`` (see :class:`PixelDrift`), with its
    least-squares slope per minute over the windows' mean times."""
    acc = PixelDriftAccumulator(portrait, fps, window_seconds)
    acc.update(frames)
    return acc.result()


# ---------------------------------------------------------------------------------------------
# clip-boundary jump
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundaryJump:
    """Mean absolute frame change (0..255 units) across clip boundaries vs. within clips.

    ``ratio = boundary_mean / within_mean``: about 1 when clip boundaries are invisible, >> 1 when
    each new clip jumps. With overlapping clips every transition of a crossfade is a boundary
    transition (:func:`seam_transitions`). ``boundary_mean`` (and so ``ratio``) is nan when the video has no clip
    boundary (F <= clip_frames); ``within_mean`` is nan when no transition lies within a clip.
    """

    boundary_mean: float
    within_mean: float
    ratio: float
    boundary_count: int
    within_count: int


class BoundaryJumpAccumulator:
    """Chunk-wise :func:`boundary_jump` (keeps only the previous chunk's last frame)."""

    def __init__(self, clip_frames: int, overlap: int = 0):
        self.clip_frames = _check_clip_frames(clip_frames)
        self.overlap = _check_overlap(overlap, self.clip_frames)
        self._last: np.ndarray | None = None
        self.frames = 0
        self._sums = [0.0, 0.0]  # within, boundary
        self._counts = [0, 0]

    def update(self, frames) -> None:
        """Add the next frames (uint8 ``[n, H, W, 3]``, all of the same size)."""
        f = _check_frames(frames)
        if self._last is not None and f.shape[1:] != self._last.shape:
            raise ValueError(f"frame size changed from {self._last.shape} to {f.shape[1:]}; all frames must match.")
        step = _sub_batch(f.shape[1], f.shape[2])
        for s in range(0, f.shape[0], step):
            part = f[s:s + step].astype(np.int16)
            seq = part if self._last is None else np.concatenate([self._last[None], part])
            first_index = self.frames + (0 if self._last is None else -1)  # index of seq[0] in the video
            if seq.shape[0] > 1:
                diffs = np.abs(np.diff(seq, axis=0)).reshape(seq.shape[0] - 1, -1).mean(axis=1)
                targets = first_index + 1 + np.arange(diffs.size)  # index of frame t+1 of each transition
                boundary = seam_transitions(targets, self.clip_frames, self.overlap)
                self._sums[1] += float(diffs[boundary].sum())
                self._counts[1] += int(boundary.sum())
                self._sums[0] += float(diffs[~boundary].sum())
                self._counts[0] += int((~boundary).sum())
            self._last = part[-1]
            self.frames += part.shape[0]

    def result(self) -> BoundaryJump:
        within = self._sums[0] / self._counts[0] if self._counts[0] else math.nan
        boundary = self._sums[1] / self._counts[1] if self._counts[1] else math.nan
        return BoundaryJump(boundary_mean=boundary, within_mean=within, ratio=_ratio(boundary, within),
                            boundary_count=self._counts[1], within_count=self._counts[0])


def boundary_jump(frames, clip_frames: int, overlap: int = 0) -> BoundaryJump:
    """Clip-boundary jump of uint8 frames ``[F, H, W, 3]`` generated in clips of ``clip_frames``.

    For each transition t -> t+1 the frame change is ``mean over pixels and channels of
    |f[t+1] - f[t]|`` (0..255 units). Transitions with ``t + 1`` a multiple of ``clip_frames``
    (the first frame of a new clip; clips start at frame 0) are boundary transitions, the others
    within-clip; with ``overlap`` m, clips start every ``clip_frames - m`` frames and the m + 1
    transitions of each crossfade are boundary transitions (:func:`seam_transitions`). Returns the
    mean change of each kind and their ratio (see :class:`BoundaryJump`).
    """
    acc = BoundaryJumpAccumulator(clip_frames, overlap)
    acc.update(frames)
    return acc.result()


# ---------------------------------------------------------------------------------------------
# flicker
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flicker:
    """Temporal flicker of low-passed frames (0..255 units).

    ``flicker``: mean over t of mean |g[t+1] - 2 g[t] + g[t-1]| (within clips when clip_frames is
    given); ``frame_change``: mean over within-clip transitions of mean |g[t+1] - g[t]| of the
    same low-passed frames ``g``; ``ratio = flicker / frame_change``: about 0 for smooth motion,
    about 2 for brightness that alternates every frame (nan when undefined). ``count``: number of
    second differences averaged (F - 2 without clip_frames).
    """

    flicker: float
    frame_change: float
    ratio: float
    count: int


class FlickerAccumulator:
    """Chunk-wise :func:`flicker` (keeps the previous chunk's last two low-passed frames)."""

    def __init__(self, clip_frames: int | None = None, block: int = 4, *, overlap: int = 0):
        self.clip_frames = None if clip_frames is None else _check_clip_frames(clip_frames)
        self.overlap = 0 if clip_frames is None else _check_overlap(overlap, self.clip_frames)
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise ValueError(f"block must be an integer >= 1 (box-filter size in pixels), got {block!r}.")
        self.block = int(block)
        self._history: np.ndarray | None = None  # last <= 2 low-passed frames
        self.frames = 0
        self._second = [0.0, 0]
        self._first = [0.0, 0]

    def _low_pass(self, f: np.ndarray) -> np.ndarray:
        b = self.block
        h, w = (f.shape[1] // b) * b, (f.shape[2] // b) * b
        if h == 0 or w == 0:
            raise ValueError(f"frames of {f.shape[2]}x{f.shape[1]} are smaller than the {b}x{b} flicker block; use block=1.")
        blocks = f[:, :h, :w].reshape(f.shape[0], h // b, b, w // b, b, 3)
        return blocks.sum(axis=(2, 4), dtype=np.int64) / float(b * b)  # exact sums, one division

    def update(self, frames) -> None:
        """Add the next frames (uint8 ``[n, H, W, 3]``, all of the same size)."""
        f = _check_frames(frames)
        step = _sub_batch(f.shape[1], f.shape[2])
        for s in range(0, f.shape[0], step):
            g = self._low_pass(f[s:s + step])
            if self._history is not None and g.shape[1:] != self._history.shape[1:]:
                raise ValueError("frame size changed between chunks; all frames must match.")
            seq = g if self._history is None else np.concatenate([self._history, g])
            first_index = self.frames - (0 if self._history is None else self._history.shape[0])
            n = seq.shape[0]
            if n > 1:
                d1 = np.abs(np.diff(seq, axis=0)).reshape(n - 1, -1).mean(axis=1)
                targets = first_index + 1 + np.arange(n - 1)
                keep = (np.ones(n - 1, dtype=bool) if self.clip_frames is None
                        else ~seam_transitions(targets, self.clip_frames, self.overlap))
                new = targets >= self.frames  # transitions not counted in an earlier update
                self._first[0] += float(d1[keep & new].sum())
                self._first[1] += int((keep & new).sum())
            if n > 2:
                d2 = np.abs(seq[2:] - 2.0 * seq[1:-1] + seq[:-2]).reshape(n - 2, -1).mean(axis=1)
                last = first_index + 2 + np.arange(n - 2)  # index of frame t+1 of each second difference
                keep2 = last >= self.frames  # not counted in an earlier update
                if self.clip_frames is not None:  # neither transition t-1 -> t -> t+1 on a seam
                    keep2 &= ~seam_transitions(last, self.clip_frames, self.overlap)
                    keep2 &= ~seam_transitions(last - 1, self.clip_frames, self.overlap)
                self._second[0] += float(d2[keep2].sum())
                self._second[1] += int(keep2.sum())
            self._history = seq[-2:]
            self.frames += g.shape[0]

    def result(self) -> Flicker:
        second = self._second[0] / self._second[1] if self._second[1] else math.nan
        first = self._first[0] / self._first[1] if self._first[1] else math.nan
        return Flicker(flicker=second, frame_change=first, ratio=_ratio(second, first), count=self._second[1])


def flicker(frames, clip_frames: int | None = None, block: int = 4, *, overlap: int = 0) -> Flicker:
    """Temporal flicker of uint8 frames ``[F, H, W, 3]``.

    Each frame is low-passed spatially by a ``block x block`` box average (non-overlapping
    blocks, per channel; edge pixels that do not fill a block are dropped), so that moving edges
    weigh little and brightness/colour changes of whole areas dominate. ``flicker`` is the mean
    over t = 1 .. F-2 of the mean absolute second temporal difference
    ``|g[t+1] - 2 g[t] + g[t-1]|`` (0..255 units): 0 for a constant or linearly changing video,
    large when brightness goes up and down from frame to frame. With ``clip_frames`` only second
    differences whose three frames lie in one clip are averaged (a seam between clips is
    measured by :func:`boundary_jump`, not counted again as flicker). ``ratio`` divides
    ``flicker`` by the mean absolute first difference of the same low-passed frames over
    within-clip transitions (all transitions when ``clip_frames`` is None), see :class:`Flicker`.
    ``overlap``: frames consecutive clips share (seams as in :func:`boundary_jump`).
    """
    acc = FlickerAccumulator(clip_frames, block, overlap=overlap)
    acc.update(frames)
    return acc.result()
