"""MEMO's face analysis without insightface or OpenCV: SCRFD detection + ArcFace embedding on onnxruntime.

MEMO (``memo/utils/vision_utils.py::preprocess_image``) runs insightface 0.7.3
``FaceAnalysis(name="", root=<memo>/misc/face_analysis)``, ``prepare(ctx_id=0, det_size=(640, 640))`` and
``get(image_bgr)``, then keeps the raw (not normalised) ``embedding`` of the largest face by box area, or a
zero vector when no face is found. Of the models in ``misc/face_analysis/models/`` only two matter for that
embedding: the SCRFD detector ``scrfd_10g_bnkps.onnx`` and the ArcFace recogniser ``glintr100.onnx``.

This module re-implements exactly what those insightface files do, with numpy and onnxruntime only:

* detection: ``insightface/model_zoo/scrfd.py::SCRFD`` (``FaceAnalysis`` routes a model with >= 5 outputs to
  ``model_zoo/retinaface.py::RetinaFace``, the same code without the batched-output branch, which we keep);
* alignment: ``insightface/utils/face_align.py::norm_crop`` (skimage's Umeyama similarity, ``cv2.warpAffine``);
* recognition: ``insightface/model_zoo/arcface_onnx.py::ArcFaceONNX``;
* model routing: ``insightface/model_zoo/model_zoo.py::ModelRouter``;
* the largest face: ``memo/utils/vision_utils.py::preprocess_image``.

OpenCV's two uint8 image operations are reproduced in integer arithmetic, bit for bit (checked against
opencv-python-headless 4.10.0.84, MEMO's pin, in ``tests/core/test_face_analysis.py``):
:func:`resize_bilinear_u8` is ``cv2.resize(..., INTER_LINEAR)`` (11-bit fixed-point weights, the SIMD
vertical pass's rounding) and :func:`warp_affine_u8` is ``cv2.warpAffine(..., INTER_LINEAR,
borderValue=0)`` (5-bit sub-pixel table, 15-bit weights). The remaining differences to insightface are
float rounding: the blob is ``(x - mean) * (1 / std)`` in float32 like ``cv2.dnn.blobFromImage``, and the
similarity transform is computed in float64 as skimage does. See the test for the measured tolerances.

Nothing heavy is imported at module import time; onnxruntime is imported when a model is loaded.
"""
from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ARCFACE_DST",
    "ARCFACE_FILE",
    "SCRFD_FILE",
    "ArcFaceRecognizer",
    "Face",
    "FaceAnalyzer",
    "ScrfdDetector",
    "default_providers",
    "estimate_norm",
    "face_embedding",
    "find_face_models",
    "norm_crop",
    "resize_bilinear_u8",
    "warp_affine_u8",
]

SCRFD_FILE = "scrfd_10g_bnkps.onnx"
ARCFACE_FILE = "glintr100.onnx"

# insightface/utils/face_align.py::arcface_dst (the 5 landmarks of the 112x112 ArcFace crop).
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32)

logger = logging.getLogger(__name__)

_ORT_HINT = ("`pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (CUDA) into the Python that runs "
             "ComfyUI / letstalk")


# ----------------------------------------------------------------------------------------------------------
# onnxruntime
# ----------------------------------------------------------------------------------------------------------

def _onnxruntime():
    """Import onnxruntime, or say how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"MEMO's face analysis (SCRFD + ArcFace) runs on onnxruntime, which is not installed: "
                          f"{_ORT_HINT}.") from e
    return onnxruntime


def default_providers(ort=None) -> list[str]:
    """``CUDAExecutionProvider`` first when this onnxruntime build has it, then ``CPUExecutionProvider``."""
    ort = ort or _onnxruntime()
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or list(available)


def _session(path, providers=None):
    ort = _onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model '{path}' does not exist.")
    return ort.InferenceSession(str(path), providers=list(providers) if providers else default_providers(ort))


def _route(session) -> str | None:
    """The task insightface gives a model (``model_zoo.py::ModelRouter.get_model``), from its inputs/outputs."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(outputs) >= 5:
        return "detection"
    if len(shape) != 4:
        return None
    if shape[2] == 192 and shape[3] == 192:
        return "landmark"
    if shape[2] == 96 and shape[3] == 96:
        return "genderage"
    if len(inputs) == 2 and shape[2] == 128 and shape[3] == 128:
        return "inswapper"
    if isinstance(shape[2], int) and shape[2] == shape[3] and shape[2] >= 112 and shape[2] % 16 == 0:
        return "recognition"
    return None


