"""Tests for letstalk_core.io: audio decoding, image loading and the streaming MP4 writer."""
from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from letstalk_core.io import (
    VideoWriter,
    fps_fraction,
    image_to_tensor,
    load_audio,
    load_image,
    pick_video_codec,
    probe_video,
    read_video_frames,
    save_wav,
    tensor_to_uint8,
)


def _sine(channels: int, rate: int, seconds: float, freq: float = 440.0) -> torch.Tensor:
    """A [C, T] sine (each channel a different frequency) at amplitude 0.5."""
    t = torch.arange(int(round(seconds * rate)), dtype=torch.float64) / rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * freq * (c + 1) * t) for c in range(channels)]).float()


def _gradient(height: int = 64, width: int = 96) -> torch.Tensor:
    """A smooth [1, 3, H, W] colour gradient in [-1, 1]."""
    y = torch.linspace(-0.9, 0.9, height)[:, None].expand(height, width)
    x = torch.linspace(-0.9, 0.9, width)[None, :].expand(height, width)
    return torch.stack([x, y, -x * 0.5])[None]


def _write_av_audio(path, codec: str, fmt: str, data: np.ndarray, rate: int, container_format: str) -> None:
    """Encode ``data`` (already in the encoder's sample format, [C, T]) with PyAV."""
    layout = {1: "mono", 2: "stereo"}[data.shape[0]]
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        array = data if av.AudioFormat(fmt).is_planar else data.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=fmt, layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# -- video ----------------------------------------------------------------------------------------

def test_auto_codec_prefers_h264():
    assert pick_video_codec("auto") in ("libx264", "h264", "mpeg4")
    assert pick_video_codec("auto") == "libx264"  # this PyAV build ships x264
    with pytest.raises(ValueError, match="not available"):
        pick_video_codec("no-such-encoder")


@pytest.mark.parametrize(
    "fps, expected",
    [(25, Fraction(25)), (29.97, Fraction(30000, 1001)), (23.976, Fraction(24000, 1001)), (12.5, Fraction(25, 2))],
)
def test_fps_fraction(fps, expected):
    assert fps_fraction(fps) == expected


@pytest.mark.parametrize("fps", [25, 29.97])
def test_frame_count_and_audio_duration_are_exact(tmp_path, fps):
    seconds, rate = 1.47, 44100
    audio = _sine(2, rate, seconds)
    n_frames = math.ceil(seconds * float(fps_fraction(fps)))  # 37 at 25 fps, 45 at 29.97
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps, audio=audio, audio_rate=rate) as writer:
        for _ in range(n_frames):
            writer.write(_gradient())
    info = probe_video(path)
    assert info.frame_count == n_frames == writer.frames_written
    assert info.fps == fps_fraction(fps)
    assert (info.width, info.height) == (96, 64)
    assert info.has_audio and info.audio_rate == rate and info.audio_channels == 2
    assert round(info.audio_seconds * rate) == audio.shape[1]  # sample-exact, not just within one AAC frame
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.pts * frame.time_base for frame in container.decode(stream)]
    assert times == [Fraction(i) / fps_fraction(fps) for i in range(n_frames)]


def test_pixels_round_trip_and_colour_order(tmp_path):
    path = tmp_path / "colours.mp4"
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 96)
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 96)
    with VideoWriter(path, 25, crf=10) as writer:
        writer.write(torch.cat([_gradient(), _gradient(), red, blue]))
    frames = read_video_frames(path)
    assert frames.shape == (4, 3, 64, 96)
    error_levels = np.abs(tensor_to_uint8(frames[:2]).astype(float) - tensor_to_uint8(_gradient()).astype(float))
    assert error_levels.mean() < 3.0
    r, g, b = tensor_to_uint8(frames[2:3])[0].reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15
    r, g, b = tensor_to_uint8(frames[3:4])[0].reshape(-1, 3).mean(0)
    assert b > 240 and r < 15 and g < 15
    assert read_video_frames(path, start=2, count=1).shape == (1, 3, 64, 96)
    assert torch.equal(read_video_frames(path, start=3), frames[3:])


def test_uint8_numpy_frames_and_mpeg4(tmp_path):
    path = tmp_path / "m4.mp4"
    pixels = np.full((5, 32, 48, 3), 128, np.uint8)
    with VideoWriter(path, 10, codec="mpeg4") as writer:
        writer.write(pixels[:2])
        writer.write(pixels[2:])
    info = probe_video(path)
    assert (info.frame_count, info.codec, info.has_audio) == (5, "mpeg4", False)
    assert abs(float(read_video_frames(path).mean())) < 0.03


