"""Face detection and the fixed per-video crop box used by preprocessing.

A detector is any object with ``detect(frame) -> list[Box]`` (:class:`FaceDetector`), where
``frame`` is one RGB uint8 image ``[H, W, 3]`` (numpy) and a ``Box`` is ``(x0, y0, x1, y1, score)``
in frame pixels (floats, ``x1``/``y1`` exclusive). Implementations:

* :class:`NoDetector`: the whole frame is the face (footage already cropped to the head).
* :class:`HaarDetector`: OpenCV's frontal-face Haar cascade (``pip install opencv-python-headless``).
* :class:`OnnxDetector`: any single-output ONNX face detector following the contract documented on
  the class (``pip install onnxruntime``).
* ``letstalk_core.face.analysis.ScrfdDetector``: insightface's SCRFD (``scrfd_10g_bnkps.onnx``, the
  detector of MEMO's face analysis), decoded exactly as insightface does (``pip install onnxruntime``).

:func:`make_detector` builds one from a command-line spec (``none``, ``haar``, ``onnx:/path/model.onnx``,
``scrfd:/path/scrfd.onnx``, ``memo:/path/to/memo`` (the SCRFD model in MEMO's folder)).
:func:`crop_box_for_video` turns the detections of a few sampled frames into ONE box for the
whole video (a fixed crop, so the head moves inside it as in the training data of the paper), and
:func:`crop_and_resize` applies it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DETECTOR_SPECS",
    "Box",
    "FaceDetector",
    "HaarDetector",
    "haar_detector",
    "NoDetector",
    "OnnxDetector",
    "crop_and_resize",
    "crop_box_for_video",
    "make_detector",
    "sample_indices",
]

Box = tuple[float, float, float, float, float]  # x0, y0, x1, y1, score (frame pixels)
DETECTOR_SPECS = "none, haar or onnx:/path/to/model.onnx, scrfd:/path/to/scrfd.onnx or memo:/path/to/memo"


@runtime_checkable
class FaceDetector(Protocol):
    """``detect(frame_rgb_uint8 [H, W, 3]) -> list[(x0, y0, x1, y1, score)]`` in frame pixels."""

    def detect(self, frame: np.ndarray) -> list[Box]: ...


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a detector takes one RGB uint8 frame [H, W, 3], got {frame.dtype} {tuple(frame.shape)}.")
    return frame


class NoDetector:
    """The whole frame is the face: for footage that is already cropped to the head."""

    name = "none"

    def detect(self, frame: np.ndarray) -> list[Box]:
        h, w = _check_frame(frame).shape[:2]
        return [(0.0, 0.0, float(w), float(h), 1.0)]


class HaarDetector:
    """OpenCV's ``haarcascade_frontalface_default.xml`` (frontal faces; fast, CPU only, no weights to fetch).

    ``scale_factor``/``min_neighbors``/``min_size`` go to ``detectMultiScale``. Scores are the
    detection's neighbour count when OpenCV reports it, else 1.0 (the largest face wins anyway).
    """

    name = "haar"

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 32):
        try:
            import cv2
        except ImportError as e:
            raise ImportError(
                "The 'haar' face detector needs OpenCV, which is not installed. Install it with "
                "`pip install opencv-python-headless` (or use --detector none for footage already cropped "
                "to the face, or --detector onnx:PATH)."
            ) from e
        self._cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load its Haar cascade '{path}'; reinstall opencv-python-headless.")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def detect(self, frame: np.ndarray) -> list[Box]:
        cv2 = self._cv2
        gray = cv2.cvtColor(_check_frame(frame), cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        return [(float(x), float(y), float(x + w), float(y + h), 1.0) for (x, y, w, h) in found]


def haar_detector(hint: str) -> HaarDetector:
    """OpenCV's detector, or a ``ValueError`` that says how to install OpenCV and, in ``hint``, what else to do."""
    try:
        return HaarDetector()
    except ImportError as e:
        raise ValueError(f"finding faces with OpenCV's Haar cascade needs OpenCV (pip install opencv-python-headless); "
                         f"{hint}") from e


