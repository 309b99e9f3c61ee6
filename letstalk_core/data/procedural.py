"""Procedural talking faces: identities, frame rendering, ground truth and dataset files.

A sample is a cartoon head (random :class:`FaceIdentity`) speaking synthetic babble
(:mod:`.speech_synth`): the mouth follows the speech (``mouth_open``, ``mouth_width``), the head
moves and blinks on its own (:func:`motion_tracks`). The mouth interior is always drawn in
:data:`MOUTH_INTERIOR_RGB` and no other colour of an identity comes within
:data:`MIN_COLOR_DISTANCE` of it, so :func:`measure_mouth_opening` can read the opening of any
generated video back from its pixels.

Geometry is in units of the frame height (x right, y down, origin top-left); shapes are drawn with
analytic soft edges (about one pixel of anti-aliasing) at the output size, vectorised over frames.
Head motion: ``head_dx`` / ``head_dy`` are in frame-height units (0.03 is about 2 px at 64 px),
``head_angle`` in degrees; ``blink`` is 0 (open) .. 1 (closed).

Files of a sample ``<stem>``: ``.mp4`` (H.264 + AAC), ``.wav``, ``_portrait.png`` (the identity at
rest, not a video frame), ``_labels.png`` (:func:`render_labels` of the portrait) and ``.json``
(ground truth, see :func:`make_sample`).
"""
from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .speech_synth import synthesize_speech

#: Colour of the open mouth's interior, the same for every identity.
MOUTH_INTERIOR_RGB = (70, 12, 28)
#: Every other colour of an identity keeps at least this Euclidean RGB distance from the interior.
MIN_COLOR_DISTANCE = 90.0
#: Soft radius of :func:`measure_mouth_opening` (RGB distance at which a pixel stops counting).
MEASURE_RADIUS = 60.0
#: Label values of :func:`render_labels`.
LABELS = {"background": 0, "skin": 1, "hair": 2, "eyes": 3, "mouth": 4, "accessory": 5}
HAIR_STYLES = ("bald", "short", "fringe", "long", "afro")
SCHEMA_VERSION = 1

_SCLERA = (238, 236, 228)
_INTERIOR = np.array(MOUTH_INTERIOR_RGB, np.float32)
_LIP_LINE = 0.82  # closed-mouth lip line: lip colour times this
_SHADE = 0.88  # nose, ears, neck: skin colour times this (lid and nose shading)


