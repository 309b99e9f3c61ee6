"""Face crop and paste-back (letstalk_core.compose), the silent-audio check, and the generator's
split preparation (encode_audio / encode_portrait / assemble) used by the ComfyUI nodes."""
import math

import pytest
import torch

from letstalk_core.audio.waveform import silence_warning
from letstalk_core.compose import FaceBox, crop_face, face_box, feather_mask, manual_box, paste_back, paste_back_bytes
from tests.core.helpers import portrait, speech_like, tiny_generator


def photo(h=90, w=160):
    g = torch.Generator().manual_seed(1)
    return torch.rand((1, 3, h, w), generator=g) * 2 - 1


def test_manual_box_is_square_inside_and_centred():
    box = manual_box(0.3, 0.45, 0.5, 160, 90)
    assert box.side == box.y1 - box.y0 == 45
    assert (box.x0 + box.x1) / 2 == pytest.approx(0.3 * 160, abs=1)
    edge = manual_box(0.99, 0.01, 0.9, 160, 90)  # near a corner: shifted inside, not shrunk
    assert edge.side == 81 and edge.x1 == 160 and edge.y0 == 0
    with pytest.raises(ValueError, match="fraction"):
        manual_box(1.2, 0.5, 0.5, 160, 90)


def test_face_box_from_detections_and_no_face():
    box = face_box([(50, 20, 70, 44, 0.9), (0, 0, 4, 4, 0.99)], 160, 90, scale=1.5)
    assert box.side == 36 and box.x0 == 42 and box.y0 == 14  # largest face, 1.5 × its long side
    with pytest.raises(ValueError, match="no face"):
        face_box([], 160, 90)


def test_crop_then_paste_back_of_the_crop_restores_the_photo():
    img = photo()
    box = manual_box(0.4, 0.5, 0.6, 160, 90)
    face = crop_face(img, box, box.side)
    out = paste_back(face.repeat(3, 1, 1, 1), img, box, feather=0.2)
    assert out.shape == (3, 3, 90, 160)
    assert torch.allclose(out, img.expand(3, -1, -1, -1), atol=1e-6)


def test_paste_back_keeps_outside_pixels_and_blends_the_edge():
    img = photo()
    box = manual_box(0.5, 0.5, 0.8, 160, 90)
    frames = torch.ones((2, 3, 64, 64))  # white faces at the model's size
    out = paste_back(frames, img, box, feather=0.1)
    outside = torch.ones_like(out, dtype=torch.bool)
    outside[..., box.y0:box.y1, box.x0:box.x1] = False
    assert torch.equal(out[outside], img.expand(2, -1, -1, -1)[outside])  # bit-exact outside the box
    cy, cx = (box.y0 + box.y1) // 2, (box.x0 + box.x1) // 2
    assert torch.allclose(out[:, :, cy, cx], torch.ones(2, 3), atol=1e-5)  # the middle is the face
    corner = out[0, :, box.y0, box.x0]
    assert torch.allclose(corner, img[0, :, box.y0, box.x0], atol=0.05)  # the edge is mostly the photo


def test_feather_mask_profile():
    m = feather_mask(40, 0.25)[0, 0]
    assert m.shape == (40, 40) and float(m[20, 20]) == 1.0
    assert float(m[0, 20]) < 0.05 and torch.all(m[:, 20][:10].diff() > 0)
    assert torch.equal(feather_mask(8, 0.0), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError):
        feather_mask(8, 0.6)


def test_paste_back_refuses_another_photo():
    box = manual_box(0.5, 0.5, 0.5, 160, 90)
    with pytest.raises(ValueError, match="photo"):
        paste_back(torch.zeros(1, 3, 8, 8), photo(100, 100), box)
    with pytest.raises(ValueError, match="inside"):
        FaceBox(0, 0, 200, 200, 160, 90)
    assert paste_back_bytes(1500, 1920, 1080) == 1500 * 1920 * 1080 * 12


def test_silence_is_a_warning_and_empty_audio_an_error():
    assert silence_warning(torch.tensor([[0.0, 0.5, -0.25]])) is None
    assert "silent" in silence_warning(torch.zeros(1, 16000)) and "listening" in silence_warning(torch.zeros(1, 16000))
    assert "-120 dBFS" in silence_warning(torch.full((1, 100), 1e-6))
    with pytest.raises(ValueError, match="empty"):
        silence_warning(torch.zeros(1, 0))


def test_split_preparation_equals_prepare():
    gen = tiny_generator()
    img, wave = portrait(32), speech_like(1.3)
    whole = gen.prepare(img, wave, 16000)
    feats, n, secs = gen.encode_audio(wave, 16000)
    lat = gen.encode_portrait(img)
    parts = gen.assemble(lat, feats, n, secs)
    assert parts.fingerprint == whole.fingerprint and parts.num_frames == n == math.ceil(1.3 * gen.config.video.fps)
    assert torch.equal(parts.features, whole.features) and torch.equal(parts.portrait_latent, whole.portrait_latent)
    with pytest.raises(ValueError, match="encode the audio with this model"):
        gen.assemble(lat, feats[:3], n, secs)
    with pytest.raises(ValueError, match="portrait latent"):
        gen.assemble(lat[:, :1], feats, n, secs)
