"""File input/output through PyAV and Pillow: audio, still images and streaming video.

* :func:`load_audio` / :func:`save_wav`: any audio or video file -> float ``[C, T]`` + rate; PCM WAV out.
* :func:`load_image`, :func:`image_to_tensor`, :func:`tensor_to_uint8`: pictures <-> ``[3, H, W]`` in [-1, 1].
* :class:`VideoWriter`: streaming MP4 sink (H.264 + AAC); :func:`probe_video`, :func:`read_video_frames`.
"""
from .audio_file import load_audio, read_audio, save_wav
from .image import (
    MAX_PORTRAIT_SIDE,
    image_to_tensor,
    load_image,
    prepare_portrait_image,
    tensor_to_uint8,
    uint8_to_tensor,
)
from .space import (
    WriteFailed,
    abandon_video,
    estimate_video_bytes,
    format_bytes,
    free_bytes,
    require_room_for_the_rest,
    require_space,
    write_failed,
)
from .video import (
    AUTO_CODECS,
    VideoInfo,
    VideoWriter,
    fps_fraction,
    pick_video_codec,
    probe_video,
    read_video_frames,
)

__all__ = [
    "abandon_video",
    "AUTO_CODECS",
    "estimate_video_bytes",
    "format_bytes",
    "fps_fraction",
    "free_bytes",
    "image_to_tensor",
    "load_audio",
    "load_image",
    "MAX_PORTRAIT_SIDE",
    "pick_video_codec",
    "prepare_portrait_image",
    "probe_video",
    "read_audio",
    "read_video_frames",
    "require_room_for_the_rest",
    "require_space",
    "save_wav",
    "tensor_to_uint8",
    "uint8_to_tensor",
    "VideoInfo",
    "VideoWriter",
    "write_failed",
    "WriteFailed",
]
