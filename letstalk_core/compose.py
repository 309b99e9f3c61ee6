"""Face crop and paste-back, so any photo works, not only square face crops.

The model generates a square face crop. :func:`face_box` picks ONE square box in the photo (from a
face detector's boxes, as :func:`~letstalk_core.face.crop.crop_box_for_video` does for training
footage, or from a box the user places by hand), :func:`crop_face` cuts it out at the model's size,
and :func:`paste_back` puts every generated frame back into the photo at that box through a feathered
mask (a raised-cosine ramp over ``feather`` of the box side), so the seam does not show. Peers' users
ask for exactly this ("paste-back into 1920×1080", reference/peers.md §3.5): the photo's pixels
outside the box are kept bit-exact.

Several people in one photo (a conversation): :func:`face_boxes` gives a box for every face found, left to
right, :func:`parse_boxes` reads boxes given by hand, and :func:`require_apart` refuses boxes that overlap (two
faces pasted into the same pixels would fight), naming which. :func:`compose_video` streams any number of face
videos into one background (a photo, or a video such as the output of an earlier paste), chunk by chunk in flat
memory, with the faces' sound mixed into the background's, and records the boxes it pasted in the video
(``letstalk_faces``) so a later paste into that video refuses a box that overlaps them.

Images here follow the core contract: float ``[N, 3, H, W]`` in ``[-1, 1]``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .face.crop import Box, crop_and_resize, crop_box_for_video
from .validation import require_finite, require_tensor

__all__ = ["FACES_TAG", "FaceBox", "face_box", "face_boxes", "find_faces", "manual_box", "parse_boxes", "boxes_text",
           "require_apart", "crop_face", "feather_mask", "paste_back", "iter_paste_back", "paste_back_bytes",
           "paste_back_video", "compose_video", "SOUNDS"]

#: MP4 tag holding the boxes pasted into a video so far (JSON ``[[x0, y0, x1, y1], ...]``).
FACES_TAG = "letstalk_faces"
#: What :func:`compose_video` gives the video as sound.
SOUNDS = ("mix", "faces", "background", "none")


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

    def overlaps(self, other: "FaceBox") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def __str__(self) -> str:
        return f"({self.x0}, {self.y0})–({self.x1}, {self.y1})"


def face_box(boxes: Sequence[Box], width: int, height: int, *, scale: float = 1.6) -> FaceBox:
    """The square crop around the largest detected face, enlarged ``scale`` times and fitted in the
    photo (near an edge it is shifted, not shrunk). Raises ``ValueError`` when ``boxes`` is empty."""
    if not boxes:
        raise ValueError(f"no face was found in the {width}×{height} photo. Use a photo with a clear frontal face, "
                         "another detector, or place the box by hand (detector 'manual').")
    x0, y0, x1, y1 = crop_box_for_video([list(boxes)], (width, height), scale=scale, square=True, source="the photo")
    return FaceBox(x0, y0, x1, y1, width, height)


def face_boxes(boxes: Sequence[Box], width: int, height: int, *, scale: float = 1.6) -> list[FaceBox]:
    """A square crop around EVERY detected face (each enlarged ``scale`` times and fitted in the photo, as
    :func:`face_box` does for one), ordered left to right by their centres: index 0 is the leftmost person.
    Raises ``ValueError`` when ``boxes`` is empty."""
    if not boxes:
        raise ValueError(f"no face was found in the {width}×{height} photo. Use a photo with clear frontal faces, "
                         "another detector, or give the boxes by hand.")
    out = []
    for b in boxes:
        x0, y0, x1, y1 = crop_box_for_video([[b]], (width, height), scale=scale, square=True, source="the photo")
        out.append(FaceBox(x0, y0, x1, y1, width, height))
    return sorted(out, key=lambda f: (f.x0 + f.x1, f.y0 + f.y1))


def find_faces(detector, image: torch.Tensor, *, scale: float = 1.6) -> list[FaceBox]:
    """Every face ``detector`` (a :class:`~letstalk_core.face.crop.FaceDetector`) finds in the photo ``[1, 3, H, W]``
    or ``[3, H, W]``, as square crops left to right (:func:`face_boxes`)."""
    from .io.image import tensor_to_uint8

    photo = image[0] if image.ndim == 4 else image
    height, width = photo.shape[-2:]
    return face_boxes(detector.detect(tensor_to_uint8(photo)), width, height, scale=scale)


def parse_boxes(text: str, width: int, height: int) -> list[FaceBox]:
    """Boxes given by hand, ``"x0,y0,x1,y1; x0,y0,x1,y1; ..."`` in photo pixels (end exclusive), each square (the
    model's crop is square), kept in the order given. What :func:`boxes_text` writes."""
    parts = [p.strip() for p in str(text).replace("\n", ";").split(";") if p.strip()]
    if not parts:
        raise ValueError("no face box given: write one box per face as 'x0,y0,x1,y1' (photo pixels), separated "
                         "by ';'.")
    out = []
    for i, part in enumerate(parts, 1):
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in part.split(","))
        except ValueError:
            raise ValueError(f"face box {i} '{part}' is not 'x0,y0,x1,y1' (four numbers, photo pixels).") from None
        if x1 - x0 != y1 - y0:
            raise ValueError(f"face box {i} '{part}' is {x1 - x0}×{y1 - y0} pixels; face boxes are square (the model's "
                             "crop is): make x1 - x0 equal y1 - y0.")
        try:
            out.append(FaceBox(x0, y0, x1, y1, width, height))
        except ValueError as e:
            raise ValueError(f"face box {i}: {e}") from None
    return out


