"""Bad input at the generator's front door: each case gets a clear, actionable error or is handled
correctly (issue acceptance list). File-level cases (missing files, broken checkpoints, unknown
presets) are in test_cli.py; rates and channel layouts in test_pipeline.py."""
import pytest
import torch

from letstalk_core.io.image import prepare_portrait_image
from letstalk_core.loop import GenerationSettings, ListSink
from tests.core.helpers import portrait, speech_like, tiny_generator


@pytest.fixture(scope="module")
def gen():
    return tiny_generator()


@pytest.mark.parametrize("wave,rate,message", [
    (torch.zeros(1, 0), 16000, "audio is empty"),
    (torch.full((1, 16000), float("nan")), 16000, "NaN or infinite"),
    (speech_like(0.05), 16000, "too short"),
    (speech_like(1.0), 500, "outside the supported range"),
    (torch.zeros(2, 1, 16000), 16000, "batch of 2 clips"),
    (torch.zeros(16000, dtype=torch.int16), 16000, "floating-point"),
])
def test_bad_audio_is_refused_with_advice(gen, wave, rate, message):
    with pytest.raises((ValueError, TypeError), match=message):
        gen.prepare(portrait(), wave, rate)


def test_silent_audio_is_handled(gen):
    sink = ListSink()
    prepared = gen.generate(portrait(), torch.zeros(1, 8000), 16000, sink, GenerationSettings(steps=2))
    assert prepared.num_frames == 13 and torch.isfinite(prepared.features).all()
    assert sink.frames().shape[0] == 13 and torch.isfinite(sink.frames()).all()


def test_image_channels_and_sizes():
    rgb = portrait(50)
    gray, rgba = rgb[:1], torch.cat([rgb, torch.ones(1, 50, 50)])
    assert torch.equal(prepare_portrait_image(gray, 32, 32)[0, 0], prepare_portrait_image(gray, 32, 32)[0, 2])
    assert torch.allclose(prepare_portrait_image(rgba, 32, 32), prepare_portrait_image(rgb, 32, 32))
    transparent = torch.cat([rgb, -torch.ones(1, 50, 50)])  # alpha 0 everywhere → white background
    assert torch.allclose(prepare_portrait_image(transparent, 32, 32), torch.ones(1, 3, 32, 32))
    # non-multiple sides: handled by crop+resize to the model size, refused with advice in keep mode
    wide = torch.rand(3, 45, 70) * 2 - 1
    assert prepare_portrait_image(wide, 32, 32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8.*size_mode='model'"):
        prepare_portrait_image(wide, 32, 32, size_mode="keep", factor=8)
    with pytest.raises(ValueError, match="1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"):
        prepare_portrait_image(torch.zeros(2, 32, 32), 32, 32)
    with pytest.raises(ValueError, match="NaN"):
        prepare_portrait_image(torch.full((3, 32, 32), float("nan")), 32, 32)
    with pytest.raises(ValueError, match="between 8 and 8192"):
        prepare_portrait_image(torch.zeros(3, 4, 4), 32, 32)


def test_keep_mode_generates_at_the_image_size(gen):
    sink = ListSink()
    gen.generate(portrait(48), speech_like(0.3), 16000, sink, GenerationSettings(steps=1), size_mode="keep")
    assert sink.frames().shape == (8, 3, 48, 48)


def test_bad_settings():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        GenerationSettings(steps=0)
    with pytest.raises(ValueError, match="Unknown sampler 'heun'.*ddpm, ddim"):
        gen = tiny_generator()
        gen.generate(portrait(), speech_like(0.3), 16000, ListSink(), GenerationSettings(sampler="heun", steps=1))
