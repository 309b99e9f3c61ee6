"""`letstalk generate` end to end: a checkpoint saved from a tiny random model → an mp4 whose frame
count is exactly ceil(seconds × fps) and whose audio track matches the input's duration; resume;
clear errors for bad files."""
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from letstalk_core.cli import main
from letstalk_core.families.letstalk.checkpoint import save_checkpoint
from letstalk_core.io.audio_file import save_wav
from letstalk_core.io.image import load_image
from letstalk_core.io.video import probe_video, read_video_frames
from tests.core.helpers import assert_same_video, portrait, speech_like, tiny_parts


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


@pytest.mark.parametrize("native_bf16", ["0", "1"])  # --dtype auto picks fp32, then bf16, whatever this CPU is
def test_resume_dir_gives_the_same_video(files, native_bf16, monkeypatch):
    monkeypatch.setenv("LETSTALK_NATIVE_BF16", native_bf16)
    d, ckpt = files
    d = d / f"bf16_{native_bf16}"
    d.mkdir()
    for name in ("face.png", "speech.wav"):
        (d / name).write_bytes((files[0] / name).read_bytes())
    full = d / "full.mp4"
    assert _generate(d, ckpt, full, "--resume-dir", str(d / "run"), "--keep-resume-dir") == 0
    state = d / "run" / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        assert f.metadata()["next_clip"] == "10"  # 58 frames in clips of 8 sharing 2 (the default: a quarter of a clip)
    # simulate an interruption after clip 2: rewind the state and drop the later clip files
    from letstalk_core.loop import GenerationState
    full_state = GenerationState.load(state)
    import numpy as np
    originals = [np.load(d / "run" / f"clip_{i:05d}.npy") for i in range(10)]
    for i in range(2, 10):
        (d / "run" / f"clip_{i:05d}.npy").unlink()
    last = torch.from_numpy(np.load(d / "run" / "clip_00001.npy")).float()
    assert last.shape == (6, 32, 32, 3)  # a clip's own frames: 8 less the 2 it hands to the next
    # the memory after clip 1 is rebuilt by rerunning clips 0-1 without the store
    from letstalk_core.families.letstalk.generator import RECOMMENDED_MEMORY_ANCHOR
    from letstalk_core.families.letstalk.loading import load_generator
    from letstalk_core.io.audio_file import load_audio
    from letstalk_core.loop import GenerationSettings, recommended_overlap
    gen = load_generator(ckpt, device="cpu", dtype="auto")  # what the CLI's --dtype auto picked
    assert gen.dtype == (torch.bfloat16 if native_bf16 == "1" else torch.float32)
    wave, rate = load_audio(d / "speech.wav")
    prepared = gen.prepare(load_image(d / "face.png"), wave, rate)
    settings = GenerationSettings(steps=2, overlap=recommended_overlap(8), memory_anchor=RECOMMENDED_MEMORY_ANCHOR)
    it = gen.iter_clips(prepared, settings)
    next(it)
    _, _, after_clip1 = next(it)
    assert after_clip1.fingerprint == full_state.fingerprint
    after_clip1.save(state)
    resumed = d / "resumed.mp4"
    assert _generate(d, ckpt, resumed, "--resume-dir", str(d / "run"), "--keep-resume-dir") == 0
    assert after_clip1.tail is not None  # resumed in the middle of a crossfade
    for i in range(10):  # the regenerated clips are bit-identical to the uninterrupted run's
        assert np.array_equal(np.load(d / "run" / f"clip_{i:05d}.npy"), originals[i])
    assert read_video_frames(full).shape == (58, 3, 32, 32)
    assert_same_video(full, resumed)  # the encoder's input is identical (the clips above, bit for bit)


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


def _short(d, seconds=0.6, name="short.wav", wave=None):
    path = d / name
    save_wav(path, speech_like(seconds, rate=16000) if wave is None else wave, 16000)
    return path


def _run(d, ckpt, out, audio, *extra):
    return main(["generate", "--checkpoint", str(ckpt), "--image", str(d / "face.png"), "--audio", str(audio),
                 "--out", str(out), "--device", "cpu", *extra])


def test_resume_dir_is_removed_after_a_complete_run_unless_kept(files, tmp_path, capsys):
    d, ckpt = files
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # a file the store did not write stays
    assert _run(d, ckpt, tmp_path / "v.mp4", _short(tmp_path), "--steps", "1", "--resume-dir", str(run)) == 0
    err = capsys.readouterr().err
    assert "removed the resume clips" in err and sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert _run(d, ckpt, tmp_path / "v.mp4", _short(tmp_path), "--steps", "1", "--resume-dir", str(tmp_path / "r2"),
                "--keep-resume-dir") == 0
    assert "can be deleted" in capsys.readouterr().err and (tmp_path / "r2" / "state.safetensors").is_file()


def test_steps_default_to_the_checkpoints_recorded_recipe(files, tmp_path, capsys):
    from letstalk_core.families.letstalk.checkpoint import recipe_metadata
    from tests.core.helpers import tiny_parts

    d, _ = files
    cfg, model, dcae = tiny_parts()
    plain = save_checkpoint(tmp_path / "plain.safetensors", cfg, model, dcae=dcae)
    recorded = save_checkpoint(tmp_path / "rec.safetensors", cfg, model, dcae=dcae,
                               extra_metadata=recipe_metadata(cfg, steps=3))
    audio = _short(tmp_path, 0.3)
    assert _run(d, recorded, tmp_path / "a.mp4", audio) == 0
    assert f"3 {'euler' if cfg.diffusion.objective == 'flow' else 'ddim'} steps (recorded in the checkpoint)" \
        in capsys.readouterr().err
    assert _run(d, plain, tmp_path / "b.mp4", audio, "--steps", "1") == 0
    assert "1 " in capsys.readouterr().err
    from letstalk_core.families.letstalk.checkpoint import OBJECTIVE_RECIPES, inference_recipe

    r = inference_recipe(cfg, {})
    assert r.steps == OBJECTIVE_RECIPES[cfg.diffusion.objective]["steps"] and "default for" in r.source