def boxes_text(boxes: Sequence[FaceBox]) -> str:
    """``"x0,y0,x1,y1; ..."``: the boxes as :func:`parse_boxes` reads them."""
    return "; ".join(f"{b.x0},{b.y0},{b.x1},{b.y1}" for b in boxes)


def require_apart(boxes: Sequence[FaceBox], names: Sequence[str] | None = None) -> None:
    """Refuse boxes that share pixels: two faces pasted into the same pixels would overwrite each other. The
    message names every overlapping pair (``names``: how to call each box; default "face box 1", ...)."""
    names = list(names) if names is not None else [f"face box {i + 1}" for i in range(len(boxes))]
    clashes = [f"{names[i]} {boxes[i]} and {names[j]} {boxes[j]}" for i in range(len(boxes))
               for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    if clashes:
        raise ValueError("face boxes overlap: " + "; ".join(clashes) + ". Each face needs its own pixels: give "
                         "smaller boxes (a smaller scale for detected faces) or move them apart.")


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


def _blend(out: torch.Tensor, faces: torch.Tensor, box: FaceBox, mask: torch.Tensor) -> None:
    """Blend face frames ``[n, 3, s', s']`` into ``out [n, 3, H, W]`` at ``box``, in place: resized to the box side
    (bicubic), ``mask * face + (1 - mask) * what is there``; pixels outside the box are not touched."""
    side = box.side
    if tuple(faces.shape[-2:]) != (side, side):
        faces = F.interpolate(faces.float(), size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
    region = out[:, :, box.y0:box.y1, box.x0:box.x1]
    out[:, :, box.y0:box.y1, box.x0:box.x1] = mask * faces.float() + (1 - mask) * region


def _check_background(background: torch.Tensor, box: FaceBox, frames: int) -> None:
    require_tensor(background, "photo", ndim=4)
    if background.shape[1] != 3 or background.shape[0] not in (1, frames):
        raise ValueError(f"the background must be one photo [1, 3, H, W] or one frame per face frame [{frames}, 3, H, "
                         f"W]; got {tuple(background.shape)}.")
    if tuple(background.shape[-2:]) != (box.height, box.width):
        raise ValueError(f"the photo is {background.shape[-1]}×{background.shape[-2]} but the face box was made for "
                         f"{box.width}×{box.height}; paste back into the photo the crop came from.")


def iter_paste_back(frames: torch.Tensor, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1,
                    chunk: int = 16) -> Iterator[torch.Tensor]:
    """:func:`paste_back` chunk by chunk (``[n, 3, H, W]`` each), for a caller that streams. ``image`` is one
    photo ``[1, 3, H, W]`` or a background frame per face frame ``[N, 3, H, W]`` (e.g. an earlier paste's)."""
    require_tensor(frames, "frames", ndim=4)
    if frames.shape[1] != 3:
        raise ValueError(f"expected frames [N, 3, s, s]; got {tuple(frames.shape)}.")
    _check_background(image, box, frames.shape[0])
    require_finite(frames, "generated frames")
    mask = feather_mask(box.side, feather, device=image.device)
    step = max(1, int(chunk))
    for i in range(0, frames.shape[0], step):
        part = frames[i:i + step]
        back = image if image.shape[0] == 1 else image[i:i + step]
        out = back.float().expand(part.shape[0], -1, -1, -1).clone()
        _blend(out, part, box, mask)
        yield out


def paste_back(frames: torch.Tensor, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1) -> torch.Tensor:
    """Generated face frames ``[N, 3, s, s]`` → the photo ``[1, 3, H, W]`` (or background frames ``[N, 3, H, W]``)
    with each frame blended into ``box`` → ``[N, 3, H, W]``. Frames are resized to the box side (bicubic); outside
    the box the background is unchanged."""
    return torch.cat(list(iter_paste_back(frames, image, box, feather=feather)))


# ------------------------------------------------------------------------------------------------
# Streaming: face videos into a photo or a video
# ------------------------------------------------------------------------------------------------
def _chunks(source, chunk: int) -> Iterator[torch.Tensor]:
    """``[k, 3, H, W]`` float chunks of a video file or of a frames tensor, ``chunk`` frames each (the last fewer)."""
    from .io.image import uint8_to_tensor
    from .io.video import iter_video_chunks

    if isinstance(source, torch.Tensor):
        for i in range(0, source.shape[0], chunk):
            yield source[i:i + chunk].float()
    else:
        for pixels in iter_video_chunks(source, chunk):
            yield uint8_to_tensor(pixels)


def _faces_in(metadata: dict) -> list[list[int]]:
    try:
        boxes = json.loads(metadata.get(FACES_TAG, "[]"))
        return [[int(v) for v in b] for b in boxes if len(b) == 4]
    except (ValueError, TypeError):
        return []


class _Source:
    """A face layer or the background: a video file (probed, not decoded) or frames in memory."""

    def __init__(self, source, name: str):
        from .io.video import probe_video

        self.source = source
        self.fps, self.metadata, self.has_audio = None, {}, False
        if isinstance(source, torch.Tensor):
            require_tensor(source, name, ndim=4)
            if source.shape[1] != 3:
                raise ValueError(f"{name} must be frames [N, 3, H, W]; got {tuple(source.shape)}.")
            self.frames, self.height, self.width = source.shape[0], source.shape[2], source.shape[3]
        else:
            info = probe_video(source, decode=False)  # the frames are decoded once, while composing
            self.frames, self.height, self.width = info.frame_count, info.height, info.width
            self.fps, self.metadata, self.has_audio = info.fps, dict(info.metadata), info.has_audio

    def sound(self):
        """``(waveform, rate)`` of the video's sound, decoded only when the composed video takes it."""
        from .io.audio_file import load_audio

        return load_audio(self.source)


def _sound(sound: str, background: _Source, layers: list[_Source]):
    """The composed video's sound: ``(waveform, rate)`` or ``(None, None)``."""
    from .audio.tracks import align_tracks, mix_tracks

    if sound not in SOUNDS:
        raise ValueError(f"sound must be one of {SOUNDS}; got {sound!r}.")
    picked = {"mix": [background, *layers], "faces": layers, "background": [background], "none": []}[sound]
    tracks = [s.sound() for s in picked if s.has_audio]
    if not tracks:
        return None, None
    waves, rate = align_tracks(tracks)
    return mix_tracks(waves), rate


def compose_video(layers: Sequence[tuple[object, FaceBox]], background, destination, *, fps=None,
                  feather: float = 0.1, chunk: int = 16, should_stop=None, sound: str = "mix", audio=None,
                  metadata: dict[str, str] | None = None) -> int:
    """Stream face layers into a background and encode the result to ``destination``; returns the frame count.

    * ``layers``: ``[(face video file or frames [N, 3, s, s], FaceBox), ...]``, pasted in order, each through a
      feathered mask (:func:`feather_mask`), resized to its box.
    * ``background``: one photo ``[1, 3, H, W]`` (a still), frames ``[N, 3, H, W]``, or a video file (e.g. an
      earlier paste: its ``letstalk_faces`` boxes count as pasted, and a new box that overlaps them is refused).
    * The video has as many frames as the longest of the faces and a moving background; a face that ends
      earlier leaves the background as it is; a background video shorter than a face is refused. The frame
      rate is the videos' (they must agree), or ``fps`` when no input is a video.
    * ``sound``: ``"mix"`` (the background's and every face's sound, summed: a conversation's voices),
      ``"faces"``, ``"background"`` or ``"none"``; ``audio=(waveform, rate)`` gives the sound instead.
    * Memory: one chunk of full-size frames per source, whatever the length. ``should_stop()``, called before
      each chunk, may raise to cancel; a failed or cancelled run removes its unfinished file.
    """
    from pathlib import Path

    from .io.space import (
        estimate_video_bytes,
        require_room_for_the_rest,
        require_space,
        write_failed,
    )
    from .io.video import VideoWriter

    if not layers:
        raise ValueError("give at least one face to paste.")
    chunk = max(1, int(chunk))
    back = _Source(background, "background")
    faces = [_Source(src, f"face {i + 1}") for i, (src, _) in enumerate(layers)]
    boxes = [box for _, box in layers]
    for i, box in enumerate(boxes):
        if (box.width, box.height) != (back.width, back.height):
            raise ValueError(f"face {i + 1}'s box was made for a {box.width}×{box.height} photo but the background is "
                             f"{back.width}×{back.height}; crop and paste back with the same picture.")
    before = [FaceBox(*b, back.width, back.height) for b in _faces_in(back.metadata)
              if 0 <= b[0] < b[2] <= back.width and 0 <= b[1] < b[3] <= back.height]
    require_apart(before + boxes, ["the face pasted before at" for _ in before] +
                  [f"face {i + 1} at" for i in range(len(boxes))])
    rates = {float(s.fps) for s in (back, *faces) if s.fps is not None}
    if len(rates) > 1:
        raise ValueError(f"the videos have different frame rates ({', '.join(f'{r:g}' for r in sorted(rates))} fps); "
                         "make them at one rate.")
    rate = next((s.fps for s in (back, *faces) if s.fps is not None), fps)
    if rate is None:
        raise ValueError("give the frame rate (fps): no input is a video.")
    total = max(f.frames for f in faces)
    moving = back.frames > 1 or not isinstance(background, torch.Tensor)
    if moving:
        if back.frames < total:
            longest = 1 + max(range(len(faces)), key=lambda i: faces[i].frames)
            raise ValueError(f"the background has {back.frames} frames but face {longest} has {total}: give a "
                             "background at least as long as the faces.")
        total = back.frames
    wave, wave_rate = audio if audio is not None else _sound(sound, back, faces)
    channels = int(wave.shape[0]) if wave is not None and wave.ndim > 1 else 1
    out = Path(destination)
    need = estimate_video_bytes(total, back.width, back.height,
                                audio_seconds=wave.shape[-1] / wave_rate if wave is not None else 0.0,
                                audio_channels=channels)
    require_space(out.parent, need, "composed video", "Free some space on that disk (for ComfyUI: its temp "
                  "folder's disk, or start it with --temp-directory on a larger one).")
    pasted = [[b.x0, b.y0, b.x1, b.y1] for b in before + boxes]
    carried = {k: v for f in faces for k, v in f.metadata.items()}  # e.g. the loop's overlap tag, for `letstalk eval`
    tags = {**carried, **back.metadata, **(metadata or {}), FACES_TAG: json.dumps(pasted)}
    masks = [feather_mask(b.side, feather) for b in boxes]
    streams = [_chunks(f.source, chunk) for f in faces]
    back_stream = _chunks(background, chunk) if moving else None
    still = background.float() if not moving else None
    written = 0
    try:
        with VideoWriter(out, rate, audio=wave, audio_rate=wave_rate, metadata=tags) as writer:
            while written < total:
                if should_stop is not None:
                    should_stop()
                n = min(chunk, total - written)
                if back_stream is not None:
                    frame = next(back_stream, None)
                    if frame is None or frame.shape[0] < n:
                        got = written + (0 if frame is None else frame.shape[0])
                        raise ValueError(f"the background video ended after {got} of the {total} frames its header "
                                         "declares.")
                    canvas = frame[:n].clone()
                else:
                    canvas = still.expand(n, -1, -1, -1).clone()
                for stream, box, mask in zip(streams, boxes, masks):
                    part = next(stream, None)
                    if part is not None:
                        require_finite(part, "face frames")
                        k = min(n, part.shape[0])
                        _blend(canvas[:k], part[:k], box, mask)
                writer.write(canvas)
                written += n
                require_room_for_the_rest(out, written, total, need)
    except OSError as e:
        out.unlink(missing_ok=True)
        raise write_failed(e, out, remaining=max(0, need * (total - written) // max(1, total)),
                           kept="The face videos it reads are unchanged: paste again.") from e
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return written


def paste_back_video(source, destination, image: torch.Tensor, box: FaceBox, *, feather: float = 0.1,
                     chunk: int = 16, should_stop=None, metadata: dict[str, str] | None = None) -> int:
    """Stream a face video file into the photo (:func:`compose_video` with one face): each decoded chunk of
    ``source`` is pasted into ``image`` at ``box`` and encoded into ``destination`` at the same frame rate, with
    ``source``'s sound. Memory stays at one chunk of full-size frames whatever the length (an IMAGE batch of 5
    minutes of 1920×1080 frames would be 220 GB). ``should_stop()``, called before each chunk, may raise to
    cancel; the unfinished file is removed. Returns the frame count."""
    return compose_video([(source, box)], image, destination, feather=feather, chunk=chunk, should_stop=should_stop,
                         sound="faces", metadata=metadata)
