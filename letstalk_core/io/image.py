"""Still images through Pillow, and the conversions between display pixels and core tensors.

Core images are float tensors ``[3, H, W]`` (``[N, 3, H, W]`` for frames) in [-1, 1], pixel value
``v`` in 0..255 mapping to ``v / 127.5 - 1``.

``load_image`` normalises every Pillow mode to RGB:

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so a phone portrait stands up;
* grayscale (``1``, ``L``, ``I;16``, ``I``, ``F``) is replicated to three channels at full precision:
  ``I;16``/``I`` are read as 16-bit (0..65535), ``F`` as 0..1 (or 0..255 if its values say so);
* transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index) is alpha-composited over
  ``background`` (white, ``(255, 255, 255)``, by default);
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette images are converted by Pillow;
* multi-frame files (GIF, TIFF) give their first frame.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import require_file, require_finite, require_tensor

MAX_PORTRAIT_SIDE = 8192

WHITE = (255, 255, 255)
_GRAY_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _check_background(background) -> np.ndarray:
    """Validate ``background`` (three ints 0..255) and return it as floats in 0..1."""
    bg = tuple(background) if isinstance(background, (tuple, list)) else None
    if bg is None or len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
        raise ValueError(f"background must be three integers 0..255 (r, g, b), got {background!r}.")
    return np.asarray(bg, dtype=np.float32) / 255.0


def _gray_to_unit(img) -> np.ndarray:
    """High-precision grayscale Pillow image (``I;16``, ``I``, ``F``) to floats ``[H, W]`` in 0..1."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = float(arr.max()) if arr.size else 0.0
        low = float(arr.min()) if arr.size else 0.0
        scale = 1.0 if top <= 1.0 else 255.0
        if low < 0.0 or top > 255.0:
            raise ValueError(f"Float image values span [{low}, {top}]; expected 0..1 or 0..255.")
        return (arr / scale).astype(np.float32)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"32-bit integer image values span [{arr.min()}, {arr.max()}]; expected 16-bit 0..65535.")
    return (arr / 65535.0).astype(np.float32)


def _pil_to_unit_rgb(img, background) -> np.ndarray:
    """Any Pillow image to float32 RGB ``[H, W, 3]`` in 0..1 (rules in the module docstring)."""
    bg = _check_background(background)
    if img.mode in _GRAY_INT_MODES or img.mode == "F":
        gray = _gray_to_unit(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3:4]
        return rgba[:, :, :3] * alpha + bg * (1.0 - alpha)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _unit_hwc_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Float ``[H, W, 3]`` in 0..1 to the core layout ``[3, H, W]`` in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    return (t * 2.0 - 1.0).contiguous()


def _check_size(h: int, w: int, what: str) -> None:
    """Refuse a zero-size image with a message naming it."""
    if h < 1 or w < 1:
        raise ValueError(f"{what} is empty ({w}x{h} pixels); give an image with at least one pixel.")


def load_image(path, *, background=WHITE) -> torch.Tensor:
    """Load an image file as a float tensor ``[3, H, W]`` in [-1, 1].

    ``background`` (r, g, b in 0..255, white by default) shows through transparent pixels.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file Pillow cannot read
    (with its reason) or a zero-size image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = require_file(path, "Image file")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"'{p}' is not an image Pillow can read ({exc}); give a PNG, JPEG, WebP, … file.") from exc
    _check_size(img.height, img.width, f"Image '{p}'")
    return _unit_hwc_to_tensor(_pil_to_unit_rgb(img, background))


def _array_to_unit(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 (0..255) or float (0..1) array to float32 in 0..1; other ranges are refused."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{what} must be uint8 (0..255) or float (0..1), got dtype {arr.dtype}.")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(
            f"{what} is float with values in [{arr.min():.3f}, {arr.max():.3f}]; expected 0..1 "
            "(divide 0..255 data by 255, or pass it as uint8)."
        )
    return arr.astype(np.float32)


def image_to_tensor(image, *, background=WHITE) -> torch.Tensor:
    """Convert a PIL image, or a numpy/torch ``[H, W, C]`` (or ``[H, W]``) array, to ``[3, H, W]`` in [-1, 1].

    Arrays are uint8 0..255 or float 0..1; ``C`` is 1 (gray, replicated), 3 (RGB) or 4 (RGBA,
    composited over ``background``).
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        _check_size(image.height, image.width, "image")
        return _unit_hwc_to_tensor(_pil_to_unit_rgb(image, background))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image, numpy array or torch tensor, got {type(image).__name__}.")
    arr = image[:, :, None] if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W, C] with C in (1, 3, 4), got shape {tuple(image.shape)}.")
    _check_size(arr.shape[0], arr.shape[1], "image")
    unit = _array_to_unit(arr, "image")
    if unit.shape[2] == 1:
        unit = np.repeat(unit, 3, axis=2)
    elif unit.shape[2] == 4:
        alpha = unit[:, :, 3:4]
        unit = unit[:, :, :3] * alpha + _check_background(background) * (1.0 - alpha)
    return _unit_hwc_to_tensor(unit)


