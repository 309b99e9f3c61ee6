"""Overlapping clips with a crossfade (our addition to the paper's plan): the plan covers every frame
with the fewest clips, the shared frames are blended on a linear ramp, the memory is the frames just
before each clip, a run resumes exactly in the middle of a blend, and the metrics score the whole
crossfade as the seam."""
import math

import numpy as np
import pytest
import torch

from letstalk_core.eval.metrics import boundary_jump, flicker, seam_transitions
from letstalk_core.loop import GenerationSettings, GenerationState, ListSink, crossfade, max_overlap, plan_clips
from tests.core.helpers import portrait, speech_like, tiny_generator


@pytest.mark.parametrize("num_frames", [1, 15, 16, 17, 30, 31, 100, 1500])
@pytest.mark.parametrize("overlap", [0, 1, 2, 4, 7])
def test_plan_covers_every_frame_with_the_fewest_clips(num_frames, overlap):
    plan = plan_clips(num_frames, 16, overlap)
    stride = 16 - overlap
    assert [c.start for c in plan] == [i * stride for i in range(len(plan))]
    assert sum(c.emitted for c in plan) == num_frames  # every output frame finished exactly once
    assert plan[-1].start + plan[-1].frames == num_frames and plan[-1].tail == 0
    assert plan[0].head == 0 and all(c.head == overlap for c in plan[1:]) and all(c.tail == overlap for c in plan[:-1])
    if len(plan) > 1:  # the clip before the last does not reach the end: no clip is wasted
        assert plan[-2].start + 16 < num_frames
        assert plan[-1].frames > overlap  # the last clip has frames of its own after its blend
    if overlap == 0:
        assert len(plan) == math.ceil(num_frames / 16)


def test_plan_refuses_an_overlap_of_half_a_clip():
    assert max_overlap(16) == 7 and max_overlap(8) == 3
    with pytest.raises(ValueError, match="from 0 to 7 for clips of 16"):
        plan_clips(100, 16, 8)
    with pytest.raises(ValueError, match="overlap must be"):
        plan_clips(100, 16, -1)
    with pytest.raises(ValueError, match="overlap must be an integer >= 0"):
        GenerationSettings(overlap=-2)


def test_crossfade_is_a_linear_ramp_from_the_old_clip_to_the_new():
    old, new = torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4)
    out = crossfade(old, new)
    assert torch.allclose(out[0, 0, :, 0, 0], torch.tensor([0.25, 0.5, 0.75]))
    same = torch.randn(1, 2, 3, 4, 4)
    assert torch.allclose(crossfade(same, same), same, atol=1e-6)  # agreeing clips are left alone
    with pytest.raises(ValueError, match="two equal shapes"):
        crossfade(old, new[:, :, :2])


class _ConstantClips:
    """Stands in for the sampler: clip k is the constant k; records the memory each clip is given."""

    def __init__(self, gen):
        self.gen, self.memories = gen, {}

    def __call__(self, prepared, clip, memory, settings, on_step=None):
        self.memories[clip.index] = memory.clone()
        h, w = prepared.portrait_latent.shape[-2:]
        return torch.full((1, self.gen.config.dit.in_channels, clip.clip_frames, h, w), float(clip.index))


def test_output_latents_blend_and_memory_is_the_frames_before_each_clip(monkeypatch):
    gen = tiny_generator()
    fake = _ConstantClips(gen)
    monkeypatch.setattr(gen, "sample_clip", fake)
    prepared = gen.prepare(portrait(), speech_like(1.3), 16000)  # 33 frames, clips of 8
    settings = GenerationSettings(steps=1, overlap=2)
    plan = gen.plan(prepared, settings)
    assert [c.start for c in plan] == [0, 6, 12, 18, 24, 30]
    out = torch.cat([lat for _, lat, _ in gen.iter_clips(prepared, settings)], dim=2)[0, 0, :, 0, 0]
    assert out.shape[0] == 33
    expected = []
    for c in plan:
        own = [float(c.index)] * (c.emitted - c.head)
        ramp = [c.index - 1 + (j + 1) / 3 for j in range(c.head)]  # 1/3, 2/3 of the new clip
        expected += ramp + own
    assert torch.allclose(out, torch.tensor(expected))
    f = gen.config.memory.frames
    for c in plan[1:]:  # the memory of clip k: the f finished frames just before its start
        assert torch.allclose(fake.memories[c.index][0, 0, :, 0, 0], out[c.start - f:c.start])


