"""The long-video pipeline: exact frame counts, determinism, streaming, resume to an identical result,
the memory ablation, progress callbacks and cancellation."""
import math

import pytest
import torch

from letstalk_core.loop import GenerationSettings, GenerationState, ListSink, plan_clips
from tests.core.helpers import portrait, speech_like, tiny_generator

SETTINGS = GenerationSettings(sampler="ddim", steps=3, seed=7, decode_chunk=3)


def test_plan_clips_covers_exactly():
    plan = plan_clips(25, 8)
    assert [(c.start, c.frames) for c in plan] == [(0, 8), (8, 8), (16, 8), (24, 1)]
    assert all(c.total == 4 and c.clip_frames == 8 for c in plan)
    with pytest.raises(ValueError, match="nothing to generate"):
        plan_clips(0, 8)


@pytest.fixture(scope="module")
def gen():
    return tiny_generator()


@pytest.fixture(scope="module")
def full_run(gen):
    sink = ListSink()
    prepared = gen.generate(portrait(), speech_like(1.3), 16000, sink, SETTINGS)
    return prepared, sink


def test_frame_count_is_ceil_seconds_times_fps(full_run):
    prepared, sink = full_run
    frames = sink.frames()
    assert prepared.num_frames == math.ceil(1.3 * 25) == 33
    assert frames.shape == (33, 3, 32, 32)
    assert frames.min() >= -1 and frames.max() <= 1 and torch.isfinite(frames).all()
    assert max(c.shape[0] for c in sink.chunks) <= SETTINGS.decode_chunk  # decoded and streamed in chunks


@pytest.mark.parametrize("rate,channels", [(8000, 1), (11025, 2), (22050, 1), (44100, 2), (48000, 6), (96000, 1)])
def test_frame_counts_for_any_rate_and_layout(gen, rate, channels):
    wave = speech_like(0.73, rate=rate, channels=channels)
    prepared = gen.prepare(portrait(), wave, rate)
    assert prepared.num_frames == math.ceil(wave.shape[-1] * 25 / rate)
    assert prepared.features.shape[0] == prepared.num_frames + 8 - 1  # covers the last clip of any overlap


def test_deterministic_and_seed_dependent(gen, full_run):
    sink = ListSink()
    gen.generate(portrait(), speech_like(1.3), 16000, sink, SETTINGS)
    assert torch.equal(sink.frames(), full_run[1].frames())
    other = ListSink()
    gen.generate(portrait(), speech_like(1.3), 16000, other, GenerationSettings(steps=3, seed=8, decode_chunk=3))
    assert (other.frames() - sink.frames()).abs().mean() > 1e-4


def test_resume_from_saved_state_is_identical(gen, full_run, tmp_path):
    prepared = gen.prepare(portrait(), speech_like(1.3), 16000)
    it = gen.iter_clips(prepared, SETTINGS)
    for _ in range(2):
        clip, latents, state = next(it)
    state.save(tmp_path / "state.safetensors")
    fresh = tiny_generator()  # a new process would rebuild everything from files
    loaded = GenerationState.load(tmp_path / "state.safetensors")
    assert loaded.next_clip == 2
    rest = []
    prepared2 = fresh.prepare(portrait(), speech_like(1.3), 16000)
    for clip, latents, _ in fresh.iter_clips(prepared2, SETTINGS, state=loaded):
        rest.extend(fresh.decode_clip(latents, clip, 3))
    assert torch.equal(torch.cat(rest), full_run[1].frames()[16:])
    with pytest.raises(ValueError, match="belongs to another run"):
        next(fresh.iter_clips(prepared2, GenerationSettings(steps=3, seed=99), state=loaded))


def test_memory_ablation_changes_later_clips_only(gen, full_run):
    sink = ListSink()
    gen.generate(portrait(), speech_like(1.3), 16000, sink, GenerationSettings(steps=3, seed=7, decode_chunk=3, use_memory=False))
    a, b = full_run[1].frames(), sink.frames()
    assert torch.equal(a[:8], b[:8])
    assert (a[8:] - b[8:]).abs().mean() > 1e-5


def test_progress_callback_and_cancellation(gen):
    seen = []
    gen.generate(portrait(), speech_like(0.5), 16000, ListSink(), GenerationSettings(steps=2),
                 on_step=lambda info: seen.append((info.clip, info.clips, info.step, info.steps, info.memory_frames)))
    assert seen == [(c, 2, s, 2, 2) for c in range(2) for s in range(2)]

    class Cancelled(Exception):
        pass

    def cancel(info):
        if info.clip == 1:
            raise Cancelled
    sink = ListSink()
    with pytest.raises(Cancelled):
        gen.generate(portrait(), speech_like(1.0), 16000, sink, GenerationSettings(steps=2), on_step=cancel)
    assert sink.frames().shape[0] == 8  # clip 0 was delivered before the cancel


@pytest.mark.parametrize("portrait_fusion,audio_fusion", [("siamese", "direct"), ("direct", "symbiotic")])
def test_other_fusions_generate(portrait_fusion, audio_fusion):
    g = tiny_generator(portrait_fusion=portrait_fusion, audio_fusion=audio_fusion)
    sink = ListSink()
    g.generate(portrait(), speech_like(0.4), 16000, sink, GenerationSettings(steps=2, guidance={"portrait": 2.0, "audio": 3.0}))
    assert sink.frames().shape == (10, 3, 32, 32)


def test_bf16_model_generates_close_to_fp32(full_run):
    from letstalk_core.audio.features import SpeechEncoder
    from letstalk_core.families.letstalk.generator import LetsTalkGenerator
    from tests.core.helpers import tiny_parts

    cfg, model, dcae = tiny_parts()
    gen = LetsTalkGenerator(cfg, model, dcae, SpeechEncoder(cfg.speech_encoder), dtype=torch.bfloat16)
    sink = ListSink()
    gen.generate(portrait(), speech_like(1.3), 16000, sink, SETTINGS)
    frames = sink.frames()
    assert frames.dtype == torch.float32 and torch.isfinite(frames).all()
    assert (frames - full_run[1].frames()).abs().mean() < 0.05