# ------------------------------------------------------------------------------------------------
# Identities
# ------------------------------------------------------------------------------------------------
@dataclass
class FaceIdentity:
    """Everything that makes one cartoon face; colours are RGB 0..255, lengths in frame heights."""

    seed: int
    face_cx: float
    face_cy: float
    face_rx: float
    face_ry: float
    jaw: float  # 0: plain ellipse .. 0.35: narrow chin
    skin: tuple
    lips: tuple
    lip_thickness: float
    mouth_y: float  # below the face centre, in face_ry units
    mouth_half_width: float
    mouth_max_open: float  # full interior height at mouth_open = 1, in frame heights
    hair_style: str
    hair: tuple
    brows: tuple
    brow_thickness: float
    eye_color: tuple
    eye_rx: float
    eye_ry: float
    eye_dx: float  # half the distance between the eyes
    eye_y: float  # above the face centre, in face_ry units
    background: str  # "solid" or "gradient"
    bg_top: tuple
    bg_bottom: tuple
    shirt: tuple
    glasses: bool = False
    glasses_color: tuple = (0, 0, 0)
    earrings: bool = False
    earrings_color: tuple = (0, 0, 0)
    hat: bool = False
    hat_color: tuple = (0, 0, 0)

    def to_dict(self) -> dict:
        """JSON-serialisable copy (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FaceIdentity:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    def colors(self) -> dict[str, tuple]:
        """Every colour this identity draws, the mouth interior excepted (shades included)."""
        shade = tuple(c * _SHADE for c in self.skin)
        out = {"skin": self.skin, "skin_shade": shade, "lips": self.lips,
               "lip_line": tuple(c * _LIP_LINE for c in self.lips), "eye": self.eye_color, "sclera": _SCLERA,
               "bg_top": self.bg_top, "bg_bottom": self.bg_bottom, "shirt": self.shirt, "brows": self.brows}
        if self.hair_style != "bald":
            out["hair"] = self.hair
        for name in ("glasses", "earrings", "hat"):
            if getattr(self, name):
                out[name] = getattr(self, f"{name}_color")
        return out


def color_distance(a, b) -> float:
    """Euclidean RGB distance."""
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _far(rgb, margin: float = MIN_COLOR_DISTANCE) -> bool:
    return color_distance(rgb, MOUTH_INTERIOR_RGB) > margin


def _pick(rng: np.random.Generator, make, ok) -> tuple:
    """Draw ``make(rng)`` until ``ok(colour)`` (and far from the mouth interior); integer RGB."""
    for _ in range(1000):
        c = tuple(int(v) for v in np.clip(np.round(make(rng)), 0, 255))
        if _far(c) and ok(c):
            return c
    raise RuntimeError("Could not draw a colour far enough from the mouth interior.")


def _jitter(base, amount: float):
    return lambda rng: np.asarray(base, float) + rng.normal(0, amount, 3)


def _random_rgb(rng: np.random.Generator, lo: float = 0.3, hi: float = 0.95) -> np.ndarray:
    """A random colour from hue, saturation and value (HSV)."""
    h, s, v = rng.random(), rng.uniform(0.15, 0.8), rng.uniform(lo, hi)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 255 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


_SKIN_DARK, _SKIN_MID, _SKIN_LIGHT = np.array([142, 94, 68.0]), np.array([200, 145, 105.0]), np.array([252, 222, 196.0])
_HAIR = [(85, 85, 92), (112, 90, 66), (140, 100, 62), (165, 88, 52), (190, 95, 50), (215, 185, 120),
         (172, 170, 168), (226, 224, 218), (62, 92, 170), (215, 120, 170)]
_HAIR_P = np.array([14, 16, 14, 8, 5, 12, 6, 4, 2, 2], float)
_EYES = [(70, 120, 180), (90, 140, 92), (132, 96, 62), (152, 122, 72), (120, 130, 142)]
_ACCESSORY = [(90, 92, 102), (200, 180, 120), (200, 200, 210), (40, 90, 160), (160, 40, 40), (30, 120, 90)]


def _skin(rng: np.random.Generator) -> np.ndarray:
    t = rng.random()
    base = _SKIN_DARK + (_SKIN_MID - _SKIN_DARK) * 2 * t if t < 0.5 else _SKIN_MID + (_SKIN_LIGHT - _SKIN_MID) * (2 * t - 1)
    return base * rng.uniform(0.96, 1.04, 3)


def sample_identity(seed: int) -> FaceIdentity:
    """A random face from ``seed`` (deterministic); all its colours stay far from the mouth interior."""
    rng = np.random.default_rng(seed)
    face_ry = float(rng.uniform(0.355, 0.395))  # face is 71-79 % of the frame height
    face_rx = face_ry * float(rng.uniform(0.74, 0.86))
    skin = _pick(rng, _skin, lambda c: _far(tuple(v * _SHADE for v in c)))
    lips = _pick(rng, lambda r: (np.asarray(skin) * r.uniform(0.4, 0.55) + np.array([205, 70, 85]) * r.uniform(0.45, 0.6)),
                 lambda c: _far(tuple(v * _LIP_LINE for v in c)) and color_distance(c, skin) > 30)
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=[0.12, 0.3, 0.2, 0.26, 0.12]))]
    hair = _pick(rng, lambda r: np.asarray(_HAIR[int(r.choice(len(_HAIR), p=_HAIR_P / _HAIR_P.sum()))]) + r.normal(0, 8, 3),
                 lambda c: color_distance(c, skin) > 40)
    brows = _pick(rng, lambda r: (np.asarray(hair, float) * r.uniform(0.85, 1.0) if style != "bald" and r.random() < 0.7
                                  else np.asarray(_HAIR[int(r.integers(4))]) + r.normal(0, 8, 3)),
                  lambda c: color_distance(c, skin) > 35)
    eye_color = _pick(rng, _jitter(_EYES[int(rng.integers(len(_EYES)))], 10), lambda c: True)
    background = "gradient" if rng.random() < 0.5 else "solid"
    far_from_face = lambda c: color_distance(c, skin) > 80 and color_distance(c, hair) > 45
    bg_top = _pick(rng, _random_rgb, far_from_face)
    bg_bottom = bg_top if background == "solid" else _pick(
        rng, lambda r: np.asarray(bg_top) * r.uniform(0.6, 1.3) + r.normal(0, 25, 3), far_from_face)
    shirt = _pick(rng, _random_rgb, lambda c: color_distance(c, skin) > 60)
    accessory = lambda: _pick(rng, _jitter(_ACCESSORY[int(rng.integers(len(_ACCESSORY)))], 10), lambda c: True)
    glasses, earrings, hat = rng.random() < 0.2, rng.random() < 0.15, rng.random() < 0.12
    return FaceIdentity(
        seed=int(seed), face_cx=float(0.5 + rng.uniform(-0.015, 0.015)), face_cy=float(rng.uniform(0.45, 0.47)),
        face_rx=face_rx, face_ry=face_ry, jaw=float(rng.uniform(0.0, 0.35)),
        skin=skin, lips=lips, lip_thickness=float(rng.uniform(0.022, 0.03)),
        mouth_y=float(rng.uniform(0.5, 0.56)), mouth_half_width=float(face_rx * rng.uniform(0.32, 0.38)),
        mouth_max_open=float(rng.uniform(0.12, 0.15)),
        hair_style=style, hair=hair, brows=brows, brow_thickness=float(rng.uniform(0.011, 0.02)),
        eye_color=eye_color, eye_rx=float(face_rx * rng.uniform(0.2, 0.25)), eye_ry=float(rng.uniform(0.027, 0.036)),
        eye_dx=float(face_rx * rng.uniform(0.38, 0.45)), eye_y=float(rng.uniform(0.12, 0.2)),
        background=background, bg_top=bg_top, bg_bottom=bg_bottom, shirt=shirt,
        glasses=bool(glasses), glasses_color=accessory() if glasses else (0, 0, 0),
        earrings=bool(earrings), earrings_color=accessory() if earrings else (0, 0, 0),
        hat=bool(hat), hat_color=accessory() if hat else (0, 0, 0),
    )


# ------------------------------------------------------------------------------------------------
# Motion
# ------------------------------------------------------------------------------------------------
def motion_tracks(frames: int, fps: float, *, seed: int) -> dict[str, np.ndarray]:
    """Head motion and blinks not driven by the audio: ``head_dx``, ``head_dy`` (frame heights,
    within about ±2/64), ``head_angle`` (degrees, within ±4) and ``blink`` (0..1), float32 ``[frames]``.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}.")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps

    def wander(limit: float) -> np.ndarray:
        freqs, phases = rng.uniform(0.05, 0.6, 4), rng.uniform(0, 2 * math.pi, 4)
        amps = rng.uniform(0.3, 1.0, 4)
        x = (amps[:, None] * np.sin(2 * math.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
        return x / amps.sum() * limit * float(rng.uniform(0.5, 1.0))

    blink = np.zeros(frames)
    tb = float(rng.uniform(0.5, 4.0))
    while tb < t[-1] + 1:
        blink = np.maximum(blink, np.clip(1.6 * np.cos(np.clip((t - tb) / 0.16, -0.5, 0.5) * math.pi), 0, 1))
        tb += float(rng.uniform(2.0, 6.0))
    return {"head_dx": wander(2 / 64).astype(np.float32), "head_dy": wander(2 / 64).astype(np.float32),
            "head_angle": wander(4.0).astype(np.float32), "blink": blink.astype(np.float32)}


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
def _ellipse(x, y, cx, cy, rx, ry, px):
    """Soft coverage (0..1) of an axis-aligned ellipse; the edge is about one pixel ``px`` wide."""
    u, v = (x - cx) / rx, (y - cy) / ry
    r = np.sqrt(u * u + v * v) + 1e-6
    grad = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) + 1e-6
    d = (r - 1) * r / grad  # signed distance to the edge (exact on the axes)
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _below(y, y0, px):
    """Soft coverage of the half plane ``y > y0``."""
    return np.clip(0.5 + (y - y0) / px, 0.0, 1.0)


def _layers(ident: FaceIdentity, x, y, fx, fy, tracks: dict, px: float):
    """Yield ``(label, coverage, rgb)`` back to front. ``x, y``: head-local coordinates ``[n, H, W]``;
    ``fx, fy``: frame coordinates ``[H, W]``; ``tracks``: per-frame arrays shaped ``[n, 1, 1]``."""
    cx, cy, rx, ry = ident.face_cx, ident.face_cy, ident.face_rx, ident.face_ry
    shade = tuple(c * _SHADE for c in ident.skin)
    # Body (frame coordinates, does not follow the head).
    yield LABELS["background"], _ellipse(fx, fy, 0.5, 1.16, 0.56, 0.3, px), ident.shirt
    yield LABELS["skin"], _ellipse(fx, fy, cx, cy + 0.8 * ry, 0.42 * rx, 0.35, px), shade
    long_back = ident.hair_style in ("long", "afro")
    if long_back:
        reach = 0.75 if ident.hair_style == "long" else 0.2
        back = _ellipse(x, y, cx, cy + 0.04, rx * 1.28, ry * 1.12, px) * (1 - _below(y, cy + ry * reach, px))
        yield LABELS["hair"], back, ident.hair
    for side in (-1, 1):
        yield LABELS["skin"], _ellipse(x, y, cx + side * rx * 0.97, cy + 0.02, 0.045, 0.07, px), shade
    # Face: an ellipse whose lower half narrows towards the chin.
    taper = 1 - ident.jaw * np.clip((y - cy) / ry, 0, 1) ** 2
    yield LABELS["skin"], _ellipse(x, y, cx, cy, rx * taper, ry, px), ident.skin
    if ident.earrings:
        for side in (-1, 1):
            yield LABELS["accessory"], _ellipse(x, y, cx + side * rx * 0.98, cy + 0.1, 0.018, 0.018, px), ident.earrings_color
    if ident.hair_style != "bald":
        scale, drop, curve = {"short": (1.06, 0.58, 0.55), "fringe": (1.07, 0.3, 0.25),
                              "long": (1.08, 0.5, 0.6), "afro": (1.28, 0.55, 0.5)}[ident.hair_style]
        hairline = cy - ry * drop + curve * ry * ((x - cx) / rx) ** 2
        cap = _ellipse(x, y, cx, cy - 0.02, rx * scale, ry * (1.04 + (scale - 1)), px) * (1 - _below(y, hairline, px))
        yield LABELS["hair"], cap, ident.hair
    # Eyes and brows.
    ey = cy - ident.eye_y * ry
    blink = tracks["blink"]
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx
        brow = _ellipse(x, y, ex, ey - ident.eye_ry * 2.0 - 0.012, ident.eye_rx * 1.15, ident.brow_thickness, px)
        yield LABELS["eyes"], brow, ident.brows
        sclera = _ellipse(x, y, ex, ey, ident.eye_rx, ident.eye_ry, px)
        yield LABELS["eyes"], sclera, _SCLERA
        iris_r = ident.eye_ry * 0.95
        yield LABELS["eyes"], sclera * _ellipse(x, y, ex, ey, iris_r, iris_r, px), ident.eye_color
        lid = sclera * (1 - _below(y, ey - ident.eye_ry + blink * 2.1 * ident.eye_ry, px))
        yield LABELS["skin"], lid, shade
    yield LABELS["skin"], _ellipse(x, y, cx, cy + 0.2 * ry, 0.028, 0.018, px), shade  # nose
    # Mouth: lips, then the interior (its height follows mouth_open), a lip line when closed.
    mx, my = cx, cy + ident.mouth_y * ry
    half_w = ident.mouth_half_width * (0.85 + 0.3 * tracks["mouth_width"])
    inner_h = 0.5 * ident.mouth_max_open * tracks["mouth_open"]
    yield LABELS["mouth"], _ellipse(x, y, mx, my, half_w, inner_h + ident.lip_thickness, px), ident.lips
    inner = _ellipse(x, y, mx, my, half_w * 0.85, np.maximum(inner_h, 1e-4), px) * np.clip(inner_h / (0.5 * px), 0, 1)
    yield LABELS["mouth"], inner, MOUTH_INTERIOR_RGB
    line = _ellipse(x, y, mx, my, half_w * 0.9, 0.35 * px, px) * np.clip(1 - inner_h / px, 0, 1)
    yield LABELS["mouth"], line, tuple(c * _LIP_LINE for c in ident.lips)
    # Accessories.
    if ident.glasses:
        grx, gry, t = ident.eye_rx * 1.45, ident.eye_ry * 1.9, 0.35 * px + 0.006
        for side in (-1, 1):
            ex = cx + side * ident.eye_dx
            ring = _ellipse(x, y, ex, ey, grx, gry, px) - _ellipse(x, y, ex, ey, grx - t, gry - t, px)
            yield LABELS["accessory"], np.clip(ring, 0, 1), ident.glasses_color
        yield LABELS["accessory"], _ellipse(x, y, cx, ey - 0.3 * gry, ident.eye_dx - grx + 0.004, t / 2, px), ident.glasses_color
    if ident.hat:
        crown = _ellipse(x, y, cx, cy - ry * 0.78, rx * 1.0, ry * 0.5, px) * (1 - _below(y, cy - ry * 0.6, px))
        yield LABELS["accessory"], crown, ident.hat_color
        yield LABELS["accessory"], _ellipse(x, y, cx, cy - ry * 0.62, rx * 1.3, 0.03, px), ident.hat_color


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32 or size % 8:
        raise ValueError(f"size must be an integer >= 32 and a multiple of 8, got {size!r}.")


_NEUTRAL = {"mouth_open": 0.0, "mouth_width": 0.5, "blink": 0.0, "head_dx": 0.0, "head_dy": 0.0, "head_angle": 0.0}


def _frame_tracks(tracks: dict) -> tuple[int, dict[str, np.ndarray]]:
    """Validate ``tracks`` (``mouth_open`` required, the rest default to rest) -> (frames, arrays)."""
    if "mouth_open" not in tracks:
        raise ValueError("tracks must hold 'mouth_open' (and optionally mouth_width, blink, head_dx, head_dy, head_angle).")
    n = len(np.asarray(tracks["mouth_open"]))
    if n < 1:
        raise ValueError("tracks['mouth_open'] is empty; give at least one frame.")
    out = {}
    for key, rest in _NEUTRAL.items():
        v = np.asarray(tracks.get(key, np.full(n, rest)), np.float32).reshape(-1)
        if v.shape != (n,) or not np.all(np.isfinite(v)):
            raise ValueError(f"tracks['{key}'] must be {n} finite values (one per frame), got shape {v.shape}.")
        out[key] = v
    return n, out


def _background(ident: FaceIdentity, size: int) -> np.ndarray:
    w = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    top, bottom = np.array(ident.bg_top, np.float32), np.array(ident.bg_bottom, np.float32)
    return np.broadcast_to(top + (bottom - top) * w, (size, size, 3))


def render_frames(identity: FaceIdentity, tracks: dict, size: int = 64, *, chunk: int = 64) -> np.ndarray:
    """Render one frame per entry of ``tracks['mouth_open']`` -> uint8 ``[F, size, size, 3]``.

    ``tracks`` may also hold ``mouth_width``, ``blink``, ``head_dx``, ``head_dy``, ``head_angle``
    (see :func:`motion_tracks`); missing ones stay at rest.
    """
    _check_size(size)
    n, tr = _frame_tracks(tracks)
    fx, fy = _grid(size)
    px = 1.0 / size
    bg = _background(identity, size)
    pivot_x, pivot_y = identity.face_cx, identity.face_cy + 0.6 * identity.face_ry  # rotate about the neck
    out = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        t = {k: v[sl, None, None] for k, v in tr.items()}
        a = np.deg2rad(t["head_angle"])
        ca, sa = np.cos(a), np.sin(a)
        dx, dy = fx[None] - pivot_x - t["head_dx"], fy[None] - pivot_y - t["head_dy"]
        x = (ca * dx + sa * dy + pivot_x).astype(np.float32)
        y = (-sa * dx + ca * dy + pivot_y).astype(np.float32)
        # Channel-first planes: blending contiguous [n, H, W] planes is much faster than [..., 3].
        img = np.repeat(bg.transpose(2, 0, 1)[:, None], sl.stop - sl.start, axis=1)
        for _, cov, rgb in _layers(identity, x, y, fx, fy, t, px):
            for plane, value in zip(img, rgb):
                plane += cov * (np.float32(value) - plane)
        out[sl] = np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)
    return out


