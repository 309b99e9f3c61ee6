"""Face crop and paste-back, so any photo works, not only square face crops.

The model generates a square face crop. :func:`face_box` picks ONE square box in the photo (from a
face detector's boxes, as :func:`~letstalk_core.face.crop.crop_box_for_video` does for training
footage, or from a box the user places by hand), :func:`crop_face` cuts it out at the model's size,
and :func:`paste_back` puts every generated frame back into the photo at that box through a feathered
mask (a raised-cosine ramp over ``feather`` of the box side), so the seam does not show. Peers' users
ask for exactly this ("paste-back into 1920×1080", reference/peers.md §3.5): the photo's pixels
outside the box are kept bit-exact.

Images here follow the core contract: float ``[N, 3, H, W]`` in ``[-1, 1]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .face.crop import Box, crop_and_resize, crop_box_for_video
from .validation import require_finite, require_tensor

__all__ = ["FaceBox", "face_box", "manual_box", "crop_face", "feather_mask", "paste_back", "iter_paste_back",
           "paste_back_bytes", "paste_back_video"]


@dataclass(frozen=True)
class FaceBox:
    """A square box ``[x0, x1) × [y0, y1)`` in a ``width × height`` photo (integer pixels)."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (0 <= self.x0 < self.x1 <= self.width and 0 <= self.y0 < self.y1 <= self.height):
            raise ValueError(f"face box ({self.x0}, {self.y0})–({self.x1}, {self.y1}) does not lie inside the "
                             f"{self.width}×{self.height} photo.")

    @property
    def side(self) -> int:
        return self.x1 - self.x0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("x0", "y0", "x1", "y1", "width", "height")}


def face_box(boxes: Sequence[Box], width: int, height: int, *, scale: float = 1.6) -> FaceBox:
    """The square crop around the largest detected face, enlarged ``scale`` times and fitted in the
    photo (near an edge it is shifted, not shrunk). Raises ``ValueError`` when ``boxes`` is empty."""
    if not boxes:
        raise ValueError(f"no face was found in the {width}×{height} photo. Use a photo with a clear frontal face, "
                         "another detector, or place the box by hand (detector 'manual').")
    x0, y0, x1, y1 = crop_box_for_video([list(boxes)], (width, height), scale=scale, square=True, source="the photo")
    return FaceBox(x0, y0, x1, y1, width, height)


def manual_box(center_x: float, center_y: float, size: float, width: int, height: int) -> FaceBox:
    """A square box placed by hand: centre at ``(center_x, center_y)`` as fractions of the photo's
    width and height, side ``size`` as a fraction of the photo's short side; fitted in the photo."""
    for name, v in (("center_x", center_x), ("center_y", center_y)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a fraction of the photo in [0, 1]; got {v!r}.")
    if not 0.0 < size <= 1.0:
        raise ValueError(f"size must be a fraction of the photo's short side in (0, 1]; got {size!r}.")
    side = max(8, min(round(size * min(width, height)), width, height))
    x0 = int(min(max(round(center_x * width - side / 2), 0), width - side))
    y0 = int(min(max(round(center_y * height - side / 2), 0), height - side))
    return FaceBox(x0, y0, x0 + side, y0 + side, width, height)


def crop_face(image: torch.Tensor, box: FaceBox, size: int) -> torch.Tensor:
    """Photo ``[1, 3, H, W]`` → the face crop ``[1, 3, size, size]`` (area-averaged when shrinking)."""
    require_tensor(image, "photo", ndim=4)
    if tuple(image.shape[-2:]) != (box.height, box.width):
        raise ValueError(f"the photo is {image.shape[-1]}×{image.shape[-2]} but the face box was made for "
                         f"{box.width}×{box.height}; crop and paste back into the same photo.")
    return crop_and_resize(image, (box.x0, box.y0, box.x1, box.y1), int(size))


def feather_mask(side: int, feather: float, *, device=None) -> torch.Tensor:
    """``[1, 1, side, side]`` weights: 1 in the middle, a raised-cosine ramp to 0 over the outer
    ``feather × side`` pixels of each edge (0 → a hard square)."""
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5] (a fraction of the box side); got {feather!r}.")
    ramp = feather * side
    d = torch.arange(side, dtype=torch.float32, device=device) + 0.5
    edge = torch.minimum(d, side - d)  # distance to the nearest edge, in pixels
    w = torch.ones(side, device=device) if ramp <= 0 else 0.5 - 0.5 * torch.cos(math.pi * (edge / ramp).clamp(max=1.0))
    return (w[:, None] * w[None, :])[None, None]