# ----------------------------------------------------------------------------------------------------------
# OpenCV's uint8 bilinear resize and affine warp, bit-exact
# ----------------------------------------------------------------------------------------------------------

_RESIZE_BITS = 11  # INTER_RESIZE_COEF_BITS


def _resize_taps(src: int, dst: int, clamp_fraction: bool):
    """Source indices and 11-bit weights of one axis (``resize.cpp::resizeGeneric``, INTER_LINEAR, fixpt).

    The pixel-centre mapping ``f = (d + 0.5) * src/dst - 0.5`` is evaluated in double and stored in float,
    as OpenCV does; along x a position left of the first / right of the last pixel takes that pixel
    (fraction 0), along y the two rows are clamped (the same result).
    """
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = dst / src
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_fraction:
        low, high = s < 0, s >= src - 1
        f[low], s[low] = 0, 0
        f[high], s[high] = 0, src - 1
    one = np.float32(1 << _RESIZE_BITS)
    w0 = np.rint((np.float32(1) - f) * one).astype(np.int64)
    w1 = np.rint(f * one).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_bilinear_u8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) on a uint8 ``[H, W, C]`` image, bit-exact.

    Follows ``opencv/modules/imgproc/src/resize.cpp`` (4.x): a horizontal pass with 11-bit integer weights
    (exact in int32), then the vertical pass as its SIMD kernel ``VResizeLinearVec_32s8u`` rounds it:
    ``((w0 * (r0 >> 4)) >> 16) + ((w1 * (r1 >> 4)) >> 16)`` then ``(+ 2) >> 2``. No antialiasing when
    shrinking, like OpenCV. A same-size resize is a copy.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_bilinear_u8 takes a uint8 [H, W, C] image, got {image.dtype} {image.shape}.")
    h, w = image.shape[:2]
    if width < 1 or height < 1:
        raise ValueError(f"resize target must be at least 1x1, got {width}x{height}.")
    if (width, height) == (w, h):
        return image.copy()
    x0, x1, a0, a1 = _resize_taps(w, width, clamp_fraction=True)
    y0, y1, b0, b1 = _resize_taps(h, height, clamp_fraction=False)
    src = image.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # [h, width, C], scale 2^11
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = (((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def _invert_affine(matrix) -> np.ndarray:
    """``cv::invertAffineTransform`` as ``warpAffine`` does it inline (float64), flattened to 6 numbers."""
    m = np.asarray(matrix, dtype=np.float64).reshape(-1).copy()
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]
    return m


def warp_affine_u8(image: np.ndarray, matrix, width: int, height: int) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (width, height), borderValue=0)`` (INTER_LINEAR) on uint8, bit-exact.

    ``matrix`` maps source to destination pixels (2x3); as in ``imgproc/src/imgwarp.cpp`` it is inverted,
    every destination pixel centre is mapped back in 10-bit fixed point (``WarpAffineInvoker``), quantised to
    1/32 pixel, and the four neighbours are blended with the 15-bit weights of ``initInterTab2D`` rounded
    ``(sum + 2^14) >> 15`` (``remapBilinear``). Neighbours outside the image count as 0 (BORDER_CONSTANT).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"warp_affine_u8 takes a uint8 [H, W, C] image, got {image.dtype} {image.shape}.")
    h, w = image.shape[:2]
    m = _invert_affine(matrix)
    xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    x_delta = np.rint(m[0] * xs * 1024).astype(np.int64)
    y_delta = np.rint(m[3] * xs * 1024).astype(np.int64)
    x_row = np.rint((m[1] * ys + m[2]) * 1024).astype(np.int64) + 16  # + round_delta = 1024 / 32 / 2
    y_row = np.rint((m[4] * ys + m[5]) * 1024).astype(np.int64) + 16
    fx_all = (x_row[:, None] + x_delta[None, :]) >> 5  # 1/32-pixel units
    fy_all = (y_row[:, None] + y_delta[None, :]) >> 5
    sx, fx = fx_all >> 5, fx_all & 31
    sy, fy = fy_all >> 5, fy_all & 31
    src = image.astype(np.int64)

    def tap(yy, xx):
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        return np.where(inside[..., None], src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0)

    acc = (tap(sy, sx) * ((32 - fy) * (32 - fx) * 32)[..., None]
           + tap(sy, sx + 1) * ((32 - fy) * fx * 32)[..., None]
           + tap(sy + 1, sx) * (fy * (32 - fx) * 32)[..., None]
           + tap(sy + 1, sx + 1) * (fy * fx * 32)[..., None])
    return np.clip((acc + (1 << 14)) >> 15, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# alignment (insightface/utils/face_align.py)
# ----------------------------------------------------------------------------------------------------------

def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``src -> dst`` (3x3), ``skimage/transform/_geometric.py::_umeyama`` with scale.

    Like skimage (0.26) the inputs keep their dtype: insightface passes float32 keypoints and a float32
    template, so the statistics and the SVD run in float32 (the 3x3 result is float64). The rank test is
    skimage 0.26's (singular values against float64 eps), which only matters for degenerate landmarks.
    """
    src, dst = np.asarray(src), np.asarray(dst)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    rank = np.count_nonzero(s > s.max() * np.max(a.shape) * np.finfo(float).eps)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep, d[dim - 1] = d[dim - 1], -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def estimate_norm(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 similarity taking the 5 landmarks to the ArcFace template (``face_align.py::estimate_norm``)."""
    landmarks = np.asarray(landmarks)
    if landmarks.dtype.kind != "f":
        landmarks = landmarks.astype(np.float32)
    if landmarks.shape != (5, 2):
        raise ValueError(f"estimate_norm takes 5 (x, y) landmarks, got shape {landmarks.shape}.")
    if image_size % 112 == 0:
        ratio, diff_x = float(image_size) / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = float(image_size) / 128.0
        diff_x = 8.0 * ratio
    else:
        raise ValueError(f"the ArcFace crop size must be a multiple of 112 or 128, got {image_size}.")
    dst = ARCFACE_DST * ratio
    dst[:, 0] += diff_x
    return _umeyama(landmarks, dst)[0:2, :]


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned ``image_size`` square face crop (``face_align.py::norm_crop``), same channel order as input."""
    return warp_affine_u8(image, estimate_norm(landmarks, image_size), image_size, image_size)


# ----------------------------------------------------------------------------------------------------------
# SCRFD detection (insightface/model_zoo/scrfd.py)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Face:
    """One detection: ``box`` (x0, y0, x1, y1) and ``kps`` (5x2: eyes, nose, mouth corners) in image pixels
    (float32, not clipped to the image, as insightface returns them), and the detector ``score``."""

    box: np.ndarray
    score: float
    kps: np.ndarray | None

    @property
    def area(self) -> float:
        """Box area, computed as MEMO sorts faces: ``(x1 - x0) * (y1 - y0)``."""
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def _check_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"face analysis takes one RGB uint8 image [H, W, 3], got {image.dtype} {tuple(image.shape)}.")
    return image


def _blob(image_rgb: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``cv2.dnn.blobFromImage(bgr, 1/std, size, (mean,)*3, swapRB=True)`` of an RGB image: ``[1, 3, H, W]``
    float32, ``(x - mean) * (1/std)`` in float32."""
    x = image_rgb.astype(np.float32) - np.float32(mean)
    x = x * np.float32(1.0 / std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _distance2bbox(points, distance):
    """``scrfd.py::distance2bbox`` (no clipping)."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    return np.stack([x1, y1, x2, y2], axis=-1)


def _distance2kps(points, distance):
    """``scrfd.py::distance2kps`` (no clipping)."""
    preds = []
    for i in range(0, distance.shape[1], 2):
        preds.append(points[:, i % 2] + distance[:, i])
        preds.append(points[:, i % 2 + 1] + distance[:, i + 1])
    return np.stack(preds, axis=-1)


def _nms(dets: np.ndarray, threshold: float) -> list[int]:
    """``scrfd.py::SCRFD.nms``: greedy, +1 pixel box convention, keeps IoU <= threshold."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= threshold)[0] + 1]
    return keep


_SCRFD_LAYOUTS = {  # outputs -> (fmc, strides, anchors per cell, keypoints), scrfd.py::SCRFD._init_vars
    6: (3, (8, 16, 32), 2, False),
    9: (3, (8, 16, 32), 2, True),
    10: (5, (8, 16, 32, 64, 128), 1, False),
    15: (5, (8, 16, 32, 64, 128), 1, True),
}


class ScrfdDetector:
    """SCRFD face detector (``insightface/model_zoo/scrfd.py::SCRFD``), as ``FaceAnalysis`` prepares it for MEMO:
    ``det_size=(640, 640)`` (a model with a fixed input size keeps its own), ``det_thresh=0.5``, NMS 0.4.

    :meth:`detect_faces` returns :class:`Face` objects in insightface's order (by score, after NMS);
    :meth:`detect` satisfies ``letstalk_core.face.crop.FaceDetector`` (boxes clipped to the frame) so it
    can serve the Face Crop (``--detector scrfd:PATH`` or ``memo:FOLDER``).

    The layout (``fmc``, strides, anchors per cell, keypoints) follows from the number of outputs (6, 9, 10
    or 15) and a ``[1, N, C]`` first output marks a batched export, exactly as insightface infers them.
    ``session``: an existing ``onnxruntime.InferenceSession``; else one is made from ``model_path``.
    """

    name = "scrfd"

    def __init__(self, model_path=None, *, providers=None, session=None, det_size=(640, 640),
                 det_thresh: float = 0.5, nms_thresh: float = 0.4, max_num: int = 0):
        if session is None:
            if model_path is None:
                raise ValueError("ScrfdDetector needs model_path (an SCRFD .onnx file) or a session.")
            session = _session(model_path, providers)
        self.session, self.model_path = session, None if model_path is None else str(model_path)
        if self.model_path:
            self.name = f"scrfd:{Path(self.model_path).name}"
        self.det_thresh, self.nms_thresh, self.max_num = float(det_thresh), float(nms_thresh), int(max_num)
        inp, outputs = session.get_inputs()[0], session.get_outputs()
        if len(outputs) not in _SCRFD_LAYOUTS:
            raise ValueError(
                f"'{self.model_path or 'the session'}' has {len(outputs)} outputs; an SCRFD detector has 6, 9, 10 or "
                f"15 (scores, boxes[, keypoints] per stride). Is it {SCRFD_FILE}?")
        self.fmc, self.strides, self.num_anchors, self.use_kps = _SCRFD_LAYOUTS[len(outputs)]
        self.batched = len(outputs[0].shape) == 3
        self.input_name, self.output_names = inp.name, [o.name for o in outputs]
        shape = inp.shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            self.input_size = (int(shape[3]), int(shape[2]))  # (width, height): a fixed-size model keeps its own
        else:
            self.input_size = (int(det_size[0]), int(det_size[1]))
        self._centers: dict = {}

    @classmethod
    def from_folder(cls, folder, **kwargs) -> ScrfdDetector:
        """The SCRFD model of a MEMO folder / ``face_analysis`` folder / ``models`` folder (:func:`find_face_models`)."""
        return cls(find_face_models(folder)[0], **kwargs)

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centers:
            centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
            centers = (centers * stride).reshape((-1, 2))
            if self.num_anchors > 1:
                centers = np.stack([centers] * self.num_anchors, axis=1).reshape((-1, 2))
            self._centers[key] = centers
        return self._centers[key]

    def _forward(self, det_img: np.ndarray):
        """``SCRFD.forward``: run the model, decode every stride, keep scores >= det_thresh."""
        blob = _blob(det_img, 127.5, 128.0)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        input_height, input_width = blob.shape[2], blob.shape[3]
        scores_list, bboxes_list, kpss_list = [], [], []
        fmc = self.fmc
        for idx, stride in enumerate(self.strides):
            pick = (lambda o: o[0]) if self.batched else (lambda o: o)
            scores = pick(outs[idx])
            bbox_preds = pick(outs[idx + fmc]) * stride
            centers = self._anchor_centers(input_height // stride, input_width // stride, stride)
            pos = np.where(scores >= self.det_thresh)[0]
            scores_list.append(scores[pos])
            bboxes_list.append(_distance2bbox(centers, bbox_preds)[pos])
            if self.use_kps:
                kps = _distance2kps(centers, pick(outs[idx + fmc * 2]) * stride)
                kpss_list.append(kps.reshape((kps.shape[0], -1, 2))[pos])
        return scores_list, bboxes_list, kpss_list

    def detect_raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``SCRFD.detect(img, max_num)``: ``(dets [n, 5] float32 (x0, y0, x1, y1, score), kpss [n, 5, 2] | None)``.

        The image is resized (aspect kept, :func:`resize_bilinear_u8`) into the top-left of the input canvas.
        """
        image = _check_rgb(image)
        in_w, in_h = self.input_size
        im_ratio = float(image.shape[0]) / image.shape[1]
        if im_ratio > float(in_h) / in_w:
            new_height = in_h
            new_width = int(new_height / im_ratio)
        else:
            new_width = in_w
            new_height = int(new_width * im_ratio)
        if new_width < 1 or new_height < 1:
            raise ValueError(f"the image {image.shape[1]}x{image.shape[0]} is too elongated for face detection "
                             f"at {in_w}x{in_h}; crop it closer to the face.")
        det_scale = float(new_height) / image.shape[0]
        det_img = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        det_img[:new_height, :new_width, :] = resize_bilinear_u8(image, new_width, new_height)

        scores_list, bboxes_list, kpss_list = self._forward(det_img)
        scores = np.vstack(scores_list)
        order = scores.ravel().argsort()[::-1]
        bboxes = np.vstack(bboxes_list) / det_scale
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
        keep = _nms(pre_det, self.nms_thresh)
        det = pre_det[keep, :]
        kpss = None
        if self.use_kps:
            kpss = (np.vstack(kpss_list) / det_scale)[order, :, :][keep, :, :]
        if self.max_num > 0 and det.shape[0] > self.max_num:  # metric='default', as FaceAnalysis.get
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            cy, cx = image.shape[0] // 2, image.shape[1] // 2
            offsets = np.vstack([(det[:, 0] + det[:, 2]) / 2 - cx, (det[:, 1] + det[:, 3]) / 2 - cy])
            values = area - np.sum(np.power(offsets, 2.0), 0) * 2.0
            bindex = np.argsort(values)[::-1][0:self.max_num]
            det = det[bindex, :]
            kpss = None if kpss is None else kpss[bindex, :]
        return det, kpss

    def detect_faces(self, image: np.ndarray) -> list[Face]:
        """Every face in an RGB uint8 image, in insightface's order."""
        det, kpss = self.detect_raw(image)
        return [Face(box=det[i, 0:4].copy(), score=float(det[i, 4]), kps=None if kpss is None else kpss[i].copy())
                for i in range(det.shape[0])]

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """``FaceDetector`` protocol: ``[(x0, y0, x1, y1, score)]`` in frame pixels, clipped to the frame."""
        frame = _check_rgb(frame)
        h, w = frame.shape[:2]
        result = []
        for face in self.detect_faces(frame):
            x0, x1 = (float(np.clip(v, 0, w)) for v in (face.box[0], face.box[2]))
            y0, y1 = (float(np.clip(v, 0, h)) for v in (face.box[1], face.box[3]))
            if x1 > x0 and y1 > y0:
                result.append((x0, y0, x1, y1, face.score))
        return result


# ----------------------------------------------------------------------------------------------------------
# ArcFace (insightface/model_zoo/arcface_onnx.py)
# ----------------------------------------------------------------------------------------------------------

def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield ``(field_number, wire_type, value_or_(start, end))`` of one protobuf message in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def onnx_first_node_names(path, count: int = 8) -> list[str]:
    """Names of the first ``count`` nodes of an ONNX graph, read straight from the protobuf (no ``onnx``
    package, file memory-mapped so a 250 MB model is not read): ``ModelProto.graph`` (field 7) →
    ``GraphProto.node`` (field 1) → ``NodeProto.name`` (field 3)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        names = []
        for field, wire, span in _fields(buf, 0, len(buf)):
            if field != 7 or wire != 2:
                continue
            for nfield, nwire, nspan in _fields(buf, *span):
                if nfield != 1 or nwire != 2:
                    continue
                name = ""
                for f, w, v in _fields(buf, *nspan):
                    if f == 3 and w == 2:
                        name = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                names.append(name)
                if len(names) >= count:
                    return names
            return names
    return []


def arcface_input_norm(node_names: list[str]) -> tuple[float, float]:
    """``ArcFaceONNX.__init__``: an MXNet export (a ``Sub``/``_minus`` and a ``Mul``/``_mul`` node among the
    first 8) normalises inside the graph → ``(0, 1)``; otherwise ``(127.5, 127.5)``."""
    names = node_names[:8]
    find_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    find_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)


class ArcFaceRecognizer:
    """ArcFace embedding (``insightface/model_zoo/arcface_onnx.py::ArcFaceONNX.get``): :func:`norm_crop` to the
    model's input size, blob ``(x - mean) / std`` in RGB, one run; the raw embedding (not normalised).

    ``input_mean``/``input_std`` are chosen from the graph's first node names as insightface does
    (:func:`arcface_input_norm`) unless given.
    """

    def __init__(self, model_path=None, *, providers=None, session=None, input_mean=None, input_std=None):
        if session is None:
            if model_path is None:
                raise ValueError("ArcFaceRecognizer needs model_path (an ArcFace .onnx file) or a session.")
            session = _session(model_path, providers)
        self.session, self.model_path = session, None if model_path is None else str(model_path)
        if input_mean is None or input_std is None:
            if model_path is None:
                raise ValueError("without model_path give input_mean and input_std (127.5, 127.5 for glintr100).")
            input_mean, input_std = arcface_input_norm(onnx_first_node_names(model_path))
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        inp, outputs = session.get_inputs()[0], session.get_outputs()
        if _route(session) != "recognition" or len(outputs) != 1:
            raise ValueError(
                f"'{self.model_path or 'the session'}' is not an ArcFace recogniser: expected one square input "
                f"[1, 3, S, S] (S >= 112, a multiple of 16) and one output, got input {inp.shape} and "
                f"{len(outputs)} outputs. Is it {ARCFACE_FILE}?")
        self.input_name, self.output_names = inp.name, [o.name for o in outputs]
        self.input_size = (int(inp.shape[3]), int(inp.shape[2]))
        dim = outputs[0].shape[-1]
        self.embedding_size = int(dim) if isinstance(dim, int) else 512

    def embed(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """Embedding ``[D]`` float32 of the face with landmarks ``kps`` (5x2) in the RGB uint8 ``image``."""
        crop = norm_crop(_check_rgb(image), kps, self.input_size[0])
        blob = _blob(crop, self.input_mean, self.input_std)
        return np.asarray(self.session.run(self.output_names, {self.input_name: blob})[0]).flatten()


# ----------------------------------------------------------------------------------------------------------
# the two together, as MEMO uses them
# ----------------------------------------------------------------------------------------------------------

def find_face_models(folder) -> tuple[Path, Path]:
    """``(scrfd, arcface)`` model paths in a MEMO folder, its ``misc/face_analysis`` folder, or the
    ``models`` folder below that (``FaceAnalysis(name="", root=...)`` reads ``<root>/models/*.onnx``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"face-analysis folder '{folder}' does not exist (give the MEMO model folder, its "
                                f"misc/face_analysis folder, or the models folder with {SCRFD_FILE} and {ARCFACE_FILE}).")
    for candidate in (folder / "misc" / "face_analysis" / "models", folder / "models", folder):
        if (candidate / SCRFD_FILE).is_file() or (candidate / ARCFACE_FILE).is_file():
            missing = [n for n in (SCRFD_FILE, ARCFACE_FILE) if not (candidate / n).is_file()]
            if missing:
                raise FileNotFoundError(f"'{candidate}' lacks {' and '.join(missing)}; MEMO's face analysis needs "
                                        f"{SCRFD_FILE} and {ARCFACE_FILE} there (from memoavatar/memo on Hugging Face, "
                                        "misc/face_analysis/models/).")
            return candidate / SCRFD_FILE, candidate / ARCFACE_FILE
    raise FileNotFoundError(
        f"no face-analysis models in '{folder}': expected {SCRFD_FILE} and {ARCFACE_FILE} in "
        f"'{folder / 'misc' / 'face_analysis' / 'models'}', '{folder / 'models'}' or '{folder}' itself "
        "(MEMO's Hugging Face repo has them under misc/face_analysis/models/).")


class FaceAnalyzer:
    """SCRFD + ArcFace as MEMO's ``FaceAnalysis(name="", root=...).prepare(ctx_id=0, det_size=(640, 640))``."""

    def __init__(self, detector: ScrfdDetector, recognizer: ArcFaceRecognizer):
        self.detector, self.recognizer = detector, recognizer

    @classmethod
    def from_files(cls, scrfd_path, arcface_path, *, providers=None) -> FaceAnalyzer:
        """Load the two models; each is checked to route as insightface would (detection / recognition)."""
        ort = _onnxruntime()
        providers = list(providers) if providers else default_providers(ort)
        det_session, rec_session = _session(scrfd_path, providers), _session(arcface_path, providers)
        for path, session, task in ((scrfd_path, det_session, "detection"), (arcface_path, rec_session, "recognition")):
            if _route(session) != task:
                raise ValueError(f"'{path}' is not a face {task} model for insightface (its inputs/outputs route to "
                                 f"{_route(session)!r}); expected {SCRFD_FILE} and {ARCFACE_FILE}.")
        return cls(ScrfdDetector(scrfd_path, session=det_session), ArcFaceRecognizer(arcface_path, session=rec_session))

    @classmethod
    def from_folder(cls, folder, *, providers=None) -> FaceAnalyzer:
        """From a MEMO folder, its ``misc/face_analysis`` folder or the ``models`` folder (:func:`find_face_models`)."""
        _onnxruntime()  # the install hint comes before any file-system error
        scrfd, arcface = find_face_models(folder)
        return cls.from_files(scrfd, arcface, providers=providers)

    @property
    def embedding_size(self) -> int:
        return self.recognizer.embedding_size

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 ``[H, W, 3]`` image, in insightface's order (``FaceAnalysis.get``)."""
        return self.detector.detect_faces(image)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The raw ArcFace embedding ``[512]`` (float32) of ``face`` (needs its keypoints)."""
        if face.kps is None:
            raise ValueError("this face has no keypoints (the detector has no keypoint outputs); ArcFace needs them.")
        return self.recognizer.embed(image, face.kps)

    def largest_face(self, image: np.ndarray) -> Face | None:
        """The face with the largest box, ties to the first detected (MEMO's stable
        ``sorted(faces, key=area, reverse=True)[0]`` picks the same one as ``max``)."""
        faces = self.detect(image)
        if not faces:
            return None
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def face_embedding(analyzer: FaceAnalyzer, image: np.ndarray, *, allow_missing: bool = False) -> np.ndarray:
    """MEMO's portrait embedding: the raw ArcFace embedding of the largest face (``preprocess_image``).

    ``image``: the portrait, RGB uint8 ``[H, W, 3]``, at its own resolution (MEMO detects on the original
    image, not the 512² resize). With no face, raises ``ValueError`` unless ``allow_missing``, which returns
    the zero vector MEMO's reference falls back to (that is the *unconditional* face input: the video then
    follows the portrait's pixels but loses the identity conditioning).
    """
    image = _check_rgb(image)
    face = analyzer.largest_face(image)
    if face is None:
        h, w = image.shape[:2]
        if allow_missing:
            logger.warning("no face found in the portrait (%dx%d): using MEMO's zero face embedding, so the identity "
                           "is not conditioned (crop the portrait closer to the face to fix this).", w, h)
            return np.zeros(analyzer.embedding_size, dtype=np.float32)
        raise ValueError(
            f"no face found in the portrait ({w}x{h}): crop it closer to the face, or use LetsTalk Face Crop with a "
            "box around the head, so that the face fills a good part of the image; or allow a missing face to use "
            "MEMO's zero face embedding (identity is then not conditioned).")
    return analyzer.embed(image, face)