def render_portrait(identity: FaceIdentity, size: int = 64) -> np.ndarray:
    """The identity at rest (mouth closed, eyes open, no head offset) -> uint8 ``[size, size, 3]``."""
    return render_frames(identity, {"mouth_open": np.zeros(1)}, size)[0]


def render_labels(identity: FaceIdentity, size: int = 64) -> np.ndarray:
    """Part labels of :func:`render_portrait` -> uint8 ``[size, size]`` (values in :data:`LABELS`).

    A pixel gets the label of the front-most shape covering more than half of it; the neck and ears
    count as skin, the clothes as background.
    """
    _check_size(size)
    fx, fy = _grid(size)
    _, tr = _frame_tracks({"mouth_open": np.zeros(1)})
    t = {k: v[:, None, None] for k, v in tr.items()}
    labels = np.zeros((size, size), np.uint8)
    for label, cov, _ in _layers(identity, fx[None], fy[None], fx, fy, t, 1.0 / size):
        labels[np.broadcast_to(cov, (1, size, size))[0] > 0.5] = label
    return labels


def measure_mouth_opening(frames) -> np.ndarray:
    """Mouth opening read from pixels only -> float32 ``[F]``.

    Per frame: the soft count of pixels whose colour lies near :data:`MOUTH_INTERIOR_RGB`
    (weight ``clip(1 - distance / MEASURE_RADIUS, 0, 1)``) in the lower two thirds of the frame,
    divided by the frame's area (so it does not depend on the resolution). ``frames``: uint8
    ``[F, H, W, 3]`` (or one ``[H, W, 3]`` image), or a torch ``[F, 3, H, W]`` tensor in [-1, 1].
    """
    if not isinstance(frames, np.ndarray):
        import torch

        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            raise TypeError("frames must be uint8 numpy [F, H, W, 3] or a torch tensor [F, 3, H, W] in [-1, 1].")
        frames = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    frames = frames[None] if frames.ndim == 3 else frames
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got shape {frames.shape}.")
    h, w = frames.shape[1:3]
    region = frames[:, h // 3:].astype(np.float32)
    d = np.sqrt(((region - _INTERIOR) ** 2).sum(-1))
    return (np.clip(1 - d / MEASURE_RADIUS, 0, 1).sum((1, 2)) / (h * w)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Samples and datasets
# ------------------------------------------------------------------------------------------------
def _check_common(seconds, size, fps, sample_rate=16000) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}.")
    _check_size(size)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer >= 8000 Hz, got {sample_rate!r}.")


def sample_seeds(seed: int) -> dict[str, int]:
    """Independent identity, speech and motion seeds derived from a sample's ``seed``."""
    kids = np.random.SeedSequence(int(seed)).spawn(3)
    return {name: int(k.generate_state(1)[0]) for name, k in zip(("identity", "speech", "motion"), kids)}


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def make_sample(seed: int, seconds: float, out_dir, *, size: int = 64, fps: float = 25.0,
                sample_rate: int = 16000, stem: str | None = None, crf: int = 18) -> Path:
    """Write one sample (``<stem>.mp4/.wav/_portrait.png/_labels.png/.json``); returns the json path."""
    import torch

    from ..io.audio_file import save_wav
    from ..io.video import VideoWriter

    _check_common(seconds, size, fps, sample_rate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"sample_{int(seed)}"
    seeds = sample_seeds(seed)
    ident = sample_identity(seeds["identity"])
    speech = synthesize_speech(seconds, seed=seeds["speech"], sample_rate=sample_rate)
    tracks = speech.frame_tracks(fps)
    frames = len(tracks["mouth_open"])
    tracks.update(motion_tracks(frames, fps, seed=seeds["motion"]))
    files = {"video": f"{stem}.mp4", "audio": f"{stem}.wav", "portrait": f"{stem}_portrait.png",
             "labels": f"{stem}_labels.png"}
    audio = torch.from_numpy(speech.waveform)[None]
    with VideoWriter(out / files["video"], fps, audio=audio, audio_rate=sample_rate, crf=crf) as writer:
        for start in range(0, frames, 250):
            part = {k: v[start:start + 250] for k, v in tracks.items()}
            writer.write(render_frames(ident, part, size))
    save_wav(out / files["audio"], audio, sample_rate)
    _save_png(out / files["portrait"], render_portrait(ident, size))
    _save_png(out / files["labels"], render_labels(ident, size))
    truth = {"version": SCHEMA_VERSION, "seed": int(seed), "fps": float(fps), "size": [size, size],
             "sample_rate": sample_rate, "frames": frames, "seconds": float(seconds), "identity": ident.to_dict(),
             "tracks": {k: [round(float(x), 5) for x in tracks[k]] for k in _NEUTRAL},
             "files": files}
    path = out / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(truth))
    tmp.replace(path)  # the json appears last: its presence means the sample is complete
    return path


def dataset_sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _make_indexed(args) -> str:
    out, seed, index, seconds, size, fps = args
    stem = f"s{index:05d}"
    if not (Path(out) / f"{stem}.json").exists():
        make_sample(dataset_sample_seed(seed, index), seconds, out, size=size, fps=fps, stem=stem)
    return stem


def make_dataset(out_dir, *, count: int, seconds: float, seed: int, size: int = 64, fps: float = 25.0,
                 workers: int = 1) -> Path:
    """Write ``count`` samples ``s00000 ...`` and ``manifest.json`` into ``out_dir``; returns the manifest.

    Samples whose json exists are skipped, so an interrupted run resumes.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}.")
    _check_common(seconds, size, fps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), int(seed), i, float(seconds), size, float(fps)) for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            stems = list(pool.map(_make_indexed, jobs))
    else:
        stems = [_make_indexed(job) for job in jobs]
    manifest = {"version": SCHEMA_VERSION, "seed": int(seed), "count": count, "seconds": float(seconds),
                "size": size, "fps": float(fps), "samples": stems}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


@dataclass
class GroundTruth:
    """A sample's json, loaded: per-frame ``tracks`` (float32 arrays), identity and resolved file paths."""

    json_path: Path
    seed: int
    fps: float
    frames: int
    seconds: float
    size: tuple[int, int]
    sample_rate: int
    identity: FaceIdentity
    tracks: dict[str, np.ndarray] = field(default_factory=dict)
    video: Path | None = None
    audio: Path | None = None
    portrait_path: Path | None = None
    labels_path: Path | None = None

    def portrait(self) -> np.ndarray:
        """The reference portrait, uint8 ``[H, W, 3]``."""
        from PIL import Image

        return np.asarray(Image.open(self.portrait_path).convert("RGB"))

    def labels(self) -> np.ndarray:
        """The portrait's part labels, uint8 ``[H, W]``."""
        from PIL import Image

        return np.asarray(Image.open(self.labels_path))


def load_truth(json_path) -> GroundTruth:
    """Read a sample's ground-truth json (paths resolved relative to it)."""
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"Ground-truth file '{path}' does not exist.")
    data = json.loads(path.read_text())
    if data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"'{path}' has version {data.get('version')!r}; this code reads version {SCHEMA_VERSION}.")
    tracks = {k: np.asarray(v, np.float32) for k, v in data["tracks"].items()}
    for key, v in tracks.items():
        if len(v) != data["frames"]:
            raise ValueError(f"'{path}': track '{key}' has {len(v)} values for {data['frames']} frames.")
    files = {k: path.parent / v for k, v in data["files"].items()}
    return GroundTruth(json_path=path, seed=int(data["seed"]), fps=float(data["fps"]), frames=int(data["frames"]),
                       seconds=float(data["seconds"]), size=tuple(data["size"]), sample_rate=int(data["sample_rate"]),
                       identity=FaceIdentity.from_dict(data["identity"]), tracks=tracks, video=files["video"],
                       audio=files["audio"], portrait_path=files["portrait"], labels_path=files["labels"])


# ------------------------------------------------------------------------------------------------
# Command line (wired into ``letstalk`` by the CLI module)
# ------------------------------------------------------------------------------------------------
def add_synth_command(subparsers) -> argparse.ArgumentParser:
    """Add ``letstalk synth --out DIR --count N --seconds S --seed K [--size] [--fps] [--workers]``."""
    p = subparsers.add_parser("synth", help="write a procedural talking-face dataset (video, audio, ground truth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, required=True, help="number of samples")
    p.add_argument("--seconds", type=float, required=True, help="length of each sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural person, face and speech")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (multiple of 8, >= 32)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the samples")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.set_defaults(func=run_synth_command)
    return p


def run_synth_command(args) -> int:
    import time

    from ..validation import require_folder_out

    t0 = time.perf_counter()
    manifest = make_dataset(require_folder_out(args.out, "synth's samples"), count=args.count, seconds=args.seconds, seed=args.seed, size=args.size,
                            fps=args.fps, workers=args.workers)
    print(f"wrote {args.count} samples of {args.seconds:g} s ({args.size}px, {args.fps:g} fps) to {manifest.parent} "
          f"in {time.perf_counter() - t0:.1f} s; manifest: {manifest}")
    return 0