def test_overlap_run_resumes_exactly_inside_a_blend(tmp_path):
    gen = tiny_generator()
    settings = GenerationSettings(sampler="ddim", steps=2, seed=3, decode_chunk=4, overlap=3)
    sink = ListSink()
    prepared = gen.generate(portrait(), speech_like(1.3), 16000, sink, settings)
    full = sink.frames()
    assert full.shape[0] == prepared.num_frames == 33
    it = gen.iter_clips(prepared, settings)
    done = []
    for _ in range(3):
        clip, latents, state = next(it)
        done.extend(gen.decode_clip(latents, clip, 4))
    assert state.tail is not None and state.tail.shape[2] == 3  # the held tail waits for clip 3
    state.save(tmp_path / "state.safetensors")
    loaded = GenerationState.load(tmp_path / "state.safetensors")
    assert torch.equal(loaded.tail, state.tail)
    fresh = tiny_generator()
    prepared2 = fresh.prepare(portrait(), speech_like(1.3), 16000)
    rest = [f for clip, lat, _ in fresh.iter_clips(prepared2, settings, state=loaded) for f in fresh.decode_clip(lat, clip, 4)]
    assert torch.equal(torch.cat(done + rest), full)
    no_overlap = ListSink()
    gen.generate(portrait(), speech_like(1.3), 16000, no_overlap, GenerationSettings(sampler="ddim", steps=2, seed=3, decode_chunk=4))
    assert no_overlap.frames().shape == full.shape and not torch.equal(no_overlap.frames(), full)
    with pytest.raises(ValueError, match="belongs to another run"):  # the overlap is part of the run's identity
        next(fresh.iter_clips(prepared2, GenerationSettings(sampler="ddim", steps=2, seed=3, decode_chunk=4), state=loaded))


def test_seams_cover_the_whole_crossfade():
    t = np.arange(1, 40)
    assert list(t[seam_transitions(t, 16)]) == [16, 32]
    assert list(t[seam_transitions(t, 16, 2)]) == [14, 15, 16, 28, 29, 30]


def _video_with_cut_every(stride: int, overlap: int, frames: int = 96) -> np.ndarray:
    """A smoothly brightening video whose clips (every ``stride`` frames) alternate between +0 and
    +40 levels; with ``overlap`` the offset ramps over the crossfade, as the generator blends it."""
    t = np.arange(frames)
    k, j = t // stride, t % stride
    own = 40.0 * (k % 2)
    w = np.where((k >= 1) & (j < overlap), (j + 1) / (overlap + 1), 1.0)
    offset = own * w + 40.0 * ((k - 1) % 2) * (1 - w)
    v = 20 + t * 0.5 + offset
    return np.broadcast_to(v[:, None, None, None], (frames, 8, 8, 3)).round().astype(np.uint8).copy()


def test_boundary_jump_finds_cuts_at_the_overlap_plan_and_counts_the_whole_blend():
    cut = _video_with_cut_every(16, 0)
    assert boundary_jump(cut, 16).ratio > 50
    blended = _video_with_cut_every(14, 2)
    right = boundary_jump(blended, 16, overlap=2)
    assert right.boundary_mean == pytest.approx((40 + 3 * 0.5) / 3, abs=0.4)  # the 40-level jump over 3 steps
    assert right.ratio > 20  # a jump spread over a blend is still counted in full, not hidden
    wrong = boundary_jump(blended, 16)  # seams looked for at multiples of 16 miss the blends
    assert wrong.ratio < right.ratio
    assert flicker(blended, 16, overlap=2).count < flicker(blended, 16).count + 1
    with pytest.raises(ValueError, match="overlap must be an integer from 0 to 7"):
        boundary_jump(blended, 16, overlap=8)


def test_memory_anchor_mixes_the_portrait_into_every_memory_given(monkeypatch):
    gen = tiny_generator()
    fake = _ConstantClips(gen)
    monkeypatch.setattr(gen, "sample_clip", fake)
    prepared = gen.prepare(portrait(), speech_like(1.3), 16000)
    settings = GenerationSettings(steps=1, overlap=1, memory_anchor=0.25)
    out = torch.cat([lat for _, lat, _ in gen.iter_clips(prepared, settings)], dim=2)
    f = gen.config.memory.frames
    p = prepared.portrait_latent[:, :, None]
    for c in gen.plan(prepared, settings)[1:]:
        expected = 0.75 * out[:, :, c.start - f:c.start] + 0.25 * p
        assert torch.allclose(fake.memories[c.index], expected, atol=1e-6)
    assert torch.allclose(fake.memories[0], p.expand_as(fake.memories[0]))  # clip 0: the portrait, anchored or not
    with pytest.raises(ValueError, match="memory_anchor must be a number from 0 to 1"):
        GenerationSettings(memory_anchor=1.5)
