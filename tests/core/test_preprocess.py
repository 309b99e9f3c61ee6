"""Preprocessing of talking-face footage into training shards (letstalk_core.data)."""
from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from letstalk_core.audio.features import SpeechEncoder
from letstalk_core.autoencoder.checkpoint import save_dcae
from letstalk_core.autoencoder.dc_ae import encode_frames
from letstalk_core.data.preprocess import (
    add_preprocess_command,
    load_preprocess_models,
    preprocess_folder,
    preprocess_video,
)
from letstalk_core.data.shards import (
    ShardInfo,
    read_index,
    read_shard,
    scan_shards,
    write_index,
    write_shard,
)
from letstalk_core.face.crop import (
    HaarDetector,
    NoDetector,
    OnnxDetector,
    crop_and_resize,
    crop_box_for_video,
    make_detector,
)
from letstalk_core.families.letstalk.checkpoint import save_checkpoint
from letstalk_core.io.audio_file import load_audio
from letstalk_core.io.video import VideoWriter, read_video_frames
from tests.core.helpers import perturb, tiny_parts

RATE = 16000
FACE = (30, 10, 46, 26)  # x0, y0, x1, y1 of the bright square in the 64x48 frames


def _frames(n: int, levels=None) -> np.ndarray:
    """n frames 64x48: dark background with a bright square 'face' (its shade changes a little per frame);
    with ``levels`` each frame is a uniform grey of that level instead."""
    out = np.zeros((n, 48, 64, 3), np.uint8)
    for k in range(n):
        if levels is not None:
            out[k] = levels[k]
        else:
            out[k] = 30
            x0, y0, x1, y1 = FACE
            out[k, y0:y1, x0:x1] = (200 + k % 40, 170, 150)
    return out


def _video(path: Path, *, seconds: float = 1.3, fps: int = 25, frames: np.ndarray | None = None,
           audio: bool = True, freq: float = 220.0) -> Path:
    n_samples = round(seconds * RATE)
    t = torch.arange(n_samples) / RATE
    wave = (0.3 * torch.sin(2 * math.pi * freq * t))[None]
    if frames is None:
        frames = _frames(math.ceil(seconds * fps))
    kwargs = dict(audio=wave, audio_rate=RATE) if audio else {}
    with VideoWriter(path, fps, **kwargs) as out:
        out.write(frames)
    return path


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    cfg, _, dcae = tiny_parts()
    dcae = perturb(dcae, std=0.05, seed=1)  # make the random DC-AE non-trivial
    return cfg, dcae, SpeechEncoder(cfg.speech_encoder)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return _video(tmp_path_factory.mktemp("videos") / "clip.mp4")


class FakeDetector:
    name = "fake"

    def __init__(self, box):
        self.box, self.calls = box, 0

    def detect(self, frame):
        assert frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
        self.calls += 1
        return [(0.0, 0.0, 4.0, 4.0, 0.9), (*map(float, self.box), 0.99)]  # the larger one must win


def test_shard_matches_direct_encoding(parts, clip, tmp_path):
    cfg, dcae, speech = parts
    info = preprocess_video(clip, tmp_path, config=cfg, dcae=dcae, speech_encoder=speech, detector=NoDetector(),
                            keep_frames=True)
    waveform, rate = load_audio(clip)
    n = math.ceil(waveform.shape[1] / rate * 25)
    assert n == 33 and info.frames == n and info.name == "clip.safetensors"
    shard = read_shard(tmp_path / "clip.safetensors", frames=True)
    # NoDetector: the largest centred square of the 64x48 frame.
    assert shard.metadata["crop_box"] == [8, 0, 56, 48]
    frames = read_video_frames(clip)
    assert frames.shape[0] == n  # 25 fps source at 25 fps: one to one
    cropped = crop_and_resize(frames, (8, 0, 56, 48), 32)
    expected = encode_frames(dcae, cropped, chunk_size=8).half()
    assert shard.latents.dtype == torch.float16 and shard.latents.shape == (n, 8, 4, 4)
    torch.testing.assert_close(shard.latents.float(), expected.float(), atol=1e-3, rtol=2e-3)  # fp16 ulp
    assert shard.audio.shape == (n, 1, 16)
    assert torch.equal(shard.audio, speech.encode(waveform, rate, 25.0))
    assert shard.frames.shape == (n, 32, 32, 3) and shard.frames.dtype == torch.uint8
    assert (shard.frames.float() - (cropped.permute(0, 2, 3, 1) + 1) * 127.5).abs().max() <= 0.5 + 1e-3
    assert shard.config == cfg and shard.fps == 25.0
    # a clip of a shard reads only its rows
    part = read_shard(tmp_path / "clip.safetensors", start=5, stop=9)
    assert torch.equal(part.latents, shard.latents[5:9]) and part.frames is None


