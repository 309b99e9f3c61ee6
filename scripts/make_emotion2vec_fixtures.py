"""Build the emotion2vec equivalence fixtures from FunASR's own code (run in a separate reference venv).

    python -m venv <reference venv>
    <reference venv>/bin/pip install torch==2.13.0          # the CPU build, first
    <reference venv>/bin/pip install funasr==1.0.27           # the version MEMO pins (pyproject.toml)
    OMP_NUM_THREADS=1 <reference venv>/bin/python scripts/make_emotion2vec_fixtures.py

Writes ``tests/fixtures/emotion2vec/``:

* ``tiny/model.pt`` + ``tiny/config.yaml``: FunASR ``Emotion2vec`` (funasr/models/emotion2vec/model.py) at
  tiny width/depth with every block type of emotion2vec_plus_large (layer-norm conv extractor, 2 grouped
  positional convs, 1 prenet + 2 main post-LN blocks, 10 extra tokens, per-head learned ALiBi scale, the
  pretraining decoder and the 9-way ``proj`` head that the published file also carries), random seeded
  weights with every zero/one-initialised tensor perturbed and one ALiBi scale negative (clamped to 0).
  Saved as ``{"model": state_dict}``.
* ``variant/``: the other code paths (group-norm extractor, pre-LN positional conv, even positional
  kernel, per-layer ALiBi scales, 6 heads (non power of two), pre-LN blocks, no decoder).
* ``io.safetensors``: random 16 kHz inputs (0.7 s, 2 s, 3 s), FunASR ``extract_features`` outputs ``x``
  and their time means; a tiny MEMO-structured classifier (``layers.fc1..fc3``, 64 → 9; MEMO's own
  ``AudioEmotionClassifierModel`` hard-codes 1024 inputs) and the label tracks/clip labels computed by
  the verbatim logic of MEMO's ``memo/utils/audio_utils.py::extract_audio_emotion_labels`` and
  ``inference.py`` + ``memo/pipelines/video_pipeline.py`` (``torch.mode`` over each 16-frame clip).
* ``manifest.json``: tensor names/shapes of FunASR's model built on the meta device from the
  emotion2vec_plus_large config reconstructed below (``PLUS_LARGE``), with the parameter count.

funasr imports torchaudio at import time (``funasr/utils/load_utils.py``) and torchaudio cannot load next
to a CPU torch here, so an empty ``torchaudio`` module is stubbed in ``sys.modules`` first; nothing used
below touches it.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

_ta = types.ModuleType("torchaudio")
for _sub in ("transforms", "compliance", "compliance.kaldi", "functional"):
    sys.modules["torchaudio." + _sub] = types.ModuleType("torchaudio." + _sub)
sys.modules["torchaudio"] = _ta

from funasr.models.emotion2vec.model import Emotion2vec
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "emotion2vec"
SR = 16000

# emotion2vec_plus_large's config.yaml as reconstructed: the published file could not be retrieved, so
# these are FunASR's emotion2vec config.yaml fields (emotion2vec_base's layout) with data2vec 2.0 large
# audio's sizes (fairseq examples/data2vec/config/v2/large_audio_only_task.yaml).
PLUS_LARGE = {
    "model": "Emotion2vec",
    "model_conf": {
        "loss_beta": 0.0, "loss_scale": None, "depth": 16, "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0, "num_heads": 16, "norm_eps": 1e-05, "norm_affine": True,
        "encoder_dropout": 0.1, "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "dropout_input": 0.0, "layerdrop": 0.0, "embed_dim": 1024, "mlp_ratio": 4.0, "layer_norm_first": False,
        "average_top_k_layers": 16, "end_of_block_targets": False, "clone_batch": 12,
        "layer_norm_target_layer": False, "batch_norm_target_layer": False, "instance_norm_target_layer": True,
        "instance_norm_targets": False, "layer_norm_targets": False, "ema_decay": 0.9997, "ema_same_dtype": True,
        "log_norms": True, "ema_end_decay": 1.0, "ema_anneal_end_step": 300000, "ema_encoder_only": False,
        "max_update": 600000, "extractor_mode": "layer_norm", "shared_decoder": None, "min_target_var": 0.1,
        "min_pred_var": 0.01, "supported_modality": "AUDIO", "mae_init": False, "seed": 1, "skip_ema": False,
        "cls_loss": 1.0, "recon_loss": 0.0, "d2v_loss": 1.0, "decoder_group": False, "normalize": True,
        "modalities": {"audio": {
            "type": "AUDIO", "prenet_depth": 8, "prenet_layerdrop": 0.0, "prenet_dropout": 0.1,
            "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 10,
            "init_extra_token_zero": True, "mask_noise_std": 0.01, "mask_prob_min": None, "mask_prob": 0.55,
            "inverse_mask": False, "mask_prob_adjust": 0.1, "keep_masked_pct": 0.0, "mask_length": 5,
            "add_masks": False, "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True,
            "mask_channel_prob": 0.0, "mask_channel_length": 64, "ema_local_encoder": False,
            "local_grad_mult": 1.0, "use_alibi_encoder": True, "alibi_scale": 1.0, "learned_alibi": False,
            "alibi_max_pos": None, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
            "learned_alibi_scale_per_layer": False, "num_alibi_heads": 16, "model_depth": 16,
            "decoder": {"decoder_dim": 768, "decoder_groups": 16, "decoder_kernel": 7, "decoder_layers": 4,
                        "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                        "decoder_residual": True, "projection_layers": 1, "projection_ratio": 2.0},
            "extractor_mode": "layer_norm",
            "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
            "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5, "conv_pos_pre_ln": False,
        }},
    },
}


def tiny_conf() -> dict:
    c = copy.deepcopy(PLUS_LARGE)
    m, a = c["model_conf"], c["model_conf"]["modalities"]["audio"]
    m.update(depth=2, num_heads=4, embed_dim=64, average_top_k_layers=2)
    a.update(prenet_depth=1, num_alibi_heads=4, model_depth=2, conv_pos_width=38, conv_pos_groups=4,
             conv_pos_depth=2,
             feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]")
    a["decoder"].update(decoder_dim=16, decoder_groups=4, decoder_layers=1)
    return c


def variant_conf() -> dict:
    c = tiny_conf()
    m, a = c["model_conf"], c["model_conf"]["modalities"]["audio"]
    m.update(num_heads=6, embed_dim=48, layer_norm_first=True)
    a.update(extractor_mode="default", conv_pos_pre_ln=True, conv_pos_width=8, conv_pos_depth=2,
             conv_pos_groups=4, num_alibi_heads=6, learned_alibi_scale_per_layer=True, num_extra_tokens=2,
             prenet_depth=1, model_depth=2, decoder=None,
             feature_encoder_spec="[(24, 10, 5)] + [(24, 3, 2)] * 4 + [(24,2,2)] + [(24,2,2)]")
    m["extractor_mode"] = "default"
    return c


def build(conf: dict, vocab_size: int, seed: int) -> Emotion2vec:
    torch.manual_seed(seed)
    model = Emotion2vec(model_conf=conf["model_conf"], vocab_size=vocab_size)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alibi_scale"):
                p.copy_(0.5 + torch.rand_like(p))
                p.view(-1)[1] = -0.3  # clamp_min(0) must zero this head
            elif name.endswith("extra_tokens"):
                p.copy_(torch.randn_like(p))
            elif p.ndim == 1:  # norm weights (ones) and biases (zeros)
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def signal(seconds: float, seed: int) -> torch.Tensor:
    """Speech-like test audio: per 0.5 s a different chord + noise level, under a slow envelope."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * SR)
    t = torch.arange(n) / SR
    out = torch.zeros(n)
    for s0 in range(0, n, SR // 2):
        sl = slice(s0, min(n, s0 + SR // 2))
        f = 80 + 900 * torch.rand(3, generator=g)
        amp = torch.rand(3, generator=g)
        out[sl] = sum(amp[i] * torch.sin(2 * math.pi * f[i] * t[sl]) for i in range(3))
        out[sl] += (0.05 + 0.5 * torch.rand(1, generator=g)) * torch.randn(sl.stop - sl.start, generator=g)
    return (0.3 * out * (0.6 + 0.4 * torch.sin(2 * math.pi * 1.3 * t))).float()


def memo_classifier(seed: int, width: int = 64, hidden: int = 128) -> torch.nn.Sequential:
    """MEMO's AudioEmotionClassifierModel layout (fc1, relu1, fc2, relu2, fc3) at input width ``width``."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(OrderedDict([
        ("fc1", torch.nn.Linear(width, hidden)), ("relu1", torch.nn.ReLU()),
        ("fc2", torch.nn.Linear(hidden, hidden)), ("relu2", torch.nn.ReLU()),
        ("fc3", torch.nn.Linear(hidden, 9))]))
    with torch.no_grad():
        for p in layers.parameters():
            p.mul_(4.0)
    return layers


@torch.no_grad()
def memo_labels(wav: torch.Tensor, emotion_model, layers, audio_length: int, sample_rate: int = SR):
    """Verbatim logic of memo/utils/audio_utils.py::extract_audio_emotion_labels (device = CPU)."""
    def classifier(x):  # AudioEmotionClassifierModel.forward
        return torch.softmax(layers(x), dim=-1)

    emotion_labels = torch.full_like(wav, -1, dtype=torch.int32)

    def extract_emotion(x):
        x = F.layer_norm(x, x.shape).view(1, -1)
        feats = emotion_model.extract_features(x)
        x = feats["x"].mean(dim=1)  # average across frames
        x = classifier(x)
        x = torch.softmax(x, dim=-1)
        return torch.argmax(x, dim=-1)

    start_label = extract_emotion(wav[: sample_rate * 2]).item()
    emotion_labels[:sample_rate] = start_label
    for i in range(sample_rate, len(wav) - sample_rate, sample_rate):
        mid_wav = wav[i - sample_rate : i - sample_rate + sample_rate * 3]
        mid_label = extract_emotion(mid_wav).item()
        emotion_labels[i : i + sample_rate] = mid_label
    end_label = extract_emotion(wav[-sample_rate * 2 :]).item()
    emotion_labels[-sample_rate:] = end_label
    emotion_labels = emotion_labels.unsqueeze(0).unsqueeze(0).float()
    emotion_labels = F.interpolate(emotion_labels, size=audio_length, mode="nearest").squeeze(0).squeeze(0).int()
    return emotion_labels


def memo_clip_labels(audio_emotion: torch.Tensor, frames_per_clip: int = 16) -> list[int]:
    """inference.py slices the frame labels per clip; video_pipeline.py takes torch.mode(...).values."""
    num_clips = audio_emotion.shape[0] // frames_per_clip
    out = []
    for t in range(num_clips):
        clip = audio_emotion[t * frames_per_clip : min((t + 1) * frames_per_clip, audio_emotion.shape[0])]
        out.append(int(torch.tensor(torch.mode(clip).values.item())))
    return out


def memo_frames(seconds_samples: int, fps: int = 30, per_clip: int = 16) -> int:
    """preprocess_audio's audio_length: ceil(len/16000*fps), padded up to a multiple of 16."""
    n = math.ceil(seconds_samples / SR * fps)
    return n + (per_clip - n % per_clip) % per_clip


def save_model(model: Emotion2vec, conf: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))


def manifest() -> dict:
    with torch.device("meta"):
        model = Emotion2vec(model_conf=PLUS_LARGE["model_conf"], vocab_size=9)
    sd = model.state_dict()
    unused = ("proj.", "modality_encoders.AUDIO.decoder.")
    n_all = sum(v.numel() for v in sd.values())
    n_used = sum(v.numel() for k, v in sd.items() if not k.startswith(unused))
    return {
        "source": "funasr==1.0.27 funasr.models.emotion2vec.model.Emotion2vec(model_conf=PLUS_LARGE, vocab_size=9) "
                  "on the meta device (scripts/make_emotion2vec_fixtures.py)",
        "config": PLUS_LARGE,
        "unused_prefixes": list(unused),
        "parameters_all": n_all,
        "parameters_used": n_used,
        "tensors": {k: list(v.shape) for k, v in sd.items()},
    }


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    tiny, variant = build(tiny_conf(), 9, seed=1), build(variant_conf(), -1, seed=2)
    save_model(tiny, tiny_conf(), OUT / "tiny")
    save_model(variant, variant_conf(), OUT / "variant")

    io: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, sec, seed in (("s0_7", 0.7, 10), ("s2_0", 2.0, 11), ("s3_0", 3.0, 12)):
            w = signal(sec, seed)
            x = tiny.extract_features(F.layer_norm(w, w.shape).view(1, -1))["x"][0]
            io[f"wave.{name}"], io[f"x.{name}"], io[f"mean.{name}"] = w, x.contiguous(), x.mean(0)
        w = io["wave.s2_0"]
        io["variant.x.s2_0"] = variant.extract_features(F.layer_norm(w, w.shape).view(1, -1))["x"][0].contiguous()

    for seed in range(100, 200):  # a classifier whose labels vary along the long track
        layers = memo_classifier(seed)
        waves = {"l5_3": signal(5.3, 20), "l2_5": signal(2.5, 21), "l0_7": io["wave.s0_7"].clone()}
        labels = {k: memo_labels(w, tiny, layers, memo_frames(len(w))) for k, w in waves.items()}
        if len(set(labels["l5_3"].tolist())) >= 3:
            break
    else:
        raise SystemExit("no classifier seed gave varied labels")
    print("classifier seed", seed, {k: sorted(set(v.tolist())) for k, v in labels.items()})
    for k, w in waves.items():
        io[f"label_wave.{k}"] = w
        io[f"labels.{k}"] = labels[k].long()
        io[f"clip_labels.{k}"] = torch.tensor(memo_clip_labels(labels[k]), dtype=torch.long)
    for k, v in layers.state_dict().items():
        io[f"classifier.layers.{k}"] = v.contiguous()
    save_file({k: v.contiguous().clone() for k, v in io.items()}, OUT / "io.safetensors")

    m = manifest()
    (OUT / "manifest.json").write_text(json.dumps(m, indent=1))
    print("plus_large parameters: all", m["parameters_all"], "used by extract_features", m["parameters_used"])
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f.relative_to(OUT), f.stat().st_size)


if __name__ == "__main__":
    main()