def paste_back_bytes(frames: int, width: int, height: int) -> int:
    """Bytes of the float32 ``[frames, height, width, 3]`` result (what the host must hold)."""
    return int(frames) * int(width) * int(height) * 3 * 4


def iter_paste_back(frames: torch.Tensor, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1,
                    chunk: int = 16) -> Iterator[torch.Tensor]:
    """:func:`paste_back` chunk by chunk (``[n, 3, H, W]`` each), for a caller that streams."""
    require_tensor(frames, "frames", ndim=4)
    require_tensor(image, "photo", ndim=4)
    if frames.shape[1] != 3 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected frames [N, 3, s, s] and one photo [1, 3, H, W]; got {tuple(frames.shape)} and "
                         f"{tuple(image.shape)}.")
    if tuple(image.shape[-2:]) != (box.height, box.width):
        raise ValueError(f"the photo is {image.shape[-1]}×{image.shape[-2]} but the face box was made for "
                         f"{box.width}×{box.height}; paste back into the photo the crop came from.")
    require_finite(frames, "generated frames")
    side = box.side
    mask = feather_mask(side, feather, device=image.device)
    region = image[:, :, box.y0:box.y1, box.x0:box.x1].float()
    for i in range(0, frames.shape[0], max(1, int(chunk))):
        part = frames[i:i + chunk].float()
        if tuple(part.shape[-2:]) != (side, side):
            part = F.interpolate(part, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
        out = image.float().expand(part.shape[0], -1, -1, -1).clone()
        out[:, :, box.y0:box.y1, box.x0:box.x1] = mask * part + (1 - mask) * region
        yield out


def paste_back(frames: torch.Tensor, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1) -> torch.Tensor:
    """Generated face frames ``[N, 3, s, s]`` → the photo ``[1, 3, H, W]`` with each frame blended into
    ``box`` → ``[N, 3, H, W]``. Frames are resized to the box side (bicubic); outside the box the
    photo is unchanged."""
    return torch.cat(list(iter_paste_back(frames, image, box, feather=feather)))


def paste_back_video(source, destination, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1,
                     chunk: int = 16, should_stop=None, metadata: dict[str, str] | None = None) -> int:
    """Stream a face video file into the photo: each decoded chunk of ``source`` is pasted into
    ``image`` at ``box`` (:func:`iter_paste_back`) and encoded into ``destination`` at the same frame
    rate, with ``source``'s sound. Memory stays at one chunk of full-size frames whatever the length
    (an IMAGE batch of 5 minutes of 1920×1080 frames would be 220 GB). ``should_stop()``, called
    before each chunk, may raise to cancel; the unfinished file is removed. Returns the frame count."""
    from pathlib import Path

    from .io.audio_file import load_audio
    from .io.video import VideoWriter, iter_video_chunks, probe_video

    from .io.space import estimate_video_bytes, require_space, write_failed

    info = probe_video(source, decode=False)  # the frames are decoded once, below
    audio = load_audio(source) if info.has_audio else (None, None)
    out = Path(destination)
    need = estimate_video_bytes(info.frame_count, box.width, box.height, audio_seconds=info.audio_seconds or 0.0,
                                audio_channels=info.audio_channels or 1)
    require_space(out.parent, need, "pasted-back video", "Free some space on that disk (for ComfyUI: its temp "
                  "folder's disk, or start it with --temp-directory on a larger one).")
    written = 0
    try:
        with VideoWriter(out, info.fps, audio=audio[0], audio_rate=audio[1],
                         metadata={**info.metadata, **(metadata or {})}) as writer:
            for pixels in iter_video_chunks(source, chunk):
                if should_stop is not None:
                    should_stop()
                faces = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
                for frames in iter_paste_back(faces, image, box, feather=feather, chunk=chunk):
                    writer.write(frames)
                    written += frames.shape[0]
    except OSError as e:
        out.unlink(missing_ok=True)
        raise write_failed(e, out, remaining=max(0, need * (info.frame_count - written) // max(1, info.frame_count)),
                           kept="The generated face video it reads is unchanged: paste back again.") from e
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return written
