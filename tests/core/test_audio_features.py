"""Log-mel front end (vs transformers' Whisper feature extractor), per-frame windows, the audio projector."""
import json
import math

import numpy as np
import pytest
import torch

from letstalk_core.audio import (
    AudioProjector,
    AudioProjectorConfig,
    MelConfig,
    SpeechEncoder,
    SpeechEncoderConfig,
    encode_speech_mel,
    frame_count,
    frame_windows,
    frame_windows_range,
    log_mel,
    mel_filterbank,
    prepare_waveform,
)


def test_mel_filterbank_and_log_mel_match_whisper_feature_extractor():
    transformers = pytest.importorskip("transformers")
    from transformers.audio_utils import mel_filter_bank

    ref_fb = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")  # [201, 80]
    assert np.abs(mel_filterbank().numpy() - ref_fb.T).max() < 1e-6
    torch.manual_seed(0)
    wave = torch.randn(12345) * 0.1
    fe = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400)
    ref = fe._np_extract_fbank_features(wave.numpy()[None], "cpu")[0]  # [80, T // 160]
    ours = log_mel(wave)
    assert ours.shape == ref.shape == (80, 12345 // 160)
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_log_mel_silence_is_finite_constant():
    out = log_mel(torch.zeros(16000))
    assert torch.isfinite(out).all() and torch.allclose(out, torch.full_like(out, -1.5))
    assert log_mel(torch.zeros(10)).shape == (80, 1)


def test_encode_speech_mel_frames_average_their_interval():
    torch.manual_seed(1)
    wave = torch.randn(16000 * 2 + 123) * 0.1
    feats = encode_speech_mel(wave, 25)
    n = frame_count(wave.shape[0], 16000, 25)
    assert feats.shape == (n, 1, 80) == (51, 1, 80)
    mel = log_mel(wave)  # [80, 200] at 100 Hz: video frame i covers mel frames 4i .. 4i+3
    for i in (0, 7, 49):
        assert torch.allclose(feats[i, 0], mel[:, 4 * i: 4 * i + 4].mean(1), atol=1e-5)
    assert torch.allclose(feats[50, 0], mel[:, 199], atol=1e-5)  # past the last full interval: last frame
    # 29.97 fps: frame 1 covers [1/29.97, 2/29.97) s -> mel frames ceil(3.3367)=4 .. ceil(6.673)-1=6
    f2997 = encode_speech_mel(wave, 29.97)
    assert f2997.shape[0] == math.ceil(wave.shape[0] / 16000 * 29.97)
    assert torch.allclose(f2997[1, 0], mel[:, 4:7].mean(1), atol=1e-5)
    silent = encode_speech_mel(torch.zeros(1600), 25)
    assert silent.shape == (3, 1, 80) and torch.isfinite(silent).all()


def test_speech_encoder_mel_kind_and_bad_audio():
    cfg = SpeechEncoderConfig(kind="mel")
    assert (cfg.layers, cfg.channels) == (1, 80)
    assert SpeechEncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    enc = SpeechEncoder(cfg)
    for rate in (8000, 11025, 22050, 44100, 48000, 96000):
        samples = int(rate * 1.7)
        feats = enc.encode(torch.randn(1, 2, samples) * 0.1, rate, 25)
        assert feats.shape == (frame_count(samples, rate, 25), 1, 80) == (43, 1, 80)
    six = enc.encode(np.random.default_rng(0).normal(size=(6, 48000)).astype(np.float32) * 0.1, 48000, 30)
    assert six.shape == (30, 1, 80)
    assert torch.isfinite(enc.encode(torch.zeros(1, 1, 4410), 44100, 25)).all()
    with pytest.raises(ValueError, match="too short"):
        enc.encode(torch.zeros(1, 1, 100), 44100, 25)
    with pytest.raises(ValueError, match="empty"):
        enc.encode(torch.zeros(1, 1, 0), 44100, 25)
    with pytest.raises(ValueError, match="kind must be one of"):
        SpeechEncoderConfig(kind="whisper")
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=9000.0)