def test_resume_skips_identical_shard(parts, clip, tmp_path):
    cfg, dcae, speech = parts
    kw = dict(config=cfg, dcae=dcae, speech_encoder=speech, detector=NoDetector())
    preprocess_video(clip, tmp_path, **kw)
    path = tmp_path / "clip.safetensors"
    stamp = path.stat().st_mtime_ns
    again = preprocess_video(clip, tmp_path, **kw)
    assert path.stat().st_mtime_ns == stamp and again.frames == 33
    preprocess_video(clip, tmp_path, **kw, keep_frames=True)  # frames now asked for: redone
    assert read_shard(path, frames=True).frames is not None


def test_fake_detector_places_the_crop(parts, clip, tmp_path):
    cfg, dcae, speech = parts
    det = FakeDetector(FACE)
    preprocess_video(clip, tmp_path, config=cfg, dcae=dcae, speech_encoder=speech, detector=det)
    assert det.calls == 16
    box = read_shard(tmp_path / "clip.safetensors").metadata["crop_box"]
    # 16x16 face centred at (38, 18), enlarged 1.6x to 26 px (rounded): shifted down to stay inside the frame.
    assert box == [25, 5, 51, 31]


def test_crop_box_rules():
    # median over frames, largest box per frame
    dets = [[(10, 10, 20, 20, 1.0)], [(12, 10, 22, 20, 1.0), (0, 0, 2, 2, 1.0)], [], [(14, 10, 24, 20, 1.0)]]
    assert crop_box_for_video(dets, (100, 80), scale=1.0) == (12, 10, 22, 20)
    # near the edge: shifted inside, not shrunk
    assert crop_box_for_video([[(0, 0, 20, 20, 1)]], (100, 80), scale=2.0) == (0, 0, 40, 40)
    # larger than the frame: shrunk to the short side
    assert crop_box_for_video([[(0, 0, 100, 80, 1)]], (100, 80)) == (10, 0, 90, 80)
    with pytest.raises(ValueError, match="no face.*'somewhere.mp4'"):
        crop_box_for_video([[], []], (100, 80), source="'somewhere.mp4'")


def test_no_face_found_names_the_file(parts, clip, tmp_path):
    cfg, dcae, speech = parts

    class Blind:
        def detect(self, frame):
            return []

    with pytest.raises(ValueError, match="clip.mp4"):
        preprocess_video(clip, tmp_path, config=cfg, dcae=dcae, speech_encoder=speech, detector=Blind())


def test_50fps_source_is_resampled_to_25(parts, tmp_path):
    cfg, dcae, speech = parts
    levels = [20 + 3 * k for k in range(66)]
    src = _video(tmp_path / "fast.mp4", fps=50, frames=_frames(66, levels))
    info = preprocess_video(src, tmp_path / "out", config=cfg, dcae=dcae, speech_encoder=speech,
                            detector=NoDetector(), keep_frames=True)
    assert info.frames == 33
    shade = read_shard(tmp_path / "out" / "fast.safetensors", frames=True).frames.float().mean(dim=(1, 2, 3))
    source_index = ((shade - 20) / 3).round().long()
    assert source_index.tolist() == [2 * i for i in range(33)]


def test_length_mismatch_and_missing_audio(parts, tmp_path):
    cfg, dcae, speech = parts
    kw = dict(config=cfg, dcae=dcae, speech_encoder=speech, detector=NoDetector())
    short = _video(tmp_path / "short.mp4", frames=_frames(20))
    with pytest.raises(ValueError, match="do not match"):
        preprocess_video(short, tmp_path / "out", **kw)
    assert not list((tmp_path / "out").glob("*.safetensors*"))
    one_short = _video(tmp_path / "one_short.mp4", frames=_frames(32))  # padded with its last frame
    assert preprocess_video(one_short, tmp_path / "out", **kw).frames == 33
    mute = _video(tmp_path / "mute.mp4", audio=False)
    with pytest.raises(ValueError, match="no audio track"):
        preprocess_video(mute, tmp_path / "out", **kw)


