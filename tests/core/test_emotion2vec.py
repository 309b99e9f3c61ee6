"""emotion2vec encoder and MEMO's emotion labels against FunASR/MEMO fixtures, plus the loader on bad input.

Fixtures: ``scripts/make_emotion2vec_fixtures.py`` (funasr==1.0.27 in a separate venv) — a tiny FunASR
``Emotion2vec`` with every block type, a variant covering the other code paths, its ``extract_features``
outputs, label tracks from MEMO's ``extract_audio_emotion_labels`` logic, and the full-size manifest."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from letstalk_core.audio.emotion import (
    EMOTION_CLASSES,
    NULL_EMOTION,
    clip_emotion,
    clip_emotions,
    emotion_choice,
    emotion_labels,
    emotion_windows,
    parse_emotion_choice,
)
from letstalk_core.audio.emotion2vec import (
    UNUSED_PREFIXES,
    Emotion2vecConfig,
    Emotion2vecEncoder,
    UnsafeCheckpointError,
    emotion2vec_state_dict,
    infer_emotion2vec_config,
    load_emotion2vec,
    parse_feature_encoder_spec,
    read_checkpoint_file,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "emotion2vec"
TOL = 2e-5  # measured max |Δ| 1.7e-6 on outputs of scale ~5


@pytest.fixture(scope="module")
def io():
    return load_file(FIX / "io.safetensors")


@pytest.fixture(scope="module")
def tiny():
    return load_emotion2vec(FIX / "tiny" / "model.pt")


class _MemoStyleClassifier(torch.nn.Module):
    """MEMO's AudioEmotionClassifierModel layout (fc1..fc3, softmax) at the tiny encoder's width 64."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(OrderedDict([
            ("fc1", torch.nn.Linear(64, 128)), ("relu1", torch.nn.ReLU()),
            ("fc2", torch.nn.Linear(128, 128)), ("relu2", torch.nn.ReLU()),
            ("fc3", torch.nn.Linear(128, 9))]))

    def forward(self, x):
        return torch.softmax(self.layers(x), dim=-1)


def _features(model, wave):
    return model.extract_features(F.layer_norm(wave, wave.shape).view(1, -1))[0]


# ------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name", ["s0_7", "s2_0", "s3_0"])
def test_features_equal_funasr(tiny, io, name):
    x = _features(tiny, io[f"wave.{name}"])
    ref = io[f"x.{name}"]
    assert x.shape == ref.shape and ref.abs().max() > 1.0
    assert (x - ref).abs().max() < TOL
    assert (x.mean(0) - io[f"mean.{name}"]).abs().max() < TOL


def test_variant_paths_equal_funasr(io):
    """group-norm extractor, pre-LN pos conv, even kernel, per-layer ALiBi, 6 heads, pre-LN blocks."""
    model = load_emotion2vec(FIX / "variant")
    cfg = model.config
    assert (cfg.extractor_mode, cfg.conv_pos_pre_ln, cfg.conv_pos_kernel % 2, cfg.learned_alibi_scale_per_layer,
            cfg.num_heads, cfg.layer_norm_first) == ("default", True, 0, True, 6, True)
    x = _features(model, io["wave.s2_0"])
    assert (x - io["variant.x.s2_0"]).abs().max() < TOL


@pytest.mark.parametrize("name", ["l5_3", "l2_5", "l0_7"])
def test_labels_equal_memo(tiny, io, name):
    clf = _MemoStyleClassifier()
    clf.load_state_dict({k[len("classifier."):]: v for k, v in io.items() if k.startswith("classifier.")})
    ref = io[f"labels.{name}"]
    labels = emotion_labels(io[f"label_wave.{name}"], tiny, clf, ref.shape[0])
    assert labels.dtype == torch.long and torch.equal(labels, ref)
    assert clip_emotions(labels) == io[f"clip_labels.{name}"].tolist()
    if name == "l5_3":
        assert len(set(labels.tolist())) >= 3  # the fixture's labels really vary


def test_half_precision_runs_close(tiny, io):
    wave = io["wave.s2_0"]
    ref = io["x.s2_0"]
    x = _features(tiny.to(torch.bfloat16), wave)
    tiny.float()
    assert x.dtype == torch.bfloat16 and (x.float() - ref).abs().max() < 0.25


