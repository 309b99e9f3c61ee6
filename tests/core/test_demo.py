"""The demo command and the shipped demo model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from letstalk_core.cli import main
from letstalk_core.demo import DEMO_MODEL, TRAINING_KEY, stamp_provenance
from letstalk_core.io.video import probe_video


def test_demo_command_writes_a_talking_video(tmp_path, capsys):
    from letstalk_core.autoencoder.dc_ae import DCAE
    from letstalk_core.families.letstalk.checkpoint import save_checkpoint
    from letstalk_core.families.letstalk.config import get_preset
    from letstalk_core.families.letstalk.transformer import LetsTalkTransformer

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", cfg, LetsTalkTransformer(cfg), dcae=DCAE(cfg.dcae))
    rc = main(["demo", "--checkpoint", str(ckpt), "--seconds", "2.5", "--steps", "2", "--out", str(tmp_path / "d" / "demo.mp4")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "d").glob("demo_input*"))[:1] == ["demo_input.json"]  # inputs beside it
    info = probe_video(tmp_path / "d" / "demo.mp4")
    assert info.frame_count == 63  # ceil(2.5 * 25)
    assert info.audio_seconds == pytest.approx(2.5, abs=0.03)
    out = capsys.readouterr().out
    assert "lip sync" in out and str((tmp_path / "d" / "demo.mp4").resolve()) in out


def test_stamp_provenance_keeps_tensors_and_adds_recipe(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = tmp_path / "a.safetensors"
    save_file({"dit.w": torch.arange(4.0)}, str(src), metadata={TRAINING_KEY: json.dumps({"step": 5}), "x": "y"})
    dst = stamp_provenance(src, tmp_path / "b.safetensors", {"commands": ["letstalk synth ..."]})
    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("dit.w"), torch.arange(4.0))
    assert meta["x"] == "y"
    assert json.loads(meta[TRAINING_KEY]) == {"step": 5, "provenance": {"commands": ["letstalk synth ..."]}}


def test_shipped_demo_model_is_complete():
    """The committed demo model: under 50 MB with its DC-AE, loadable, and it records how it was made."""
    from letstalk_core.families.letstalk.checkpoint import read_checkpoint

    assert DEMO_MODEL.is_file(), f"{DEMO_MODEL} is missing"
    assert DEMO_MODEL.stat().st_size < 50 * 2**20
    config, groups, meta = read_checkpoint(DEMO_MODEL)
    assert groups["dcae"], "the demo model must bundle its DC-AE"
    recipe = json.loads(meta[TRAINING_KEY])
    assert recipe["step"] > 0 and recipe["provenance"]["commands"]
    assert recipe["provenance"]["train_data"]["seed"] != recipe["provenance"]["heldout_data"]["seed"]
    assert config.speech_encoder.kind == "mel"


def test_the_wheel_ships_the_demo_model(tmp_path):
    """`pip install .` or a wheel gives a package whose `letstalk demo` finds its model: it is package
    data (pyproject [tool.setuptools.package-data]), located from the installed package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo, src = Path(__file__).resolve().parents[2], tmp_path / "src"  # built from a copy: no build/ in the clone
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    shutil.copytree(repo / "letstalk_core", src / "letstalk_core", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo("letstalk_core/models/letstalk-demo.safetensors")
    assert info.file_size == DEMO_MODEL.stat().st_size
    assert DEMO_MODEL.parent.parent == Path(__import__("letstalk_core").__file__).parent


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_out_is_the_video_file_in_every_command(tmp_path, capsys, command):
    """`--out x.mp4` made a folder named x.mp4 in the demo and a file in generate: now it is the video file in both,
    and a folder (or a name without a video extension) is refused before any work, naming the file to give."""
    folder = tmp_path / "existing"
    folder.mkdir()
    extra = ["--checkpoint", "demo", "--image", "none.png", "--audio", "none.wav"] if command == "generate" else []
    for out, expected in ((folder, "is a folder"), (tmp_path / "videos", "has no video extension")):
        assert main([command, *extra, "--out", str(out)]) != 0
        err = capsys.readouterr().err
        assert expected in err and "--out is the video file" in err, err
    assert not (tmp_path / "videos").exists() and list(folder.iterdir()) == []


def test_folder_outputs_refuse_a_file_name(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "x.mp4"), "--count", "1", "--seconds", "1"]) != 0
    err = capsys.readouterr().err
    assert "looks like a file name" in err and not (tmp_path / "x.mp4").exists(), err