def test_folder_workers_and_cli(parts, tmp_path):
    cfg, dcae, _ = parts
    videos = tmp_path / "videos"
    videos.mkdir()
    _video(videos / "a.mp4", seconds=0.5)
    _video(videos / "b.mp4", seconds=0.3, freq=330.0)
    (videos / "notes.txt").write_text("not a video")
    config_path = tmp_path / "config.json"
    config_path.write_text(cfg.to_json())
    dcae_path = save_dcae(dcae, cfg.dcae, tmp_path / "dcae.safetensors")
    common = dict(checkpoint_or_config=config_path, dcae_path=dcae_path, detector_spec="none")
    one = preprocess_folder([videos], tmp_path / "w1", workers=1, **common)
    two = preprocess_folder([videos], tmp_path / "w2", workers=2, mp_context="fork", **common)  # spawn: slower start
    assert [i.name for i in one] == ["a.safetensors", "b.safetensors"] and one == two
    for name in ("a", "b"):
        s1, s2 = (read_shard(tmp_path / d / f"{name}.safetensors") for d in ("w1", "w2"))
        # one torch thread per worker vs two here: the same up to float rounding (fp16 storage)
        torch.testing.assert_close(s1.latents.float(), s2.latents.float(), atol=1e-3, rtol=2e-3)
        assert torch.equal(s1.audio, s2.audio)
    index = read_index(tmp_path / "w1")
    assert [(i.name, i.frames) for i in index] == [("a.safetensors", 13), ("b.safetensors", 8)]

    # the checkpoint route (bundled DC-AE) gives the same model
    ckpt = save_checkpoint(tmp_path / "model.safetensors", cfg, tiny_parts()[1], dcae=dcae)
    cfg2, dcae2, _ = load_preprocess_models(ckpt)
    assert cfg2 == cfg and all(torch.equal(a, b) for a, b in zip(dcae.state_dict().values(), dcae2.state_dict().values()))

    # CLI
    parser = argparse.ArgumentParser()
    add_preprocess_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["preprocess", str(videos / "a.mp4"), "--out", str(tmp_path / "cli"),
                              "--checkpoint", str(ckpt), "--keep-frames"])
    assert args.func(args) == 0
    assert [i.name for i in read_index(tmp_path / "cli")] == ["a.safetensors"]
    assert read_index(tmp_path / "cli")[0].has_frames


def test_index_refuses_mixed_shards(tmp_path):
    meta = dict(source="x.mp4", fps=25.0, dcae_fingerprint="abc", speech_encoder_config="{}", letstalk_config="{}")
    write_shard(tmp_path / "a.safetensors", latents=torch.zeros(3, 8, 4, 4), audio=torch.zeros(3, 1, 16), metadata=meta)
    write_shard(tmp_path / "b.safetensors", latents=torch.zeros(2, 8, 8, 8), audio=torch.zeros(2, 1, 16), metadata=meta)
    with pytest.raises(ValueError, match="latent shape"):
        write_index(tmp_path, scan_shards(tmp_path))
    a = ShardInfo("a.safetensors", 3, 25.0, (8, 4, 4), (1, 16), False, "c", "abc")
    for change in (dict(fps=30.0), dict(audio_shape=(1, 80)), dict(config_hash="d"), dict(dcae_fingerprint="e")):
        b = ShardInfo(**{**a.to_dict(), "name": "b.safetensors", "latent_shape": (8, 4, 4), "audio_shape": (1, 16),
                         **change})
        with pytest.raises(ValueError, match="disagree"):
            write_index(tmp_path, [a, b])
    write_index(tmp_path, [a])
    assert read_index(tmp_path) == [a]


def test_detector_specs_and_missing_packages():
    assert isinstance(make_detector("none"), NoDetector)
    with pytest.raises(ValueError, match="none, haar or onnx"):
        make_detector("retina")
    if importlib.util.find_spec("cv2") is None:
        with pytest.raises(ImportError, match="pip install opencv-python-headless"):
            HaarDetector()
        with pytest.raises(ImportError, match="opencv"):
            make_detector("haar")
    if importlib.util.find_spec("onnxruntime") is None:
        with pytest.raises(ImportError, match="pip install onnxruntime"):
            make_detector("onnx:/nowhere/model.onnx")


def test_onnx_detector_contract_with_a_fake_session():
    class Input:
        name = "images"

    class Session:
        def __init__(self, out):
            self.out, self.seen = out, None

        def get_inputs(self):
            return [Input()]

        def run(self, names, feeds):
            self.seen = feeds["images"]
            return [self.out]

    # 200x100 frame letterboxed into 64x64: scale 0.32; a box in input pixels maps back divided by it.
    session = Session(np.array([[[8.0, 4.0, 24.0, 20.0, 0.9], [0, 0, 1, 1, 0.1]]], np.float32))
    det = OnnxDetector("model.onnx", input_size=64, session=session)
    frame = np.full((100, 200, 3), 255, np.uint8)
    boxes = det.detect(frame)
    assert session.seen.shape == (1, 3, 64, 64) and session.seen.dtype == np.float32
    assert session.seen[0, :, :32].min() == pytest.approx(1.0) and session.seen[0, :, 33:].max() == 0.0
    assert len(boxes) == 1 and boxes[0] == pytest.approx((25.0, 12.5, 75.0, 62.5, 0.9), abs=1e-4)
    with pytest.raises(ValueError, match="expected \\[N, 5\\]"):
        OnnxDetector("m.onnx", input_size=64, session=Session(np.zeros((3, 4), np.float32))).detect(frame)