def test_streaming_does_not_accumulate(tmp_path):
    frame = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)  # 48 KiB each
    with VideoWriter(tmp_path / "long.mp4", 25) as writer:
        for _ in range(50):
            writer.write(frame.copy())
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(250):  # a buffering writer would keep ~12 MiB of these
            writer.write(frame.copy())
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert not any(isinstance(v, (list, tuple)) and len(v) > 2 for v in vars(writer).values())
    assert grown < 1_000_000
    assert probe_video(tmp_path / "long.mp4").frame_count == 300


def test_partial_file_is_valid_after_exception(tmp_path):
    path = tmp_path / "partial.mp4"
    audio = _sine(1, 16000, 4.0)
    with pytest.raises(RuntimeError, match="interrupted"):
        with VideoWriter(path, 25, audio=audio, audio_rate=16000) as writer:
            for _ in range(10):
                writer.write(_gradient())
            raise RuntimeError("interrupted")
    info = probe_video(path)
    assert info.frame_count == 10 and info.has_audio
    assert abs(info.audio_seconds - 10 / 25) < 1e-3  # the audio the written frames cover
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(_gradient())


def test_metadata_and_surround_and_odd_rate(tmp_path):
    path = tmp_path / "meta.mp4"
    audio = _sine(6, 44000, 0.5)  # 44000 Hz is not an AAC rate: resampled to 48 kHz
    with VideoWriter(path, 25, audio=audio, audio_rate=44000, metadata={"title": "demo", "letstalk_seed": "7"}) as w:
        w.write(_gradient().expand(13, -1, -1, -1))
    info = probe_video(path)
    assert info.metadata["title"] == "demo" and info.metadata["letstalk_seed"] == "7"
    assert info.audio_channels == 6 and info.audio_rate == 48000
    assert abs(info.audio_seconds - 0.5) < 1e-3


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="even width and height"):
        with VideoWriter(tmp_path / "odd.mp4", 25) as writer:
            writer.write(torch.zeros(1, 3, 63, 64))
    with pytest.raises(ValueError, match="same size"):
        with VideoWriter(tmp_path / "sizes.mp4", 25) as writer:
            writer.write(torch.zeros(1, 3, 64, 64))
            writer.write(torch.zeros(1, 3, 32, 64))
    assert probe_video(tmp_path / "sizes.mp4").frame_count == 1
    with pytest.raises(ValueError, match="audio and audio_rate together"):
        VideoWriter(tmp_path / "a.mp4", 25, audio=torch.zeros(100))
    with pytest.raises(ValueError, match="fps must be"):
        VideoWriter(tmp_path / "a.mp4", 0)
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "f.mp4", 25) as writer:
            writer.write(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoWriter(tmp_path / "nope" / "a.mp4", 25)


# -- audio ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, rate", [(1, 8000), (2, 44100), (6, 96000)])
def test_wav_s16_round_trip_is_exact(tmp_path, channels, rate):
    codes = torch.randint(-32768, 32768, (channels, rate // 10))
    waveform = codes.float() / 32768.0
    save_wav(tmp_path / "a.wav", waveform, rate)
    loaded, loaded_rate = load_audio(tmp_path / "a.wav")
    assert loaded_rate == rate and loaded.dtype == torch.float32
    assert torch.equal(loaded, waveform)


def test_save_wav_accepts_1d_and_refuses_out_of_range(tmp_path):
    save_wav(tmp_path / "m.wav", torch.zeros(800), 16000)
    assert load_audio(tmp_path / "m.wav")[0].shape == (1, 800)
    with pytest.raises(ValueError, match="outside"):
        save_wav(tmp_path / "x.wav", torch.full((1, 10), 1.5), 16000)


@pytest.mark.parametrize(
    "codec, fmt, scale",
    [("pcm_u8", "u8", None), ("pcm_s32le", "s32", 2.0**31), ("pcm_f32le", "flt", 1.0),
     ("pcm_f64le", "dbl", 1.0), ("flac", "s16", 32768.0)],
)
def test_sample_formats_convert_exactly(tmp_path, codec, fmt, scale):
    rng = np.random.default_rng(1)
    if fmt == "u8":
        data = rng.integers(0, 256, (2, 1000)).astype(np.uint8)
        expected = (data.astype(np.float32) - 128) / 128
    elif fmt in ("s16", "s32"):
        dtype = np.int16 if fmt == "s16" else np.int32
        data = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 1000)).astype(dtype)
        expected = (data.astype(np.float64) / scale).astype(np.float32)
    else:
        data = rng.uniform(-1, 1, (2, 1000)).astype(np.float32 if fmt == "flt" else np.float64)
        expected = data.astype(np.float32)
    path = tmp_path / ("a.flac" if codec == "flac" else "a.wav")
    _write_av_audio(path, codec, fmt, data, 22050, "flac" if codec == "flac" else "wav")
    loaded, rate = load_audio(path)
    assert rate == 22050 and loaded.shape == (2, 1000)
    np.testing.assert_array_equal(loaded.numpy(), expected)


@pytest.mark.parametrize("channels, rate", [(1, 8000), (2, 48000), (6, 96000)])
def test_load_audio_from_mp4_aac(tmp_path, channels, rate):
    audio = _sine(channels, rate, 0.7, freq=300.0)
    path = tmp_path / "sound.mp4"
    with VideoWriter(path, 25, audio=audio, audio_rate=rate) as writer:
        writer.write(torch.zeros(18, 3, 32, 32))
    loaded, loaded_rate = load_audio(path)
    assert loaded_rate == rate and loaded.shape == audio.shape  # priming dropped, end padding trimmed
    inner = rate // 10
    for c in range(channels):
        if channels == 6 and c == 3:
            continue  # 5.1's fourth channel is the LFE, which AAC low-passes
        errors = {lag: float((loaded[c, inner + lag: -inner + lag] - audio[c, inner:-inner]).pow(2).mean().sqrt())
                  for lag in (-2, -1, 0, 1, 2)}
        assert min(errors, key=errors.get) == 0  # aligned to the sample
        assert errors[0] < 0.03


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Audio file not found"):
        load_audio(tmp_path / "missing.wav")
    with VideoWriter(tmp_path / "silent.mp4", 25) as writer:
        writer.write(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="has no audio stream; give a speech file"):
        load_audio(tmp_path / "silent.mp4")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(ValueError, match="junk.wav") as excinfo:
        load_audio(junk)
    assert isinstance(excinfo.value.__cause__, av.FFmpegError)


# -- images ---------------------------------------------------------------------------------------

def test_load_image_modes(tmp_path):
    Image.new("L", (5, 4), 51).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (3, 4, 5) and torch.allclose(gray, torch.full_like(gray, 51 / 127.5 - 1))

    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert torch.allclose(img[:, 0, 0], torch.ones(3))  # fully transparent -> white background
    assert torch.allclose(img[:, 0, 1], torch.tensor([1.0, -1.0, -1.0]))
    black_bg = load_image(tmp_path / "rgba.png", background=(0, 0, 0))
    assert torch.allclose(black_bg[:, 0, 0], -torch.ones(3))

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "pal.png", transparency=0)
    pal = load_image(tmp_path / "pal.png")
    assert torch.allclose(pal[:, 0, 0], torch.ones(3)) and torch.allclose(pal[:, 0, 1], torch.tensor([-1.0, 1.0, -1.0]))

    deep = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    d = load_image(tmp_path / "deep.png")
    assert d.shape == (3, 1, 3)
    assert torch.allclose(d[0, 0], torch.tensor([-1.0, 32768 / 65535 * 2 - 1, 1.0]), atol=1e-6)

    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    r, g, b = load_image(tmp_path / "cmyk.jpg")[:, 1, 1]
    assert r > 0.9 and g < -0.9 and b < -0.9


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.png", exif=exif)
    out = load_image(tmp_path / "rot.png")
    assert out.shape == (3, 4, 2)
    assert float(out[0, 0, 1]) > 0.9 and float(out[0, 0, 0]) < -0.9  # top-left went to top-right


