"""Whole-video evaluation: stream an mp4 through the metrics, format a table, ``letstalk eval``.

``evaluate_video`` decodes the video once, chunk by chunk (memory is bounded by ``chunk`` frames
whatever the video's length), and feeds every chunk to the accumulators of :mod:`.metrics`.

    letstalk eval out_a.mp4 out_b.mp4 --clip-frames 16 --truth sample.json --json results.json
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.video import iter_video_chunks
from ..loop import OVERLAP_TAG
from .metrics import (
    BoundaryJumpAccumulator,
    ColourDriftAccumulator,
    FlickerAccumulator,
    PixelDriftAccumulator,
    _check_clip_frames,
    _check_fps,
    erode,
    lip_sync,
)

#: Columns :func:`format_table` shows by default (those present in at least one row), in order.
DEFAULT_COLUMNS = (
    "lipsync_corr", "lipsync_best_lag", "lipsync_corr_at_0",
    "face_de_max", "face_de_slope_per_min", "hair_de_max", "hair_de_slope_per_min",
    "frame_de_max", "frame_de_slope_per_min", "pixel_mae_max", "pixel_mae_slope_per_min",
    "boundary_jump_ratio", "boundary_mean", "within_mean", "flicker", "flicker_ratio",
    "frames", "seconds",
)
#: Label values of the procedural dataset's label PNG used as colour-drift regions.
TRUTH_REGIONS = {"face": 1, "hair": 2}




def _finite_or_none(value):
    """JSON-safe number: nan/inf become None; numpy scalars become Python numbers."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _check_portrait(portrait, height: int, width: int, what: str = "portrait") -> np.ndarray:
    p = np.asarray(portrait)
    if p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 [H, W, 3] RGB, got {p.dtype} with shape {p.shape}.")
    if p.shape[:2] != (height, width):
        raise ValueError(
            f"{what} is {p.shape[1]}x{p.shape[0]} but the video is {width}x{height}; give the portrait at the "
            "video's size (e.g. the cropped/resized portrait the generator used)."
        )
    return p


