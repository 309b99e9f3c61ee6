"""Waveform preparation: resample (vs a float64 transcription of torchaudio's formula), validation,
frame timing."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from letstalk_core.audio import waveform as wf
from letstalk_core.audio import frame_count, normalize_waveform, prepare_waveform, resample


def _reference_resample(x: np.ndarray, orig_rate: int, new_rate: int, lw: int = 6, rolloff: float = 0.99):
    """torchaudio.functional.resample (sinc_interp_hann) written as a direct float64 double sum:
    y[j] = sum_i x[i] * scale * sinc(t) * cos^2(t pi / (2 lw)), t = clamp(base (i/orig - j/new), +-lw),
    over torchaudio's kernel support i in [(j//new)*orig - width, (j//new)*orig + orig + width)."""
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    base = min(orig, new) * rolloff
    width = math.ceil(lw * orig / base)
    out_len = math.ceil(new * len(x) / orig)
    y = np.zeros(out_len)
    for j in range(out_len):
        i = np.arange((j // new) * orig - width, (j // new) * orig + orig + width)
        t = np.clip(base * (i / orig - j / new), -lw, lw)
        h = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
        h = h * np.cos(t * np.pi / lw / 2) ** 2 * (base / orig)
        valid = (i >= 0) & (i < len(x))
        y[j] = np.sum(x[i[valid]] * h[valid])
    return y


def _sine(freq, rate, seconds, amp=0.5):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (48000, 16000), (22050, 16000), (16000, 44100)])
def test_resample_matches_float64_reference(orig, new):
    torch.manual_seed(0)
    x = torch.randn(orig // 20)  # 50 ms of noise: all frequencies, edges included
    ref = _reference_resample(x.double().numpy(), orig, new)
    ours64 = resample(x.double(), orig, new).numpy()  # kernel built in the input's dtype, as torchaudio does
    assert ours64.shape == ref.shape == (math.ceil(len(x) * new / orig),)
    assert np.abs(ours64 - ref).max() < 1e-10
    ours32 = resample(x, orig, new)
    assert ours32.dtype == torch.float32
    assert np.abs(ours32.double().numpy() - ref).max() < 1e-4  # float32 kernel precision, like torchaudio


def test_resample_gather_path_equals_conv_path(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(2, 3000, dtype=torch.float64)
    conv = resample(x, 44100, 16000)
    monkeypatch.setattr(wf, "_MAX_KERNEL_ELEMENTS", 0)
    gather = resample(x, 44100, 16000)
    assert gather.shape == conv.shape == (2, math.ceil(3000 * 16000 / 44100))
    assert (gather - conv).abs().max() < 1e-10
    assert resample(x.float(), 44100, 16000).dtype == torch.float32


def test_resample_coprime_rates_use_little_memory_and_match_reference():
    # 44101 and 16000 are coprime: torchaudio would build a 16000 x 44137 kernel (2.8 GB).
    torch.manual_seed(2)
    x = torch.randn(2205, dtype=torch.float64)
    ours = resample(x, 44101, 16000).numpy()
    ref = _reference_resample(x.numpy(), 44101, 16000)
    assert ours.shape == ref.shape == (math.ceil(2205 * 16000 / 44101),)
    assert np.abs(ours - ref).max() < 1e-10


@pytest.mark.parametrize("orig,freq", [(44100, 440.0), (8000, 1000.0), (96000, 3000.0), (11025, 700.0)])
def test_resample_preserves_sine_frequency_and_amplitude(orig, freq):
    x = _sine(freq, orig, 1.0)
    y = resample(x, orig, 16000)
    assert y.shape[0] == math.ceil(x.shape[0] * 16000 / orig) == 16000
    spec = torch.fft.rfft(y[1000:-1000].double() * torch.hann_window(14000, dtype=torch.float64))
    peak_hz = spec.abs().argmax().item() * 16000 / 14000
    assert abs(peak_hz - freq) <= 16000 / 14000
    rms_in = x[2000:-2000].pow(2).mean().sqrt()
    rms_out = y[1000:-1000].pow(2).mean().sqrt()
    assert abs(rms_out / rms_in - 1) < 0.01


def test_resample_removes_content_above_new_nyquist():
    x = _sine(12000.0, 48000, 0.5)  # 12 kHz cannot exist at 16 kHz
    y = resample(x, 48000, 16000)
    assert y[500:-500].pow(2).mean().sqrt() < 0.01 * x.pow(2).mean().sqrt()


def test_resample_identity_and_lengths():
    x = torch.randn(1234)
    assert resample(x, 16000, 16000) is x
    for orig, new, n in [(44100, 16000, 1), (44100, 16000, 44101), (8000, 16000, 7), (16000, 22050, 999)]:
        assert resample(torch.randn(n), orig, new).shape[0] == -(-n * new // orig)
    assert resample(torch.randn(2, 3, 800), 8000, 16000).shape == (2, 3, 1600)
    with pytest.raises(ValueError, match="whole number"):
        resample(x, 44100.5, 16000)
    with pytest.raises(ValueError, match="> 0"):
        resample(x, 0, 16000)
    with pytest.raises(TypeError, match="floating"):
        resample(torch.ones(10, dtype=torch.int16), 8000, 16000)


def test_frame_count_is_exact():
    assert frame_count(64000, 16000, 25) == 100  # 4.0 s
    assert frame_count(64000, 16000, 25.0) == 100
    assert frame_count(4 * 44100, 44100, 25) == 100
    assert frame_count(64001, 16000, 25) == 101
    assert frame_count(1, 16000, 25) == 1
    assert frame_count(0, 16000, 25) == 0
    assert frame_count(16000 * 10, 16000, 29.97) == 300  # 299.7 -> 300
    assert frame_count(16000 * 100, 16000, 29.97) == 2997  # exactly 2997, no float drift
    assert frame_count(1001 * 16000, 16000, Fraction(30000, 1001)) == 30000
    assert frame_count(1001 * 16000, 16000, 30000 / 1001) == 30000
    # float arithmetic gives 4480 / 16000 * 25 = 7.000000000000001 -> 8 frames; exactly 0.28 s -> 7
    assert math.ceil(4480 / 16000 * 25) == 8 and frame_count(4480, 16000, 25) == 7
    with pytest.raises(ValueError, match="fps"):
        frame_count(100, 16000, 0)
    with pytest.raises(ValueError):
        frame_count(-1, 16000, 25)


def test_normalize_waveform_matches_transformers_formula():
    x = torch.randn(5000) * 0.3 + 0.1
    y = normalize_waveform(x)
    xn = x.numpy()
    ref = (xn - xn.mean()) / np.sqrt(xn.var() + 1e-7)
    assert np.abs(y.numpy() - ref).max() < 1e-5
    silent = normalize_waveform(torch.zeros(1000))
    assert torch.equal(silent, torch.zeros(1000))


def test_prepare_waveform_layouts_and_downmix():
    left, right = _sine(300.0, 16000, 0.5), _sine(500.0, 16000, 0.5)
    stereo = torch.stack([left, right])
    out = prepare_waveform(stereo, 16000)
    assert out.dtype == torch.float32 and out.shape == (8000,)
    assert torch.allclose(out, (left + right) / 2)
    assert torch.equal(prepare_waveform(stereo[None], 16000), out)  # ComfyUI [1, C, T]
    assert torch.equal(prepare_waveform(stereo.numpy(), 16000), out)  # numpy
    six = torch.stack([left * k for k in range(1, 7)])
    assert torch.allclose(prepare_waveform(six, 16000), left * 3.5, atol=1e-6)
    assert prepare_waveform(left, 16000).shape == (8000,)
    assert prepare_waveform(left.double(), 16000).dtype == torch.float32


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_prepare_waveform_any_rate_gives_right_length_and_frames(rate):
    seconds = 1.3
    x = torch.randn(2, int(rate * seconds)) * 0.1
    out = prepare_waveform(x, rate)
    assert out.shape[0] == math.ceil(int(rate * seconds) * 16000 / rate)
    assert frame_count(x.shape[-1], rate, 25) == 33 == frame_count(out.shape[0], 16000, 25)


def test_prepare_waveform_rejects_bad_inputs_with_actionable_messages():
    with pytest.raises(ValueError, match="empty"):
        prepare_waveform(torch.zeros(1, 2, 0), 44100)
    bad = torch.zeros(16000)
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_waveform(bad, 16000)
    bad[5] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_waveform(bad, 16000)
    with pytest.raises(ValueError, match=r"too short: 800 samples at 16000 Hz = 0\.0500 s; at least 0\.1 s"):
        prepare_waveform(torch.zeros(800), 16000)
    with pytest.raises(ValueError, match="batch of 2 clips.*one item"):
        prepare_waveform(torch.zeros(2, 1, 16000), 16000)
    for rate in (0, -16000, 500, 500000):
        with pytest.raises(ValueError, match="outside the supported range"):
            prepare_waveform(torch.zeros(16000), rate)
    with pytest.raises(ValueError, match="whole number"):
        prepare_waveform(torch.zeros(16000), 16000.5)
    with pytest.raises(ValueError, match=r"\[T, C\].*transpose"):
        prepare_waveform(torch.zeros(16000, 2).T.contiguous().T, 16000)
    with pytest.raises(TypeError, match="int16 / 32768"):
        prepare_waveform(torch.zeros(16000, dtype=torch.int16), 16000)
    with pytest.raises(TypeError, match="numpy"):
        prepare_waveform([0.0] * 16000, 16000)


def test_prepare_waveform_silence_is_valid():
    out = prepare_waveform(torch.zeros(1, 2, 44100), 44100)
    assert out.shape == (16000,) and torch.equal(out, torch.zeros(16000))