def test_demo_model_records_its_recipe_and_info_summarises(capsys):
    assert main(["info", "demo"]) == 0
    text = capsys.readouterr().out
    assert "sampling: 10 euler steps (recorded in the checkpoint)" in text
    assert "training: step 4000" in text and "320 procedural samples" in text
    assert "this machine: --device auto → " in text and "--dtype auto → " in text  # what auto picks, and why
    assert max(len(line) for line in text.splitlines()) < 200  # no one-line JSON dump
    assert main(["info", "demo", "--json"]) == 0
    import json

    full = json.loads(capsys.readouterr().out)
    assert full["inference"] == {"sampler": "euler", "steps": 10, "source": "recorded in the checkpoint"}
    assert full["metadata"]["letstalk_training"]["train_config"]["lr"] > 0
    assert full["metadata"]["letstalk_config"]["video"]["fps"] == 25
    assert full["machine"]["dtype"] in ("fp32", "bf16") and full["machine"]["why"]


def test_every_option_has_help_and_shows_its_default(capsys):
    import argparse

    from letstalk_core.cli import build_parser

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sp in action.choices.items():
                    yield from walk(sp, f"{name} {sub}")
            elif action.dest != "help":
                yield name, action

    missing = [f"{n} {a.option_strings or a.dest}" for n, a in walk(build_parser(), "letstalk") if not a.help]
    assert not missing, missing
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "noise seed" in text and "(default: 0)" in text and "(default: 18)" in text and "--threads" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_unwritable_outputs_fail_before_any_work_and_name_the_path(files, tmp_path, capsys):
    d, ckpt = files
    missing_audio = tmp_path / "not-read-yet.wav"  # the output is checked before the inputs are read
    assert _run(d, ckpt, "/proc/letstalk.mp4", missing_audio) == 2
    err = capsys.readouterr().err
    assert "Cannot write the output video '/proc/letstalk.mp4'" in err and "does not accept new files" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _run(d, ckpt, blocker / "v.mp4", missing_audio) == 2
    err = capsys.readouterr().err
    assert str(blocker / "v.mp4") in err and ("file, not a folder" in err or "is a file" in err)
    assert _run(d, ckpt, tmp_path, missing_audio) == 2
    assert "is a folder" in capsys.readouterr().err
    assert _run(d, ckpt, tmp_path / "ok.mp4", missing_audio, "--resume-dir", "/proc/letstalk-resume") == 2
    err = capsys.readouterr().err
    assert "resume folder '/proc/letstalk-resume'" in err
    assert not (tmp_path / "ok.mp4").exists()  # the probe leaves nothing behind


def test_silent_audio_is_a_warning_not_an_error(files, tmp_path, capsys):
    d, ckpt = files
    silent = _short(tmp_path, wave=torch.zeros(1, 8000), name="silence.wav")
    assert _run(d, ckpt, tmp_path / "s.mp4", silent, "--steps", "1") == 0
    err = capsys.readouterr().err
    assert "warning: The audio 'silence.wav' is silent" in err and "listening" in err
    assert probe_video(tmp_path / "s.mp4").frame_count == math.ceil(0.5 * 25)


def _mp3(path, seconds, rate=16000):
    import av
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * math.pi * 220 * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libmp3lame", rate=rate)
        s.layout = "mono"
        for i in range(0, len(x), 1152):
            f = av.AudioFrame.from_ndarray(x[None, i:i + 1152], format="flt", layout="mono")
            f.sample_rate = rate
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def test_truncated_audio_warns_with_both_lengths_and_corrupt_audio_is_an_error(files, tmp_path, capsys):
    from letstalk_core.io.audio_file import read_audio

    d, ckpt = files
    full = _mp3(tmp_path / "full.mp3", 17.8)
    assert read_audio(full).shortfall() is None
    data = full.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[:3000])
    audio = read_audio(cut)
    msg = audio.shortfall()
    assert msg and "17.80 s" in msg and f"{audio.seconds:.2f} s" in msg and "truncated" in msg
    assert _run(d, ckpt, tmp_path / "c.mp4", cut, "--steps", "1") == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "header declares 17.80 s" in err
    broken = bytearray(data)
    broken[20000:] = bytes(len(data) - 20000)  # zeros where the frames should be: the decoder stops
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(bytes(broken))
    assert _run(d, ckpt, tmp_path / "b.mp4", bad, "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "Cannot decode the audio" in err and "damaged" in err
    assert not (tmp_path / "b.mp4").exists()


def test_threads_option_sizes_the_pool_and_waits_passively(files, tmp_path):
    import os
    import subprocess
    import sys

    d, ckpt = files
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    code = ("import os, sys; from letstalk_core.cli import main; rc = main(sys.argv[1:]); "
            "import torch; print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'THREADS', torch.get_num_threads()); "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "generate", "--checkpoint", str(ckpt), "--image", str(d / "face.png"),
                          "--audio", str(_short(tmp_path, 0.3)), "--out", str(tmp_path / "t.mp4"), "--steps", "1",
                          "--threads", "1"], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert "POLICY PASSIVE THREADS 1" in out.stdout and ", 1 threads" in out.stderr