def evaluate_video(video_path, *, clip_frames: int, overlap: int = 0, portrait: np.ndarray | None = None, masks: dict | None = None,
                   truth_mouth: np.ndarray | None = None, measure_mouth: Callable[[np.ndarray], np.ndarray] | None = None,
                   fps=None, chunk: int = 256, window_seconds: float = 10.0, max_lag: int = 5) -> dict:
    """Evaluate one video file; returns a flat JSON-serialisable dict (nan/inf stored as None).

    Always (any video):

    * ``frames``, ``seconds`` (frames / fps), ``fps``, ``clip_frames``, ``overlap`` (frames
      consecutive clips share; seams lie where the generator's plan puts them);
    * colour drift of the whole frame vs. ``portrait`` (uint8 ``[H, W, 3]`` at the video's size)
      or, without one, vs. the video's first frame: ``frame_de_max``, ``frame_de_slope_per_min``,
      ``frame_de_mean``, ``frame_de_windows`` (list), see :func:`.metrics.colour_drift`;
    * ``pixel_mae_max``, ``pixel_mae_slope_per_min``, ``pixel_mae_mean``, ``pixel_mae_windows``: the
      mean absolute difference of the frames from the same reference per window
      (:func:`.metrics.pixel_drift`: structure, not just colour);
    * ``boundary_mean``, ``within_mean``, ``boundary_jump_ratio`` (:func:`.metrics.boundary_jump`);
    * ``flicker`` and ``flicker_ratio`` (:func:`.metrics.flicker`: second temporal differences
      within clips of 4x4 box low-passed frames; the ratio is to their within-clip mean change).

    With ``masks`` (name -> bool ``[H, W]`` in portrait coordinates, already eroded): the same
    four ``<name>_de_*`` keys per region. With both ``truth_mouth`` (``[F]``, one value per video
    frame) and ``measure_mouth`` (uint8 frames ``[n, H, W, 3]`` -> float ``[n]``):
    ``lipsync_corr`` (best correlation over lags ±``max_lag``), ``lipsync_best_lag`` (frames;
    positive = the video lags behind the truth) and ``lipsync_corr_at_0``.

    ``fps`` defaults to the file's; ``chunk`` bounds the frames held in memory at once.
    """
    from ..io.video import probe_video

    clip_frames = _check_clip_frames(clip_frames)
    if (truth_mouth is None) != (measure_mouth is None):
        raise ValueError("give truth_mouth and measure_mouth together (or neither) to measure lip sync.")
    if measure_mouth is not None and not callable(measure_mouth):
        raise TypeError(f"measure_mouth must be a function frames -> mouth opening, got {type(measure_mouth).__name__}.")
    if masks and portrait is None:
        raise ValueError("masks are in portrait coordinates; give the portrait too.")
    info = probe_video(video_path)
    if info.frame_count == 0:
        raise ValueError(f"'{video_path}' has no frames.")
    fps = _check_fps(info.fps if fps is None else fps)
    if portrait is not None:
        portrait = _check_portrait(portrait, info.height, info.width)
    truth = None
    if truth_mouth is not None:
        truth = np.asarray(truth_mouth, dtype=np.float64)
        if truth.ndim != 1 or truth.size != info.frame_count:
            raise ValueError(
                f"truth_mouth has shape {truth.shape} but '{video_path}' has {info.frame_count} frames; the ground "
                "truth must give one mouth value per video frame (same audio, same fps)."
            )

    drift = ColourDriftAccumulator(portrait, masks, fps, window_seconds) if portrait is not None else None
    pixels = PixelDriftAccumulator(portrait, fps, window_seconds) if portrait is not None else None
    jump = BoundaryJumpAccumulator(clip_frames, overlap)
    flick = FlickerAccumulator(clip_frames, overlap=overlap)
    measured: list[np.ndarray] = []
    frames = 0
    for part in iter_video_chunks(video_path, chunk):
        if drift is None:
            drift = ColourDriftAccumulator(part[0], None, fps, window_seconds)
            pixels = PixelDriftAccumulator(part[0], fps, window_seconds)
        drift.update(part)
        pixels.update(part)
        jump.update(part)
        flick.update(part)
        if measure_mouth is not None:
            values = np.asarray(measure_mouth(part), dtype=np.float64).reshape(-1)
            if values.size != part.shape[0]:
                raise ValueError(f"measure_mouth returned {values.size} values for {part.shape[0]} frames; it must return one per frame.")
            measured.append(values)
        frames += part.shape[0]

    out: dict = {"frames": frames, "seconds": frames / fps, "fps": fps, "clip_frames": clip_frames, "overlap": overlap}
    if truth is not None:
        if frames != truth.size:
            raise ValueError(f"decoded {frames} frames but truth_mouth has {truth.size}.")
        sync = lip_sync(np.concatenate(measured), truth, max_lag=max_lag)
        out.update(lipsync_corr=sync.best_corr, lipsync_best_lag=sync.best_lag, lipsync_corr_at_0=sync.corr_at_zero)
    colour = drift.result()
    for name, region in colour.regions.items():
        out[f"{name}_de_max"] = region.max
        out[f"{name}_de_slope_per_min"] = region.slope_per_min
        out[f"{name}_de_mean"] = region.mean
        out[f"{name}_de_windows"] = [_finite_or_none(v) for v in region.windows]
    px = pixels.result()
    out.update(pixel_mae_max=px.max, pixel_mae_slope_per_min=px.slope_per_min, pixel_mae_mean=px.mean,
               pixel_mae_windows=[_finite_or_none(v) for v in px.windows])
    j = jump.result()
    out.update(boundary_mean=j.boundary_mean, within_mean=j.within_mean, boundary_jump_ratio=j.ratio)
    fl = flick.result()
    out.update(flicker=fl.flicker, flicker_ratio=fl.ratio)
    return {k: (v if isinstance(v, list) else _finite_or_none(v)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------


def _format_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        if abs(v) >= 0.01:
            return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.1f}"
        return f"{v:.2e}"
    return str(value).replace("|", "\\|")


def format_table(rows: list[tuple[str, dict]], columns=None, *, first: str = "video") -> str:
    """GitHub-markdown table: one row per ``(name, result)``, one column per key.

    ``columns`` defaults to the keys of :data:`DEFAULT_COLUMNS` present in at least one result,
    followed by the other scalar region keys (``<region>_de_max``/``_slope_per_min``) found.
    Missing values show as "–"; numbers get 3 decimals (large ones fewer, tiny ones exponent).
    """
    if columns is None:
        present = {k for _, r in rows for k in r}
        columns = [c for c in DEFAULT_COLUMNS if c in present]
        extra = sorted(k for k in present if k not in columns and k.endswith(("_de_max", "_de_slope_per_min")))
        columns += extra
    columns = list(columns)
    header = f"| {first} | " + " | ".join(columns) + " |"
    rule = "|---|" + "".join("---:|" for _ in columns)
    lines = [header, rule]
    for name, result in rows:
        cells = [_format_value(result.get(c)) for c in columns]
        lines.append(f"| {str(name).replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _read_png_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _read_png_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            im = im.convert("L")
        return np.asarray(im).astype(np.int64)


def load_eval_truth(path, erode_pixels: int = 3) -> dict:
    """Read a procedural-dataset ground-truth JSON: ``{"fps", "mouth", "portrait", "masks", "video"}``.

    ``mouth`` is ``tracks.mouth_open`` (float ``[F]``), ``portrait`` the uint8 portrait PNG,
    ``masks`` ``{"face": label 1, "hair": label 2}`` from the labels PNG, each eroded by
    ``erode_pixels`` (a region left empty by the erosion, or absent from the labels, is omitted);
    ``video`` the path of the dataset's own video. File names are relative to the JSON's folder.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Ground-truth file '{p}' does not exist.")
    try:
        truth = json.loads(p.read_text())
        files, tracks = truth["files"], truth["tracks"]
        mouth = np.asarray(tracks["mouth_open"], dtype=np.float64)
        fps = truth["fps"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"'{p}' is not a procedural ground-truth JSON (need files, tracks.mouth_open, fps): {exc!r}.") from exc
    folder = p.parent
    for key in ("portrait", "labels"):
        if key not in files or not (folder / files[key]).is_file():
            raise FileNotFoundError(f"'{p}' names files.{key} = {files.get(key)!r}, which is not in '{folder}'.")
    portrait = _read_png_rgb(folder / files["portrait"])
    labels = _read_png_labels(folder / files["labels"])
    if labels.shape != portrait.shape[:2]:
        raise ValueError(f"labels PNG is {labels.shape[::-1]} but the portrait is {portrait.shape[1::-1]} in '{p}'.")
    masks = {}
    for name, label in TRUTH_REGIONS.items():
        mask = erode(labels == label, erode_pixels)
        if mask.any():
            masks[name] = mask
    return {"fps": fps, "mouth": mouth, "portrait": portrait, "masks": masks,
            "video": folder / files["video"] if "video" in files else None}


def _procedural_mouth_measure():
    """The procedural dataset's mouth measure, imported lazily (``frames uint8 [n, H, W, 3] -> [n]``)."""
    from ..data.procedural import measure_mouth_opening

    return measure_mouth_opening


def add_eval_command(subparsers) -> None:
    """Add ``letstalk eval VIDEO [VIDEO ...] --clip-frames 16 [--truth GT.json] [--portrait PNG] [--json OUT]``."""
    p = subparsers.add_parser("eval", help="measure lip sync, colour drift, clip-boundary jumps and flicker of videos")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (.mp4) to evaluate")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per generated clip (boundaries at multiples of it)")
    p.add_argument("--overlap", type=int, default=None,
                   help="frames consecutive clips share (as given to generate); default: the video's own "
                        "'letstalk_overlap' tag, else 0")
    p.add_argument("--truth", help="procedural ground-truth JSON: adds lip sync and face/hair colour drift")
    p.add_argument("--portrait", help="portrait image (at the video's size) for colour drift; default: the truth's "
                                      "portrait, else the video's first frame")
    p.add_argument("--json", dest="json_out", help="also write the results here as JSON")
    p.add_argument("--window-seconds", type=float, default=10.0, help="colour-drift window length (s)")
    p.add_argument("--max-lag", type=int, default=5, help="lip-sync lags searched, in frames (±)")
    p.add_argument("--erode", type=int, default=3, help="pixels the truth's face/hair masks are eroded by")
    p.add_argument("--chunk", type=int, default=256, help="frames decoded at a time")
    p.set_defaults(func=run_eval_command)


def _video_overlap(video, given: int | None) -> int:
    """The overlap to score ``video`` with: the one given, else its ``letstalk_overlap`` tag (written
    by ``letstalk generate``/``demo``), else 0."""
    if given is not None:
        return given
    from ..io.video import probe_video

    tag = probe_video(video, decode=False).metadata.get(OVERLAP_TAG, "0")  # the header is enough
    try:
        return int(tag)
    except ValueError:
        raise ValueError(f"'{video}' has a malformed '{OVERLAP_TAG}' tag ({tag!r}); give --overlap.") from None


def run_eval_command(args) -> int:
    """Run ``letstalk eval``: evaluate each video, print a markdown table, optionally write JSON."""
    kwargs: dict = {"clip_frames": args.clip_frames, "chunk": args.chunk,
                    "window_seconds": args.window_seconds, "max_lag": args.max_lag}
    if args.truth:
        truth = load_eval_truth(args.truth, erode_pixels=args.erode)
        kwargs.update(portrait=truth["portrait"], masks=truth["masks"], truth_mouth=truth["mouth"],
                      measure_mouth=_procedural_mouth_measure())
    if args.portrait:
        portrait_path = Path(args.portrait)
        if not portrait_path.is_file():
            raise FileNotFoundError(f"Portrait '{portrait_path}' does not exist.")
        kwargs["portrait"] = _read_png_rgb(portrait_path)
    rows = []
    for video in args.videos:
        rows.append((video, evaluate_video(video, overlap=_video_overlap(video, args.overlap), **kwargs)))
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({name: result for name, result in rows}, indent=2) + "\n")
    return 0
