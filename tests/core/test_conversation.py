"""Conversations, the parts: every face's box (found or given, left to right), boxes that overlap refused, the
speech tracks aligned and mixed, and the faces streamed into a photo or into an earlier paste's video."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from letstalk_core.audio.tracks import align_tracks, mix_tracks
from letstalk_core.compose import (
    FACES_TAG,
    FaceBox,
    boxes_text,
    compose_video,
    face_boxes,
    parse_boxes,
    require_apart,
)
from letstalk_core.io import VideoWriter, load_audio, probe_video, read_video_frames, tensor_to_uint8


def test_boxes_given_by_hand_round_trip_and_bad_ones_are_refused():
    boxes = parse_boxes("10,20,74,84; 100,20,164,84", 200, 120)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(10, 20, 74, 84), (100, 20, 164, 84)]
    assert parse_boxes(boxes_text(boxes), 200, 120) == boxes
    with pytest.raises(ValueError, match="face box 2 .* is 60×64 pixels; face boxes are square"):
        parse_boxes("10,20,74,84; 100,20,160,84", 200, 120)
    with pytest.raises(ValueError, match="face box 1 'a,b' is not 'x0,y0,x1,y1'"):
        parse_boxes("a,b", 200, 120)
    with pytest.raises(ValueError, match="face box 1: .*does not lie inside the 200×120 photo"):
        parse_boxes("150,20,214,84", 200, 120)
    with pytest.raises(ValueError, match="no face box given"):
        parse_boxes(" ; ", 200, 120)


def test_every_face_found_is_boxed_and_ordered_left_to_right():
    detections = [(300, 40, 340, 90, 0.9), (20, 50, 60, 95, 0.8), (160, 45, 200, 92, 0.99)]
    boxes = face_boxes(detections, 400, 160, scale=1.5)
    assert [b.x0 < c.x0 for b, c in zip(boxes, boxes[1:])] == [True, True]
    assert all(b.side == b.y1 - b.y0 for b in boxes)  # square
    centres = [((b.x0 + b.x1) / 2) for b in boxes]
    assert centres[0] < 100 < centres[1] < 250 < centres[2]
    with pytest.raises(ValueError, match="no face was found in the 400×160 photo"):
        face_boxes([], 400, 160)


def test_four_boxes_of_which_two_overlap_are_refused_naming_them():
    boxes = parse_boxes("0,0,40,40; 50,0,90,40; 100,0,140,40; 80,10,110,40", 200, 60)
    with pytest.raises(ValueError) as e:
        require_apart(boxes)
    message = str(e.value)
    assert "face box 2 (50, 0)–(90, 40) and face box 4 (80, 10)–(110, 40)" in message
    assert "face box 3 (100, 0)–(140, 40) and face box 4" in message
    assert "face box 1" not in message
    require_apart(boxes[:3])  # three apart are fine
    require_apart([FaceBox(0, 0, 40, 40, 200, 60), FaceBox(40, 0, 80, 40, 200, 60)])  # touching edges do not overlap


def test_tracks_are_aligned_padded_with_silence_and_mixed_without_clipping():
    a = torch.full((1, 16000), 0.5)
    b = torch.full((22050 * 2,), 0.75)  # 2 s at 22.05 kHz, 1-D
    waves, rate = align_tracks([(a, 16000), (b, 22050)])
    assert rate == 22050 and all(w.shape == (1, 44100) for w in waves)
    assert torch.all(waves[0][:, 22050 + 100:] == 0)  # a's second second is silence
    assert abs(float(waves[0][0, 5000]) - 0.5) < 1e-3
    mix = mix_tracks(waves)
    assert float(mix.abs().max()) <= 1.0 + 1e-6  # 0.5 + 0.75 would clip: scaled down
    quiet = mix_tracks([w * 0.5 for w in waves])
    assert torch.allclose(quiet, waves[0] * 0.5 + waves[1] * 0.5)  # no clipping: the plain sum
    with pytest.raises(ValueError, match="must be aligned"):
        mix_tracks([a, b[None]])
    with pytest.raises(ValueError, match="at least one"):
        align_tracks([])


def _face_video(path, frames: torch.Tensor, fps=25, tone=None):
    audio = None if tone is None else torch.sin(torch.arange(int(16000 * frames.shape[0] / fps)) / 16000 * 2 * np.pi
                                                * tone)[None] * 0.3
    with VideoWriter(path, fps, audio=audio, audio_rate=None if audio is None else 16000) as w:
        w.write(frames)
    return path


def _photo(h=96, w=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w, generator=g) * 2 - 1, 5, 1, 2)


def _faces(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 3, side, side, generator=g) * 2 - 1, 3, 1, 1)


def test_faces_stream_into_a_photo_and_then_into_that_video(tmp_path):
    """Two faces pasted in one pass into a photo, with their sounds mixed; a third face pasted into that video
    keeps the first two; a box that overlaps one pasted before is refused, naming it. Outside the boxes the frames
    handed to the encoder are the photo's, exactly."""
    photo = _photo()
    boxes = parse_boxes("8,16,56,64; 72,16,120,64; 140,24,188,72", 200, 96)
    a = _face_video(tmp_path / "a.mp4", _faces(30, 32, 1), tone=300)
    b = _face_video(tmp_path / "b.mp4", _faces(30, 48, 2), tone=500)
    c = _face_video(tmp_path / "c.mp4", _faces(30, 32, 3))
    handed = []
    import letstalk_core.compose as compose

    original = VideoWriter.write

    def spy(self, frames):
        handed.append(tensor_to_uint8(frames).copy())
        original(self, frames)

    VideoWriter.write = spy
    try:
        n = compose_video([(a, boxes[0]), (b, boxes[1])], photo, tmp_path / "two.mp4", chunk=8)
    finally:
        VideoWriter.write = original
    assert n == 30 and compose is not None
    frames = np.concatenate(handed)
    outside = np.ones((96, 200), bool)
    for box in boxes[:2]:
        outside[box.y0:box.y1, box.x0:box.x1] = False
    assert (frames[:, outside] == tensor_to_uint8(photo[0])[outside]).all()
    info = probe_video(tmp_path / "two.mp4")
    assert info.frame_count == 30 and json.loads(info.metadata[FACES_TAG]) == [[8, 16, 56, 64], [72, 16, 120, 64]]
    wave, rate = load_audio(tmp_path / "two.mp4")
    spectrum = torch.fft.rfft(wave[0, 2000:2000 + rate // 2]).abs()
    freqs = torch.fft.rfftfreq(rate // 2, 1 / rate)
    peaks = {int(round(float(freqs[i]) / 100) * 100) for i in spectrum.topk(2).indices}
    assert peaks == {300, 500}, peaks  # both faces' sounds: the mix

    with pytest.raises(ValueError, match=r"the face pasted before at \(72, 16\)–\(120, 64\) and face 1 at \(100, 20\)"):
        compose_video([(c, FaceBox(100, 20, 140, 60, 200, 96))], tmp_path / "two.mp4", tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()
    compose_video([(c, boxes[2])], tmp_path / "two.mp4", tmp_path / "three.mp4")
    two, three = read_video_frames(tmp_path / "two.mp4"), read_video_frames(tmp_path / "three.mp4")
    assert two.shape == three.shape
    left = (slice(None), slice(None), slice(0, 96), slice(0, 128))  # the first two faces: only re-encoded
    assert float((two[left] - three[left]).abs().mean()) < 0.02
    info = probe_video(tmp_path / "three.mp4")
    assert len(json.loads(info.metadata[FACES_TAG])) == 3


def test_a_background_video_shorter_than_the_faces_or_another_size_is_refused(tmp_path):
    face = _face_video(tmp_path / "f.mp4", _faces(20, 32, 1))
    short = _face_video(tmp_path / "bg.mp4", _photo(96, 200).expand(10, -1, -1, -1))
    box = FaceBox(8, 16, 56, 64, 200, 96)
    with pytest.raises(ValueError, match="background has 10 frames but face 1 has 20"):
        compose_video([(face, box)], short, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="made for a 200×96 photo but the background is 100×96"):
        compose_video([(face, box)], _photo(96, 100), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="different frame rates"):
        compose_video([(face, box), (_face_video(tmp_path / "g.mp4", _faces(20, 32, 2), fps=30),
                                     FaceBox(100, 16, 148, 64, 200, 96))], _photo(), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_image_frames_paste_one_face_after_another():
    """The IMAGE path of Paste Back: the second face pasted into the first paste's frames keeps the first face, and
    outside both boxes the photo's pixels are exact."""
    from letstalk_core.compose import paste_back

    photo = _photo()
    first, second = parse_boxes("8,16,56,64; 100,16,148,64", 200, 96)
    one = paste_back(_faces(6, 32, 1), photo, first, feather=0.1)
    two = paste_back(_faces(6, 32, 2), one, second, feather=0.1)
    assert torch.equal(two[:, :, :, :80], one[:, :, :, :80])  # face 1 untouched
    outside = torch.ones(96, 200, dtype=torch.bool)
    for b in (first, second):
        outside[b.y0:b.y1, b.x0:b.x1] = False
    assert torch.equal(two[:, :, outside], photo.expand(6, -1, -1, -1)[:, :, outside])
    with pytest.raises(ValueError, match="one photo .* or one frame per face frame"):
        paste_back(_faces(5, 32, 2), one, second)