class OnnxDetector:
    """A face detector exported to ONNX with one simple contract (run through onnxruntime).

    Expected model I/O:

    * **input** (the model's first input): float32 ``[1, 3, S, S]``, RGB in ``[0, 1]``, where
      ``S = input_size``. The frame is *letterboxed*: scaled by ``S / max(H, W)`` (aspect kept,
      bilinear, antialiased) into the top-left corner, the rest zero.
    * **output** (the model's first output): ``[N, 5]`` or ``[1, N, 5]`` rows
      ``(x0, y0, x1, y1, score)`` in input pixels (after the model's own NMS). ``N`` may be 0.

    Boxes are mapped back to frame pixels (divided by the letterbox scale, clipped to the frame)
    and those with ``score < min_score`` dropped. Wrap detectors with another layout (anchor
    outputs, landmarks, BGR input) in a small ONNX graph or write a Python :class:`FaceDetector`.
    ``session``: an already built ``onnxruntime.InferenceSession`` (or anything with ``get_inputs()``
    and ``run()``); otherwise one is made from ``model_path`` with ``providers`` (default: CPU).
    """

    name = "onnx"

    def __init__(self, model_path, *, input_size: int = 640, min_score: float = 0.5, providers=None, session=None):
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 16:
            raise ValueError(f"input_size must be an integer >= 16 (the model's square input side), got {input_size!r}.")
        self.model_path = str(model_path)
        self.input_size, self.min_score = input_size, float(min_score)
        self.name = f"onnx:{Path(self.model_path).name}"
        if session is None:
            try:
                import onnxruntime
            except ImportError as e:
                raise ImportError(
                    "The 'onnx' face detector needs onnxruntime, which is not installed. Install it with "
                    "`pip install onnxruntime` (or onnxruntime-gpu), or use --detector haar / none."
                ) from e
            if not Path(self.model_path).is_file():
                raise FileNotFoundError(f"ONNX face detector '{self.model_path}' does not exist.")
            session = onnxruntime.InferenceSession(self.model_path, providers=providers or ["CPUExecutionProvider"])
        self.session = session
        self._input_name = session.get_inputs()[0].name

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        s = self.input_size
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
        out = torch.zeros(1, 3, s, s)
        out[:, :, :nh, :nw] = x.clamp(0, 1)
        return out.numpy(), scale

    def detect(self, frame: np.ndarray) -> list[Box]:
        frame = _check_frame(frame)
        h, w = frame.shape[:2]
        blob, scale = self._letterbox(frame)
        outputs = self.session.run(None, {self._input_name: blob})
        boxes = np.asarray(outputs[0], dtype=np.float64)
        if boxes.ndim == 3 and boxes.shape[0] == 1:
            boxes = boxes[0]
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"the ONNX face detector '{self.model_path}' returned an output of shape {tuple(np.shape(outputs[0]))}; "
                "expected [N, 5] or [1, N, 5] rows (x0, y0, x1, y1, score) in input pixels. See OnnxDetector's "
                "documentation for the expected model I/O."
            )
        result = []
        for x0, y0, x1, y1, score in boxes:
            if score < self.min_score:
                continue
            x0, x1 = (float(np.clip(v / scale, 0, w)) for v in (x0, x1))
            y0, y1 = (float(np.clip(v / scale, 0, h)) for v in (y0, y1))
            if x1 > x0 and y1 > y0:
                result.append((x0, y0, x1, y1, float(score)))
        return result


def make_detector(spec: str) -> FaceDetector:
    """``"none"`` → :class:`NoDetector`, ``"haar"`` → :class:`HaarDetector`, ``"onnx:PATH"`` → :class:`OnnxDetector`,
    ``"scrfd:PATH"`` → SCRFD (``letstalk_core.face.analysis.ScrfdDetector``), ``"memo:FOLDER"`` → the SCRFD model
    of a MEMO folder (``misc/face_analysis/models/scrfd_10g_bnkps.onnx``)."""
    if not isinstance(spec, str):
        raise TypeError(f"detector spec must be a string ({DETECTOR_SPECS}), got {spec!r}.")
    if spec == "none":
        return NoDetector()
    if spec == "haar":
        return HaarDetector()
    if spec.startswith("onnx:") and len(spec) > 5:
        return OnnxDetector(spec[5:])
    for prefix in ("scrfd:", "memo:"):
        if spec.startswith(prefix) and len(spec) > len(prefix):
            from .analysis import ScrfdDetector

            path = spec[len(prefix):]
            return ScrfdDetector(path) if prefix == "scrfd:" else ScrfdDetector.from_folder(path)
    raise ValueError(f"unknown face detector {spec!r}; use {DETECTOR_SPECS}.")