def test_speech_encoder_counts_frames_on_the_original_rate():
    # 0.5 s + 1 sample at 22.05 kHz at 30 fps: ceil(15.0014) = 16 frames from the original samples.
    samples = 11026
    feats = SpeechEncoder(SpeechEncoderConfig(kind="mel")).encode(torch.randn(samples) * 0.1, 22050, 30)
    assert feats.shape[0] == frame_count(samples, 22050, 30) == 16
    assert prepare_waveform(torch.randn(samples), 22050).shape[0] == math.ceil(samples * 16000 / 22050)


def test_frame_windows_clamp_at_track_ends():
    feats = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 2, 3).contiguous()
    win = frame_windows(feats, margin=2)
    assert win.shape == (10, 5, 2, 3)
    assert win[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert win[5, :, 1, 2].tolist() == [3, 4, 5, 6, 7]
    assert win[9, :, 0, 0].tolist() == [7, 8, 9, 9, 9]
    clip = frame_windows_range(feats, 4, 8, margin=2)  # a clip sees real neighbours from the whole track
    assert clip.shape == (4, 5, 2, 3) and torch.equal(clip, win[4:8])
    assert clip[0, :, 0, 0].tolist() == [2, 3, 4, 5, 6]
    padded = frame_windows_range(feats, 8, 12, margin=1, pad_end=True)
    assert padded[:, :, 0, 0].tolist() == [[7, 8, 9], [8, 9, 9], [9, 9, 9], [9, 9, 9]]
    with pytest.raises(ValueError, match="past the track's 10 audio frames.*pad_end=True"):
        frame_windows_range(feats, 8, 12)
    with pytest.raises(ValueError, match="start < stop"):
        frame_windows_range(feats, 5, 5)
    assert frame_windows(feats, margin=0).shape == (10, 1, 2, 3)


def test_audio_projector_default_param_count_and_keys():
    with torch.device("meta"):
        proj = AudioProjector()
    n = sum(p.numel() for p in proj.parameters())
    assert n == 46080 * 512 + 512 + 512 * 512 + 512 + 512 * 32 * 768 + 32 * 768 + 2 * 768 == 36_465_152
    assert set(proj.state_dict()) == {f"{m}.{p}" for m in ("proj1", "proj2", "proj3", "norm") for p in ("weight", "bias")}


def test_audio_projector_shapes_and_hallo_math():
    cfg = AudioProjectorConfig(window=5, layers=3, channels=8, hidden=16, tokens=4, out_dim=6)
    torch.manual_seed(0)
    proj = AudioProjector(cfg)
    x = torch.randn(2, 7, 5, 3, 8)
    y = proj(x)
    assert y.shape == (2, 7, 4, 6)
    flat = torch.relu(proj.proj2(torch.relu(proj.proj1(x.reshape(14, 120)))))
    ref = torch.nn.functional.layer_norm(proj.proj3(flat).reshape(14, 4, 6), (6,), proj.norm.weight, proj.norm.bias)
    assert torch.allclose(y.reshape(14, 4, 6), ref, atol=1e-6)
    assert torch.allclose(proj(x.reshape(14, 5, 3, 8)), y.reshape(14, 4, 6))
    with pytest.raises(ValueError, match=r"end in \(5, 12, 768\).*expects \(5, 3, 8\)"):
        proj(torch.zeros(1, 5, 12, 768))
    assert AudioProjectorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="tokens must be a positive integer"):
        AudioProjectorConfig(tokens=0)


def test_log_mel_in_chunks_equals_one_stft():
    import torch

    from letstalk_core.audio.features import log_mel

    wave = torch.randn(16000 * 3 + 77) * 0.1
    whole = log_mel(wave, chunk_frames=10_000)
    assert whole.shape == (80, 300)
    assert (log_mel(wave, chunk_frames=37) - whole).abs().max() < 1e-5


def test_virtual_silence_padding_equals_padding_the_track():
    import torch
    import torch.nn.functional as F

    from letstalk_core.audio.features import encode_speech_mel, log_mel

    wave = torch.randn(16000 + 77) * 0.1
    padded = F.pad(wave, (0, 3000))
    assert (log_mel(wave, length=padded.shape[0], chunk_frames=11) - log_mel(padded)).abs().max() < 1e-5
    assert (encode_speech_mel(wave, 25, length=padded.shape[0]) - encode_speech_mel(padded, 25)).abs().max() < 1e-5