# ------------------------------------------------------------------------------- config, structure


def test_config_from_yaml_equals_inferred():
    for name in ("tiny", "variant"):
        sd = emotion2vec_state_dict(read_checkpoint_file(FIX / name / "model.pt")[0])
        assert infer_emotion2vec_config(sd) == Emotion2vecConfig.from_yaml(FIX / name / "config.yaml")


def test_full_size_structure_matches_funasr_manifest():
    manifest = json.loads((FIX / "manifest.json").read_text())
    cfg = Emotion2vecConfig.from_funasr(manifest["config"])
    assert cfg == Emotion2vecConfig()  # the defaults are emotion2vec_plus_large's
    with torch.device("meta"):
        model = Emotion2vecEncoder(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v for k, v in manifest["tensors"].items() if not k.startswith(tuple(manifest["unused_prefixes"]))}
    assert tuple(manifest["unused_prefixes"]) == UNUSED_PREFIXES
    assert ours == theirs
    n = sum(v.numel() for v in model.parameters())
    assert n == manifest["parameters_used"] == 313_285_648


def test_feature_encoder_spec_is_parsed_not_evaluated():
    assert parse_feature_encoder_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == \
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    with pytest.raises(ValueError, match="feature_encoder_spec"):
        parse_feature_encoder_spec("__import__('os').system('true')")


# --------------------------------------------------------------------------------------- loader


def test_unused_tensors_dropped_explicitly():
    raw, refused = read_checkpoint_file(FIX / "tiny" / "model.pt")
    assert refused == []
    dropped = sorted(k for k in raw if k not in emotion2vec_state_dict(raw))
    assert dropped and all(k.startswith(UNUSED_PREFIXES) for k in dropped)
    assert {"proj.weight", "proj.bias"} <= set(dropped)


def test_safetensors_conversion_and_fp16(tmp_path, io, tiny):
    raw, _ = read_checkpoint_file(FIX / "tiny" / "model.pt")
    save_file({k: v.half().contiguous() for k, v in raw.items()}, tmp_path / "emotion2vec_plus_large.safetensors")
    model = load_emotion2vec(tmp_path / "emotion2vec_plus_large.safetensors")  # config inferred
    assert model.config == tiny.config and model.dtype == torch.float32
    assert (_features(model, io["wave.s0_7"]) - io["x.s0_7"]).abs().max() < 0.05


def test_checkpoint_with_config_objects_reads_safely(tmp_path, io):
    raw = torch.load(FIX / "tiny" / "model.pt", weights_only=True)["model"]
    path = tmp_path / "model.pt"
    torch.save({"args": argparse.Namespace(lr=1.0), "cfg": {"note": "x"}, "model": raw}, path)
    sd, refused = read_checkpoint_file(path)
    assert "argparse.Namespace" in refused and set(sd) == set(raw)
    shutil.copy(FIX / "tiny" / "config.yaml", tmp_path / "config.yaml")
    assert (_features(load_emotion2vec(tmp_path), io["wave.s0_7"]) - io["x.s0_7"]).abs().max() < TOL


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    whole = tmp_path / "evil.pt"
    torch.save(_Evil(marker), whole)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*(os|posix)\.system.*refused, nothing was run"):
        load_emotion2vec(whole)
    nested = tmp_path / "nested.pt"
    raw = torch.load(FIX / "tiny" / "model.pt", weights_only=True)["model"]
    torch.save({"model": raw, "hook": _Evil(marker)}, nested)
    sd, refused = read_checkpoint_file(nested)
    assert set(sd) == set(raw) and any(r.endswith(".system") for r in refused)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ValueError, match="legacy.pt"):
        load_emotion2vec(legacy)
    assert not marker.exists()


