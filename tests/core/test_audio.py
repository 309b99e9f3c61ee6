"""wav2vec2: the native encoder and loader against transformers.Wav2Vec2Model on the same random weights,
and the Hallo feature recipe against a manual computation with the transformers submodules."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from letstalk_core.audio import (
    WAV2VEC2_PRESETS,
    SpeechEncoder,
    SpeechEncoderConfig,
    Wav2Vec2Config,
    Wav2Vec2Encoder,
    encode_speech_wav2vec2,
    fold_weight_norm,
    frame_count,
    load_wav2vec2,
    normalize_waveform,
    prepare_waveform,
)

transformers = pytest.importorskip("transformers")

BASE = Wav2Vec2Config(
    hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96, conv_dim=(24, 24, 32, 32, 24, 24, 40),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)
LARGE = Wav2Vec2Config(
    hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, conv_dim=(32,) * 7, conv_bias=True,
    feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
STYLES = {"base": BASE, "large": LARGE}
_MODELS = {}


def _hf_model(style: str):
    """A transformers Wav2Vec2Model with random (non-default) weights, built once per style."""
    if style not in _MODELS:
        cfg = STYLES[style]
        torch.manual_seed(1234 if style == "base" else 4321)
        hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**cfg.to_hf())).eval()
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.3 * torch.randn_like(p))
                elif p.ndim >= 2 and "original0" not in name:
                    p.normal_(0, 1.2 / math.sqrt(p[0].numel()))
                else:
                    p.normal_(0, 0.3) if "original0" not in name else p.uniform_(0.5, 1.5)
        _MODELS[style] = hf
    return _MODELS[style]


def _hf_hidden_states(hf, wave):
    with torch.no_grad():
        out = hf(wave, output_hidden_states=True)
    states = list(out.hidden_states)
    if hf.config.do_stable_layer_norm:
        # transformers 5.x returns the last layer before the encoder's final LayerNorm in hidden_states[-1];
        # ours (like transformers 4.x / ComfyUI) returns it after, i.e. last_hidden_state.
        assert torch.allclose(hf.encoder.layer_norm(states[-1]), out.last_hidden_state, atol=1e-5)
        states[-1] = out.last_hidden_state
    return states


def _legacy(sd):
    return {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                 "weight_v"): v for k, v in sd.items()}


def _max_diff(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in zip(ours, ref))


@pytest.mark.parametrize("style", ["base", "large"])
@pytest.mark.parametrize("naming", ["parametrizations", "legacy"])
@pytest.mark.parametrize("prefix", ["", "wav2vec2."])
def test_loaded_encoder_matches_transformers(style, naming, prefix):
    hf = _hf_model(style)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    if naming == "legacy":
        sd = _legacy(sd)
        assert "encoder.pos_conv_embed.conv.weight_g" in sd
    sd = {prefix + k: v for k, v in sd.items()}
    if prefix:
        sd["lm_head.weight"] = torch.randn(32, 64)  # ForCTC head: ignored
        sd["wav2vec2.masked_spec_embed"] = torch.randn(64)
    model = load_wav2vec2(sd, STYLES[style])
    torch.manual_seed(0)
    wave = torch.randn(2, 6400)
    with torch.no_grad():
        ours = model(wave)
    ref = _hf_hidden_states(hf, wave)
    assert len(ours) == STYLES[style].num_layers + 1
    assert _max_diff(ours, ref) < 1e-4
    assert ours[-1].abs().max() > 0.5  # the comparison is not vacuous


@pytest.mark.parametrize("style", ["base", "large"])
@pytest.mark.parametrize("with_config_json", [True, False])
def test_load_safetensors_file_with_and_without_config_json(tmp_path, style, with_config_json):
    hf = _hf_model(style)
    sd = {"wav2vec2." + k: v.contiguous() for k, v in _legacy(hf.state_dict()).items()}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    if with_config_json:
        hf.config.to_json_file(str(tmp_path / "config.json"))
    model = load_wav2vec2(path)
    expected = STYLES[style]
    if not with_config_json:  # shape inference: heads are hidden // 64 (1 for this tiny model)
        expected = Wav2Vec2Config(**{**expected.to_dict(), "num_heads": 1})
    assert model.config == expected
    assert load_wav2vec2(tmp_path).config == expected  # an HF folder works too
    if with_config_json:
        wave = torch.randn(1, 4000)
        with torch.no_grad():
            assert _max_diff(model(wave), _hf_hidden_states(hf, wave)) < 1e-4


def test_comfyui_style_fp16_file(tmp_path):
    hf = _hf_model("large")
    sd = {k: v.half().contiguous() for k, v in hf.state_dict().items()}  # ComfyUI: no prefix, parametrizations, fp16
    save_file(sd, str(tmp_path / "wav2vec2_tiny_fp16.safetensors"))
    model = load_wav2vec2(tmp_path / "wav2vec2_tiny_fp16.safetensors", LARGE)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    wave = torch.randn(1, 4000)
    with torch.no_grad():
        diff = _max_diff(model(wave), _hf_hidden_states(hf, wave))
    assert 0 < diff < 0.1  # fp16 weight rounding only


def test_fold_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.Conv1d(8, 8, 5, groups=2)
    wn = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    with torch.no_grad():
        wn.parametrizations.weight.original0.uniform_(0.5, 2.0)
    folded = fold_weight_norm(wn.parametrizations.weight.original0, wn.parametrizations.weight.original1)
    assert torch.allclose(folded, wn.weight, atol=1e-6)


def test_loader_errors_name_keys_and_shapes(tmp_path):
    hf = _hf_model("base")
    sd = dict(hf.state_dict())
    with pytest.raises(FileNotFoundError, match="wav2vec2 checkpoint not found"):
        load_wav2vec2(tmp_path / "nope.safetensors")
    broken = dict(sd)
    del broken["encoder.layers.1.attention.q_proj.weight"]
    with pytest.raises(ValueError, match=r"missing tensors \(1\).*encoder\.layers\.1\.attention\.q_proj\.weight"):
        load_wav2vec2(broken, BASE)
    wrong = dict(sd)
    wrong["feature_projection.projection.bias"] = torch.zeros(65)
    with pytest.raises(ValueError, match=r"feature_projection\.projection\.bias: checkpoint \(65,\) vs model \(64,\)"):
        load_wav2vec2(wrong, BASE)
    with pytest.raises(ValueError, match=r"conv_layers\.0\.conv\.weight: checkpoint \(24, 1, 10\) vs model \(512, 1, 10\)"):
        load_wav2vec2(sd, Wav2Vec2Config())
    half = {k: v for k, v in sd.items() if "original1" not in k}
    with pytest.raises(ValueError, match="half of the positional-convolution weight norm"):
        load_wav2vec2(half, BASE)
    with pytest.raises(ValueError, match="does not look like a wav2vec2 checkpoint"):
        load_wav2vec2({"model.encoder.conv1.weight": torch.zeros(384, 80, 3)})


def test_shape_inference_detects_norm_layout():
    for style in ("base", "large"):
        cfg = load_wav2vec2(dict(_hf_model(style).state_dict())).config
        ref = STYLES[style]
        assert (cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.conv_dim, cfg.conv_kernel) == (
            ref.hidden_size, ref.num_layers, ref.intermediate_size, ref.conv_dim, ref.conv_kernel)
        assert (cfg.feat_extract_norm, cfg.do_stable_layer_norm, cfg.conv_bias) == (
            ref.feat_extract_norm, ref.do_stable_layer_norm, ref.conv_bias)
        assert (cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups) == (16, 4)


def test_presets_and_config_validation():
    base = WAV2VEC2_PRESETS["wav2vec2-base"]
    assert base.receptive_field == 400 and base.hop == 320
    with torch.device("meta"):
        n_base = sum(p.numel() for p in Wav2Vec2Encoder(base).parameters())
        n_large = sum(p.numel() for p in Wav2Vec2Encoder(WAV2VEC2_PRESETS["wav2vec2-large"]).parameters())
    assert abs(n_base - 94.37e6) < 0.05e6  # reference: 94.37 M for the body (components.md 3.1)
    assert 310e6 < n_large < 320e6
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Wav2Vec2Config(hidden_size=64, num_heads=5, num_conv_pos_embedding_groups=4)
    with pytest.raises(ValueError, match="'group' or 'layer'"):
        Wav2Vec2Config(feat_extract_norm="batch")
    assert Wav2Vec2Config.from_dict(base.to_dict()) == base


def _hallo_reference(hf, wave16k, fps):
    """Hallo audio_processor.py + wav2vec.py with the transformers submodules."""
    seq_len = math.ceil(len(wave16k) / 16000 * fps)
    x = torch.from_numpy(transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(
        wave16k.numpy(), sampling_rate=16000).input_values[0]).float()[None]
    # Hallo's Wav2VecModel.forward = Wav2Vec2Model.forward with linear_interpolation(extract_features, seq_len)
    # right after the feature extractor: reproduce it with a forward hook on the transformers submodule.
    hook = hf.feature_extractor.register_forward_hook(
        lambda module, args, out: F.interpolate(out, size=seq_len, align_corners=True, mode="linear"))
    try:
        states = _hf_hidden_states(hf, x)
    finally:
        hook.remove()
    assert states[0].shape[1] == seq_len
    return torch.stack(states[1:], dim=2)[0]


@pytest.mark.parametrize("style", ["base", "large"])
def test_hallo_recipe_matches_manual_transformers_computation(style):
    hf = _hf_model(style)
    model = load_wav2vec2(dict(hf.state_dict()), STYLES[style])
    torch.manual_seed(3)
    wave = torch.randn(16000 + 3200) * 0.2 + 0.05  # 1.2 s, non-zero mean
    for fps in (25, 30):
        ours = encode_speech_wav2vec2(model, wave, fps)
        ref = _hallo_reference(hf, wave, fps)
        assert ours.shape == ref.shape == (frame_count(len(wave), 16000, fps), STYLES[style].num_layers, 64)
        assert (ours - ref).abs().max() < 1e-4


def test_recipe_short_silent_and_chunked():
    model = load_wav2vec2(dict(_hf_model("base").state_dict()), BASE)
    silent = encode_speech_wav2vec2(model, torch.zeros(1600), 25)
    assert silent.shape == (3, 3, 64) and torch.isfinite(silent).all()
    tiny = encode_speech_wav2vec2(model, torch.randn(100), 25)  # shorter than the receptive field: padded
    assert tiny.shape == (1, 3, 64) and torch.isfinite(tiny).all()
    wave = torch.randn(16000 * 3)
    full = encode_speech_wav2vec2(model, wave, 25)
    same = encode_speech_wav2vec2(model, wave, 25, max_frames_per_chunk=75)
    assert torch.equal(full, same)
    chunked = encode_speech_wav2vec2(model, wave, 25, max_frames_per_chunk=20, chunk_overlap=5)
    assert chunked.shape == full.shape == (75, 3, 64)
    # every core of 10 frames equals the transformer run on its window (core + 5 frames context each side)
    cnn = F.interpolate(model.extract_cnn_features(normalize_waveform(wave)[None]).transpose(1, 2), size=75,
                        mode="linear", align_corners=True).transpose(1, 2)
    with torch.no_grad():
        window = torch.stack(model.transformer(cnn[:, 25:45])[1:], dim=2)[0]
    assert (chunked[30:40] - window[5:15]).abs().max() < 1e-5
    assert (chunked - full).abs().max() > 0  # finite context changes the features a little
    with pytest.raises(ValueError, match="must exceed 2 \\* chunk_overlap"):
        encode_speech_wav2vec2(model, wave, 25, max_frames_per_chunk=10, chunk_overlap=5)


def test_speech_encoder_wrapper_wav2vec2():
    model = load_wav2vec2(dict(_hf_model("base").state_dict()), BASE)
    cfg = SpeechEncoderConfig(kind="wav2vec2", wav2vec2=BASE)
    assert (cfg.layers, cfg.channels) == (3, 64)
    assert SpeechEncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    enc = SpeechEncoder(cfg, model)
    stereo = torch.randn(1, 2, 44100) * 0.1  # ComfyUI AUDIO waveform, 1 s at 44.1 kHz
    feats = enc.encode(stereo, 44100, 25)
    assert feats.shape == (25, 3, 64) and torch.isfinite(feats).all()
    direct = encode_speech_wav2vec2(model, prepare_waveform(stereo, 44100), 25)
    assert torch.equal(feats, direct)
    with pytest.raises(ValueError, match="no wav2vec2 model was given"):
        SpeechEncoder(cfg)
    with pytest.raises(ValueError, match="hidden size 64 and 3 layers.*expects 768 and 12"):
        SpeechEncoder(SpeechEncoderConfig(), model)
