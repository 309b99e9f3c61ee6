"""Video files through PyAV: a streaming MP4 writer, an exact prober and a frame reader.

:class:`VideoWriter` is the file sink of long generation. Each ``write`` encodes its frames at once
(nothing is kept but the encoder's own small look-ahead), so memory does not grow with the video's
length. Frame ``i`` gets ``pts = i`` in the time base ``1 / fps``, so the file holds exactly the
frames written, at exactly ``fps`` (a float such as 29.97 becomes ``Fraction(30000, 1001)``).

The optional sound track is encoded as AAC alongside the frames (the part of the audio the frames
written so far cover, after each ``write``; the rest on ``close``), in small chunks. Its duration
equals the given audio's duration exactly: FFmpeg's AAC encoder gives the last packet its true
length and the MP4 muxer records it, and its priming samples go into the edit list. When the writer
is closed by an exception, the file is still finalised as a valid MP4 holding the frames written
so far, with the audio they cover.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..validation import require_file
from .audio_file import _open, as_channels_first
from .image import tensor_to_uint8, uint8_to_tensor

#: Encoders tried, in order, by ``codec="auto"``: H.264 through x264, then any other H.264 encoder
#: FFmpeg has (OpenH264, hardware wrappers), then MPEG-4 part 2, which every FFmpeg build carries.
AUTO_CODECS = ("libx264", "h264", "mpeg4")
#: Layout given to the AAC encoder for each channel count (AAC here supports 1 to 7 channels).
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1"}
#: Rate the sound is resampled to when AAC cannot store the given one (e.g. 44000 Hz).
_FALLBACK_AUDIO_RATE = 48000
_AUDIO_CHUNK = 8192


def _encoder_available(name: str) -> str | None:
    """The FFmpeg encoder name behind ``name``, or ``None`` if this build cannot encode with it."""
    import av

    try:
        return av.codec.Codec(name, "w").name
    except Exception:  # av raises UnknownCodecError / ValueError depending on the build
        return None


def pick_video_codec(codec: str = "auto") -> str:
    """Resolve ``codec`` ("auto" or an encoder name) to an encoder this PyAV build has."""
    if codec != "auto":
        if _encoder_available(codec) is None:
            raise ValueError(f"Video encoder '{codec}' is not available in this PyAV build; use codec='auto'.")
        return codec
    for name in AUTO_CODECS:
        if _encoder_available(name) is not None:
            return name
    raise RuntimeError(f"None of the video encoders {AUTO_CODECS} is available in this PyAV build.")


def _x264_deterministic_params() -> dict[str, str]:
    """x264 options that make the same frames give the same bytes on this CPU.

    x264's AVX-512 code in the macroblock-tree rate control reads memory it did not write: with it, the
    same uint8 frames gave 3-25 different files in 30 encodes when the process decoded a video between
    them (found with ``asm=0`` and ``mbtree=0``, which both make it exact; the AVX2 code is exact). So on
    a CPU that has AVX-512 the encoder is told to stop at AVX2 (``asm=AVX2,Cache64``: x264's own flag
    names, every AVX-512 CPU has them); it cost 1.5 % of the encode time at 512². Elsewhere nothing changes.
    """
    import torch

    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        return {"x264-params": "asm=AVX2,Cache64"}
    return {}


def fps_fraction(fps) -> Fraction:
    """``fps`` (int, float or Fraction > 0) as an exact Fraction.

    Fractions are kept; floats near an NTSC rate snap to it (29.97 -> 30000/1001, 23.976 ->
    24000/1001, 59.94 -> 60000/1001); other floats become ``Fraction(fps).limit_denominator(1001)``.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise TypeError(f"fps must be a number, got {fps!r}.")
    if not (math.isfinite(float(fps)) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
    if isinstance(fps, (int, Fraction)):
        return Fraction(fps)
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
    if not fps.is_integer() and abs(fps - float(ntsc)) < 0.005:
        return ntsc
    return Fraction(fps).limit_denominator(1001)


def _frames_to_uint8(frames) -> np.ndarray:
    """Frames as torch ``[N, 3, H, W]`` in [-1, 1] or uint8 numpy ``[N, H, W, 3]`` -> uint8 ``[N, H, W, 3]``."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4:
            raise ValueError(f"frames must be [N, 3, H, W], got shape {tuple(frames.shape)}.")
        return tensor_to_uint8(frames)
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(
                f"numpy frames must be uint8 [N, H, W, 3], got {frames.dtype} with shape {tuple(frames.shape)}."
            )
        return frames
    raise TypeError(f"frames must be a torch tensor [N, 3, H, W] or uint8 numpy [N, H, W, 3], got {type(frames).__name__}.")


class _AudioTrack:
    """Encodes a known waveform to an AAC stream in chunks, up to a requested time."""

    def __init__(self, container, waveform, rate: int):
        import av

        w = as_channels_first(waveform, "audio")
        channels = w.shape[0]
        if channels not in _AAC_LAYOUTS:
            raise ValueError(f"audio has {channels} channels; AAC here takes 1 to 7. Mix it down first.")
        self.layout = _AAC_LAYOUTS[channels]
        self.source = w.numpy()
        self.source_rate = rate
        self.total = w.shape[1]
        self.encoded = 0
        self.out_samples = 0
        out_rate = rate if rate in av.codec.Codec("aac", "w").audio_rates else _FALLBACK_AUDIO_RATE
        self.resampler = None
        if out_rate != rate:
            self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=out_rate)
        self.stream = container.add_stream("aac", rate=out_rate)
        self.stream.layout = self.layout
        self.stream.bit_rate = 64000 * channels
        self.container = container

    def _frame(self, start: int, stop: int):
        """One ``av.AudioFrame`` holding source samples ``[start, stop)``."""
        import av

        chunk = np.ascontiguousarray(self.source[:, start:stop])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
        frame.sample_rate = self.source_rate
        return frame

    def _mux(self, frames) -> None:
        """Stamp ``frames`` with their sample position, encode them and mux the packets."""
        for frame in frames:
            frame.pts = self.out_samples
            self.out_samples += frame.samples
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def encode_until(self, seconds: float | None) -> None:
        """Encode the source up to ``seconds`` (all of it when ``None``), in chunks."""
        end = self.total if seconds is None else min(self.total, int(math.floor(seconds * self.source_rate)))
        while self.encoded < end:
            stop = min(end, self.encoded + _AUDIO_CHUNK)
            frame = self._frame(self.encoded, stop)
            self._mux(self.resampler.resample(frame) if self.resampler else [frame])
            self.encoded = stop

    def finish(self) -> None:
        """Flush the resampler (if any) and the encoder."""
        if self.resampler:
            self._mux(self.resampler.resample(None))
        for packet in self.stream.encode(None):
            self.container.mux(packet)


class VideoWriter:
    """Streaming MP4 writer: ``with VideoWriter(path, fps, audio=w, audio_rate=sr) as out: out.write(frames)``.

    * ``frames``: torch ``[N, 3, H, W]`` in [-1, 1] (display-converted by :func:`tensor_to_uint8`)
      or uint8 numpy ``[N, H, W, 3]``; every frame must have the size of the first, and with
      ``pix_fmt="yuv420p"`` width and height must be even.
    * ``codec``: ``"auto"`` picks the first available of :data:`AUTO_CODECS` (libx264, h264,
      mpeg4), or name an encoder. ``crf`` sets x264's constant rate factor; other encoders get a
      bit rate instead (about 0.2 bit per pixel).
    * ``audio``: float waveform ``[C, T]`` or ``[T]`` in [-1, 1] at ``audio_rate``, muxed as AAC
      with exactly its own duration; channels follow FFmpeg's default layouts (6 channels are 5.1:
      FL FR FC LFE BL BR, and AAC low-passes the LFE). Rates AAC cannot store are resampled to 48 kHz.
    * ``metadata``: container tags (str -> str), stored in the MP4 as given.
    """

    def __init__(self, path, fps, *, audio=None, audio_rate=None, codec="auto", crf=18, pix_fmt="yuv420p",
                 metadata: dict[str, str] | None = None):
        import av

        self.fps = fps_fraction(fps)
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"Output folder '{self.path.parent}' does not exist; create it first.")
        self.codec = pick_video_codec(codec)
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer 0..51 (lower is better quality), got {crf!r}.")
        if (audio is None) != (audio_rate is None):
            raise ValueError("Give audio and audio_rate together (or neither).")
        if audio_rate is not None and (isinstance(audio_rate, bool) or not isinstance(audio_rate, int) or audio_rate <= 0):
            raise ValueError(f"audio_rate must be a positive integer (Hz), got {audio_rate!r}.")
        self.crf, self.pix_fmt = crf, pix_fmt
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (height, width), fixed by the first write
        # FFmpeg writes through this Python file, so a failed write (a full disk) raises at the next mux, within
        # one 32 KB buffer. Opened by path, FFmpeg's own file protocol reported ENOSPC 134 frames late in a test
        # on a 200 KB tmpfs, and a loop in ComfyUI made 54 more clips after its temp disk filled.
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close(), after the container
        try:
            self._container = av.open(self._file, "w", format="mp4", options={"movflags": "use_metadata_tags"})
        except BaseException:
            self._file.close()
            raise
        try:
            for key, value in (metadata or {}).items():
                self._container.metadata[str(key)] = str(value)
            self._audio = _AudioTrack(self._container, audio, audio_rate) if audio is not None else None
            self._video = None
        except Exception:
            self._close_files()
            raise
        self._closed = False

    # -- video -------------------------------------------------------------------------------------
    def _open_video(self, height: int, width: int) -> None:
        """Create the video stream for frames of ``height`` x ``width`` (first write only)."""
        if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(
                f"Frames are {width}x{height}; yuv420p video needs an even width and height. "
                "Crop or pad the frames by one pixel (or resize to a multiple of 32, as the core does)."
            )
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        stream.codec_context.time_base = 1 / self.fps
        if _encoder_available(self.codec) == "libx264":
            stream.codec_context.options = {"crf": str(self.crf), **_x264_deterministic_params()}
            # A resumed run must equal an uninterrupted one frame for frame, so the same frames must give the same
            # bytes, whatever else the process did before. The options above remove the one cause found (x264's
            # AVX-512 code; see _x264_deterministic_params). One encoder thread besides: the encode shares the cores
            # with the sampler, and it costs 0.98 s against 0.60 s (frame threads) for 128 frames at 700×820.
            stream.codec_context.thread_count = 1
        else:
            stream.bit_rate = max(200_000, int(0.2 * width * height * float(self.fps)))
        self._video = stream
        self.size = (height, width)

    def _encode(self, frame) -> None:
        for packet in self._video.encode(frame):
            self._container.mux(packet)

    def write(self, frames) -> None:
        """Encode ``frames`` now (torch ``[N, 3, H, W]`` in [-1, 1] or uint8 numpy ``[N, H, W, 3]``)."""
        import av

        if self._closed:
            raise RuntimeError(f"VideoWriter for '{self.path}' is closed; open a new one.")
        pixels = _frames_to_uint8(frames)
        height, width = pixels.shape[1:3]
        if self.size is None:
            self._open_video(height, width)
        elif (height, width) != self.size:
            raise ValueError(
                f"Frame size changed from {self.size[1]}x{self.size[0]} to {width}x{height}; "
                "all frames of a video must have the same size."
            )
        for image in pixels:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame = frame.reformat(format=self.pix_fmt, threads=1)  # here, single-threaded: deterministic
            frame.pts = self.frames_written
            self._encode(frame)
            self.frames_written += 1
        if self._audio is not None:
            self._audio.encode_until(float(self.frames_written / self.fps))

    # -- closing -----------------------------------------------------------------------------------
    def close(self, *, complete: bool = True) -> None:
        """Flush the video encoder, finish the audio and write the MP4 trailer.

        With ``complete`` (the normal case) the whole audio is muxed; otherwise (an interrupted
        run) only the audio the written frames cover. Calling it twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._video is not None:
                self._encode(None)
            if self._audio is not None:
                self._audio.encode_until(None if complete else float(self.frames_written / self.fps))
                self._audio.finish()
        finally:
            self._close_files()

    def _close_files(self) -> None:
        try:
            self._container.close()  # the MP4 index is written here: on a full disk this raises
        finally:
            self._file.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` measured (frame and sample counts come from decoding, so they are exact)."""

    frame_count: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool
    audio_seconds: float = 0.0
    audio_rate: int | None = None
    audio_channels: int | None = None
    codec: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def probe_video(path, *, decode: bool = True) -> VideoInfo:
    """Measure a video file: exact frame count (decoded), fps, size and its audio (decoded samples / rate).

    ``decode=False`` reads the container's header only (fps, size, tags, whether there is sound): the
    frame count is then what the container declares and the audio fields stay unset."""
    from .audio_file import load_audio

    p = require_file(path, "Video file")
    with _open(p, "video file") as container:
        if not container.streams.video:
            raise ValueError(f"'{p}' has no video stream.")
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
        count = sum(1 for _ in container.decode(stream)) if decode else int(stream.frames or 0)
        info = dict(frame_count=count, fps=fps, width=stream.codec_context.width,
                    height=stream.codec_context.height, codec=stream.codec_context.name,
                    metadata=dict(container.metadata), has_audio=bool(container.streams.audio))
    if info["has_audio"] and decode:
        waveform, rate = load_audio(p)
        info.update(audio_seconds=waveform.shape[1] / rate, audio_rate=rate, audio_channels=waveform.shape[0])
    return VideoInfo(**info)


def read_video_frames(path, *, start: int = 0, count: int | None = None) -> torch.Tensor:
    """Decode frames ``[start, start + count)`` (to the end when ``count`` is None) as ``[N, 3, H, W]`` in [-1, 1]."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}.")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be an integer >= 1 or None (to the end), got {count!r}.")
    p = require_file(path, "Video file")
    images: list[torch.Tensor] = []
    with _open(p, "video file") as container:
        if not container.streams.video:
            raise ValueError(f"'{p}' has no video stream.")
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if count is not None and len(images) >= count:
                break
            if index >= start:
                images.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
    if not images:
        raise ValueError(f"'{p}' has no frames in the range start={start}, count={count}.")
    return uint8_to_tensor(torch.stack(images))


def iter_video_chunks(path, chunk: int = 256) -> Iterator[np.ndarray]:
    """Decode ``path`` once, yielding uint8 ``[n, H, W, 3]`` RGB chunks of at most ``chunk`` frames.

    The frames are exactly those of :func:`letstalk_core.io.video.read_video_frames` (same stream,
    same ``rgb24`` conversion), but the file is decoded a single time; calling ``read_video_frames``
    with ``start=k*chunk`` would decode from the beginning for every chunk (quadratic in length).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1 (frames decoded at a time), got {chunk!r}.")
    p = require_file(path, "Video file")
    with _open(p, "video file") as container:
        if not container.streams.video:
            raise ValueError(f"'{p}' has no video stream.")
        buffer: list[np.ndarray] = []
        for frame in container.decode(container.streams.video[0]):
            buffer.append(frame.to_ndarray(format="rgb24"))
            if len(buffer) == chunk:
                yield np.stack(buffer)
                buffer = []
        if buffer:
            yield np.stack(buffer)