def test_wrong_file_names_what_to_download(tmp_path):
    wav2vec2 = {"feature_extractor.conv_layers.0.conv.weight": torch.zeros(8, 1, 10),
                "encoder.pos_conv_embed.conv.weight": torch.zeros(8, 1, 3)}
    path = tmp_path / "wav2vec2-base-960h.safetensors"
    save_file(wav2vec2, path)
    with pytest.raises(ValueError, match=r"wav2vec2-base-960h\.safetensors.*not an emotion2vec.*wav2vec2.*"
                                         r"huggingface\.co/emotion2vec/emotion2vec_plus_large.*models/audio_encoders"):
        load_emotion2vec(path)


def test_truncated_file(tmp_path):
    data = (FIX / "tiny" / "model.pt").read_bytes()
    path = tmp_path / "emotion2vec_plus_large.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"emotion2vec_plus_large\.pt.*incomplete.*huggingface"):
        load_emotion2vec(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_emotion2vec(path)


def test_missing_and_misshaped_tensors(tmp_path):
    raw = torch.load(FIX / "tiny" / "model.pt", weights_only=True)["model"]
    cfg = Emotion2vecConfig.from_yaml(FIX / "tiny" / "config.yaml")
    del raw["blocks.1.mlp.fc2.weight"]
    with pytest.raises(ValueError, match=r"1 missing tensors.*blocks\.1\.mlp\.fc2\.weight.*emotion2vec_plus_large"):
        load_emotion2vec(raw, cfg)
    raw = torch.load(FIX / "tiny" / "model.pt", weights_only=True)["model"]
    with pytest.raises(ValueError, match="wrong shape"):
        load_emotion2vec(raw, Emotion2vecConfig())  # plus_large's shapes for a tiny file


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*models/audio_encoders"):
        load_emotion2vec(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="holds no model.pt"):
        load_emotion2vec(tmp_path)


# ------------------------------------------------------------------------------ labels and choice


def test_windows_follow_memo():
    sr = 16000
    assert emotion_windows(11200) == [(slice(None, 2 * sr), slice(None, sr)), (slice(-2 * sr, None), slice(-sr, None))]
    w = emotion_windows(5 * sr + 123)
    assert [x[1].start for x in w[1:-1]] == [sr, 2 * sr, 3 * sr, 4 * sr]
    assert w[1][0] == slice(0, 3 * sr)


def test_label_input_errors(tiny):
    clf = _MemoStyleClassifier()
    with pytest.raises(ValueError, match="too short"):
        emotion_labels(torch.zeros(300), tiny, clf, 4)
    with pytest.raises(ValueError, match="frames"):
        emotion_labels(torch.zeros(16000), tiny, clf, 0)
    with pytest.raises(ValueError, match="dimensions"):
        emotion_labels(torch.zeros(1, 16000), tiny, clf, 4)


def test_clip_emotion_is_the_mode():
    labels = torch.tensor([4, 4, 1, 1, 7, 7, 7, 2])
    assert clip_emotion(labels, 0, 4) == 1  # tie -> smallest, as torch.mode
    assert clip_emotion(labels, 4, 100) == 7
    assert clip_emotions(labels, 3) == [4, 7, 2] and clip_emotions(labels, 16) == [7]
    with pytest.raises(ValueError, match="holds no frame"):
        clip_emotion(labels, 8, 16)


def test_parse_emotion_choice():
    assert parse_emotion_choice("auto") is None and parse_emotion_choice(" AUTO ") is None
    assert [parse_emotion_choice(c) for c in EMOTION_CLASSES] == list(range(9))
    assert parse_emotion_choice("Happy") == 3 and parse_emotion_choice("8") == 8 and parse_emotion_choice(4) == 4
    assert parse_emotion_choice("none") == NULL_EMOTION == 9
    with pytest.raises(ValueError, match="Unknown emotion 'joyful'.*'auto'.*'happy'"):
        parse_emotion_choice("joyful")
    with pytest.raises(ValueError, match="out of range"):
        parse_emotion_choice(12)
    with pytest.raises(TypeError):
        parse_emotion_choice(True)


def test_auto_needs_the_encoder_file():
    with pytest.raises(ValueError, match=r"'auto'.*emotion2vec_plus_large.*models/audio_encoders.*fixed emotion"):
        emotion_choice("auto", None)
    assert emotion_choice("auto", "models/audio_encoders/emotion2vec_plus_large.pt") is None
    assert emotion_choice("sad") == 6