def test_image_to_tensor_and_back():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    t = image_to_tensor(pixels)
    assert t.shape == (3, 2, 3) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_uint8(t), pixels)
    assert np.array_equal(tensor_to_uint8(t[None])[0], pixels)
    assert torch.allclose(image_to_tensor(pixels.astype(np.float32) / 255), t, atol=1e-6)
    assert torch.allclose(image_to_tensor(torch.from_numpy(pixels)), t)
    assert torch.allclose(image_to_tensor(Image.fromarray(pixels)), t)
    clear = np.zeros((1, 1, 4), np.uint8)
    assert torch.allclose(image_to_tensor(clear), torch.ones(3, 1, 1))
    over = torch.tensor([-1.3, 0.0, 1.2]).view(1, 3, 1, 1)
    assert tensor_to_uint8(over)[0, 0, 0].tolist() == [0, 128, 255]  # clamp, then round


def test_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.png.*not an image.*cannot identify"):
        load_image(text)
    with pytest.raises(ValueError, match="empty"):
        image_to_tensor(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        image_to_tensor(Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError, match="expected 0..1"):
        image_to_tensor(np.full((2, 2, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="background"):
        load_image(_png(tmp_path), background=(300, 0, 0))
    with pytest.raises(ValueError, match="NaN"):
        tensor_to_uint8(torch.full((1, 3, 2, 2), float("nan")))


def _png(tmp_path):
    """A small valid PNG for error tests that need a readable file."""
    path = tmp_path / "ok.png"
    Image.new("RGB", (2, 2)).save(path)
    return path


def test_the_same_frames_give_the_same_video_bytes(tmp_path):
    """A resumed run must equal an uninterrupted one frame for frame, so the encoder must be deterministic.
    x264's sliced threads (PyAV's default) are not: a 700×820 photo whose face region moves, encoded 5 times,
    gave 4 different files (up to 0.4 apart in pixels). The writer runs x264 on one thread."""
    from tests.core.memo_tiny import PORTRAIT

    photo = load_image(PORTRAIT)[None]  # 700×820
    frames = photo.repeat(48, 1, 1, 1)
    y, x = photo.shape[-2] // 3, photo.shape[-1] // 3
    for i in range(48):  # the face region moving a little, as a talking face pasted back
        dy, dx = round(4 * math.sin(i / 3)), round(3 * math.cos(i / 4))
        frames[i, :, y:y + 140, x:x + 140] = photo[0, :, y + dy + 10:y + dy + 150, x + dx + 10:x + dx + 150]
    digests, kinds = set(), set()
    for i in range(4):
        with VideoWriter(tmp_path / f"v{i}.mp4", 30, audio=_sine(1, 16000, 1.6), audio_rate=16000) as out:
            for k in range(0, 48, 16):
                out.write(frames[k:k + 16])
            kinds.add(out._video.codec_context.thread_count)
        digests.add((tmp_path / f"v{i}.mp4").read_bytes())
    assert len(digests) == 1, f"{len(digests)} different files from the same frames"
    if pick_video_codec("auto") == "libx264":
        assert kinds == {1}, kinds


def _encode_small(path, frames) -> bytes:
    with VideoWriter(path, 25) as out:
        for k in range(0, len(frames), 6):
            out.write(frames[k:k + 6])
    return path.read_bytes()


def test_the_same_frames_give_the_same_bytes_after_decoding_other_videos(tmp_path):
    """The resume and the host decode videos in the process that encodes. With x264's AVX-512 code the same
    32×32 frames gave 3-25 different files in 30 encodes with a decode between them (its macroblock-tree code
    reads memory it did not write); the writer stops x264 at AVX2 on such CPUs. Elsewhere it passes either way."""
    g = torch.Generator().manual_seed(0)
    frames = tensor_to_uint8(torch.nn.functional.avg_pool2d(torch.rand(58, 3, 32, 32, generator=g) * 2 - 1, 3, 1, 1))
    other = tmp_path / "other.mp4"
    _encode_small(other, frames[:20])
    digests = set()
    for i in range(16):
        digests.add(_encode_small(tmp_path / "v.mp4", frames))
        read_video_frames(other)
    assert len(digests) == 1, f"{len(digests)} different files from the same frames"


def test_uint8_to_tensor_is_the_exact_inverse_of_tensor_to_uint8():
    from letstalk_core.io import uint8_to_tensor

    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    frames = uint8_to_tensor(pixels)
    assert frames.shape == (3, 3, 5, 7) and frames.dtype == torch.float32
    assert float(frames.min()) >= -1 and float(frames.max()) <= 1
    assert np.array_equal(tensor_to_uint8(frames), pixels)
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_tensor(pixels.astype(np.float32))