def sample_indices(count: int, samples: int = 16) -> list[int]:
    """Up to ``samples`` evenly spaced frame indices of ``range(count)`` (first and last included)."""
    if count <= 0:
        return []
    if count <= samples:
        return list(range(count))
    return sorted({round(i * (count - 1) / (samples - 1)) for i in range(samples)})


def crop_box_for_video(detections: Sequence[Sequence[Box]], frame_size: tuple[int, int], *, scale: float = 1.6,
                       square: bool = True, source: str = "the video") -> tuple[int, int, int, int]:
    """One fixed crop box ``(x0, y0, x1, y1)`` (integer pixels, exclusive end) for a whole video.

    ``detections``: per sampled frame, that frame's boxes. ``frame_size``: ``(width, height)``.
    The largest box (by area) of each frame that has any is kept; the box's centre and size are the
    medians of those over the frames. The size is enlarged ``scale`` times (to take in hair, chin
    and some motion room); with ``square`` the side is ``scale * max(median width, median height)``.
    The box is then fitted inside the frame: shrunk (about its centre) to the frame when larger
    than it (for a square box: to the frame's short side), then shifted, not shrunk further, to lie
    inside the frame, so near an edge the face is off-centre rather than cropped. So a detection of
    the whole frame (:class:`NoDetector`) gives the largest centred square.
    Raises ``ValueError`` naming ``source`` when no sampled frame has a face.
    """
    width, height = (int(v) for v in frame_size)
    if width < 1 or height < 1:
        raise ValueError(f"frame_size must be (width, height) >= 1, got {frame_size!r}.")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}.")
    largest = []
    for boxes in detections:
        boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        if boxes:
            largest.append(max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))
    if not largest:
        raise ValueError(
            f"no face was found in any of the {len(detections)} sampled frames of {source}. Check the footage, "
            "try another detector (--detector haar / onnx:PATH), or use --detector none if it is already cropped."
        )
    b = np.asarray([bb[:4] for bb in largest], dtype=np.float64)
    cx = float(np.median((b[:, 0] + b[:, 2]) / 2))
    cy = float(np.median((b[:, 1] + b[:, 3]) / 2))
    bw, bh = float(np.median(b[:, 2] - b[:, 0])), float(np.median(b[:, 3] - b[:, 1]))
    if square:
        side = min(round(scale * max(bw, bh)), width, height)
        sw = sh = max(1, side)
    else:
        sw = max(1, min(round(scale * bw), width))
        sh = max(1, min(round(scale * bh), height))
    x0 = int(min(max(round(cx - sw / 2), 0), width - sw))
    y0 = int(min(max(round(cy - sh / 2), 0), height - sh))
    return x0, y0, x0 + sw, y0 + sh


def crop_and_resize(frames: torch.Tensor, box: Sequence[int], size) -> torch.Tensor:
    """Crop ``frames [N, 3, H, W]`` (float, [-1, 1]) to ``box = (x0, y0, x1, y1)`` and resize to ``size``
    (an int for a square, or ``(height, width)``).

    Downscaling uses area averaging (``interpolate(mode="area")``, alias-free for the integer and
    near-integer factors of face crops); upscaling uses bilinear interpolation. A crop already of
    the target size is returned as is. Works on any device/dtype; output values stay in [-1, 1].
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be a tensor [N, 3, H, W], got {getattr(frames, 'shape', type(frames))}.")
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x0, y0, x1, y1 = (int(v) for v in box)
    H, W = frames.shape[-2:]
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise ValueError(f"crop box {tuple(box)} does not lie inside the {W}x{H} frames.")
    crop = frames[:, :, y0:y1, x0:x1]
    h, w = crop.shape[-2:]
    if (h, w) == (th, tw):
        return crop.contiguous()
    x = crop if crop.is_floating_point() else crop.float()
    if th <= h and tw <= w:
        return F.interpolate(x, size=(th, tw), mode="area")
    return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=th < h or tw < w)
