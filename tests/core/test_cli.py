"""`letstalk generate` end to end: a checkpoint saved from a tiny random model → an mp4 whose frame
count is exactly ceil(seconds × fps) and whose audio track matches the input's duration; resume;
clear errors for bad files."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from letstalk_core.checkpoint import save_checkpoint
from letstalk_core.cli import main
from letstalk_core.io.audio_file import save_wav
from letstalk_core.io.image import load_image
from letstalk_core.io.video import probe_video, read_video_frames
from tests.core.helpers import portrait, speech_like, tiny_parts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg, model, dcae = tiny_parts()
    ckpt = save_checkpoint(d / "tiny.safetensors", cfg, model, dcae=dcae)
    from PIL import Image
    img = ((portrait(48).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(img).save(d / "face.png")
    save_wav(d / "speech.wav", speech_like(2.3, rate=44100, channels=2), 44100)
    return d, ckpt


def _generate(d, ckpt, out, *extra):
    return main(["generate", "--checkpoint", str(ckpt), "--image", str(d / "face.png"), "--audio", str(d / "speech.wav"),
                 "--out", str(out), "--steps", "2", "--device", "cpu", *extra])


def test_generate_writes_exact_frames_and_sound(files, capsys):
    d, ckpt = files
    out = d / "video.mp4"
    assert _generate(d, ckpt, out) == 0
    info = probe_video(out)
    assert info.frame_count == math.ceil(2.3 * 25) == 58
    assert info.has_audio and abs(info.audio_seconds - 2.3) < 1e-3
    assert (info.width, info.height) == (32, 32)
    assert str(out.resolve()) in capsys.readouterr().out


def test_resume_dir_gives_the_same_video(files):
    d, ckpt = files
    full = d / "full.mp4"
    assert _generate(d, ckpt, full, "--resume-dir", str(d / "run")) == 0
    state = d / "run" / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        assert f.metadata()["next_clip"] == "10"  # 58 frames in clips of 8 sharing 2 (the default: a quarter of a clip)
    # simulate an interruption after clip 2: rewind the state and drop the later clip files
    from letstalk_core.pipeline import GenerationState
    full_state = GenerationState.load(state)
    import numpy as np
    originals = [np.load(d / "run" / f"clip_{i:05d}.npy") for i in range(10)]
    for i in range(2, 10):
        (d / "run" / f"clip_{i:05d}.npy").unlink()
    last = torch.from_numpy(np.load(d / "run" / "clip_00001.npy")).float()
    assert last.shape == (6, 32, 32, 3)  # a clip's own frames: 8 less the 2 it hands to the next
    # the memory after clip 1 is rebuilt by rerunning clips 0-1 without the store
    from letstalk_core.loading import load_generator
    from letstalk_core.io.audio_file import load_audio
    from letstalk_core.pipeline import RECOMMENDED_MEMORY_ANCHOR, GenerationSettings, recommended_overlap
    gen = load_generator(ckpt, device="cpu")
    wave, rate = load_audio(d / "speech.wav")
    prepared = gen.prepare(load_image(d / "face.png"), wave, rate)
    settings = GenerationSettings(steps=2, overlap=recommended_overlap(8), memory_anchor=RECOMMENDED_MEMORY_ANCHOR)
    it = gen.iter_clips(prepared, settings)
    next(it)
    _, _, after_clip1 = next(it)
    assert after_clip1.fingerprint == full_state.fingerprint
    after_clip1.save(state)
    resumed = d / "resumed.mp4"
    assert _generate(d, ckpt, resumed, "--resume-dir", str(d / "run")) == 0
    assert after_clip1.tail is not None  # resumed in the middle of a crossfade
    for i in range(10):  # the regenerated clips are bit-identical to the uninterrupted run's
        assert np.array_equal(np.load(d / "run" / f"clip_{i:05d}.npy"), originals[i])
    a, b = read_video_frames(full), read_video_frames(resumed)
    assert a.shape == b.shape == (58, 3, 32, 32)
    assert torch.equal(a, b)  # identical encoder input gives an identical video


def test_missing_files_and_bad_checkpoints(files, tmp_path, capsys):
    d, ckpt = files
    assert main(["generate", "--checkpoint", str(tmp_path / "nope.safetensors"), "--image", "x", "--audio", "y", "--out", "z"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ckpt), "--image", str(d / "face.png"), "--audio", str(tmp_path / "a.wav"),
                 "--out", str(tmp_path / "o.mp4")]) == 2
    assert "not found" in capsys.readouterr().err

    tensors = load_file(str(ckpt))
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if k.startswith("dit.blocks.0.attn.qkv"))
    missing = dict(tensors)
    del missing[key]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    assert _generate(d, tmp_path / "missing.safetensors", tmp_path / "o.mp4") == 2
    err = capsys.readouterr().err
    assert "1 missing tensors" in err and "blocks.0.attn.qkv" in err

    bad = dict(tensors)
    bad[key] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    assert _generate(d, tmp_path / "shape.safetensors", tmp_path / "o.mp4") == 2
    err = capsys.readouterr().err
    assert "expected (192, 64), file has (3, 3)" in err

    save_file({"dit.x": torch.zeros(1)}, str(tmp_path / "nometa.safetensors"))
    assert _generate(d, tmp_path / "nometa.safetensors", tmp_path / "o.mp4") == 2
    assert "not a LetsTalk checkpoint" in capsys.readouterr().err


def test_init_and_info_and_unknown_preset(tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["init", "--preset", "tiny", "--out", str(out)]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "UNTRAINED" in text and "bundled: DC-AE yes" in text
    assert main(["init", "--preset", "letstalk-xxl", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "unknown preset 'letstalk-xxl'" in capsys.readouterr().err