def uint8_to_tensor(pixels) -> torch.Tensor:
    """uint8 frames ``[N, H, W, 3]`` (numpy or torch) → core ``[N, 3, H, W]`` float32 in [-1, 1]: the inverse of
    :func:`tensor_to_uint8` (each level ``v`` maps to ``v / 127.5 - 1``, so a round trip is exact)."""
    t = torch.from_numpy(np.asarray(pixels)) if not isinstance(pixels, torch.Tensor) else pixels
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"pixels must be uint8 [N, H, W, 3]; got {t.dtype} {tuple(t.shape)}.")
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Convert core frames ``[N, 3, H, W]`` (or one ``[3, H, W]``) in [-1, 1] to uint8 ``[N, H, W, 3]``.

    This is display conversion: values are clamped to [-1, 1] (a model's slight overshoot is
    expected and harmless on screen) and then rounded to the nearest 0..255 level. NaN/inf are
    refused. A single ``[3, H, W]`` image gives ``[H, W, 3]``.
    """
    require_tensor(frames, "frames", ndim=(3, 4))
    if frames.shape[-3] != 3:
        raise ValueError(f"frames must have 3 channels at dim -3 ([N, 3, H, W]), got shape {tuple(frames.shape)}.")
    f = require_finite(frames.detach().to("cpu", torch.float32), "frames")
    levels = torch.round((f.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    return levels.movedim(-3, -1).contiguous().numpy()


def prepare_portrait_image(image: torch.Tensor, height: int, width: int, *, size_mode: str = "model",
                           factor: int = 32) -> torch.Tensor:
    """Portrait ``[C, H, W]`` or ``[1, C, H, W]`` in [-1, 1] → ``[1, 3, height, width]``.

    Grayscale (C = 1) is replicated to RGB; RGBA (C = 4) is composited over white with its alpha channel
    (given in the same [-1, 1] range). ``size_mode="model"`` centre-crops to the model's aspect ratio and
    resizes to the size it was trained at; ``"keep"`` keeps the image's own size, which must then be a
    multiple of the autoencoder's compression ``factor``."""
    require_tensor(image, "portrait image", ndim=(3, 4))
    x = image[None] if image.ndim == 3 else image
    if x.shape[0] != 1:
        raise ValueError(f"give one portrait, got a batch of {x.shape[0]} images (shape {tuple(image.shape)}).")
    c, h, w = x.shape[1:]
    if c not in (1, 3, 4):
        raise ValueError(f"portrait must have 1 (gray), 3 (RGB) or 4 (RGBA) channels first, got shape {tuple(image.shape)}.")
    if min(h, w) < 8 or max(h, w) > MAX_PORTRAIT_SIDE:
        raise ValueError(f"portrait is {w}×{h} pixels; sides must be between 8 and {MAX_PORTRAIT_SIDE}. Resize it first.")
    require_finite(x, "portrait image")
    x = x.float()
    if c == 1:
        x = x.expand(1, 3, h, w)
    elif c == 4:
        alpha = (x[:, 3:] + 1) / 2
        x = x[:, :3] * alpha + (1 - alpha)
    if size_mode == "keep":
        if h % factor or w % factor:
            raise ValueError(f"portrait is {w}×{h}; with size_mode='keep' both sides must be multiples of {factor} "
                             f"(e.g. {w // factor * factor or factor}×{h // factor * factor or factor}). "
                             "Crop or resize it, or use size_mode='model'.")
        return x.contiguous()
    if size_mode != "model":
        raise ValueError(f"size_mode must be 'model' or 'keep'; got {size_mode!r}.")
    target = height / width
    if h / w > target:  # too tall: crop rows
        ch = round(w * target)
        top = (h - ch) // 2
        x = x[..., top:top + ch, :]
    elif h / w < target:
        cw = round(h / target)
        left = (w - cw) // 2
        x = x[..., :, left:left + cw]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return x.contiguous()

