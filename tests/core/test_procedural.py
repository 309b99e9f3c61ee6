"""Procedural talking-face data: determinism, file layout, mouth visibility and its link to the audio."""
from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest

from letstalk_core.data.procedural import (
    LABELS,
    MIN_COLOR_DISTANCE,
    MOUTH_INTERIOR_RGB,
    FaceIdentity,
    add_synth_command,
    color_distance,
    load_truth,
    make_dataset,
    make_sample,
    measure_mouth_opening,
    motion_tracks,
    render_frames,
    render_labels,
    render_portrait,
    sample_identity,
)
from letstalk_core.data.speech_synth import synthesize_speech
from letstalk_core.io.audio_file import load_audio
from letstalk_core.io.video import probe_video, read_video_frames

FPS = 25.0


def frame_rms(waveform: np.ndarray, rate: int, frames: int, fps: float = FPS) -> np.ndarray:
    """RMS of the audio each video frame covers."""
    edges = np.round(np.arange(frames + 1) * rate / fps).astype(int)
    return np.array([np.sqrt(np.mean(waveform[a:b] ** 2)) if b > a else 0.0 for a, b in itertools.pairwise(edges)])


@pytest.fixture(scope="module")
def sample20(tmp_path_factory):
    """One 20 s sample on disk, with its ground truth loaded."""
    out = tmp_path_factory.mktemp("procedural")
    return load_truth(make_sample(11, 20.0, out, stem="clip"))


def test_speech_is_deterministic_and_seed_dependent():
    a, b = synthesize_speech(3.0, seed=7), synthesize_speech(3.0, seed=7)
    assert np.array_equal(a.waveform, b.waveform)
    assert a.waveform.dtype == np.float32 and a.waveform.shape == (48000,)
    assert 0.5 <= np.abs(a.waveform).max() <= 0.9
    assert not np.array_equal(a.waveform, synthesize_speech(3.0, seed=8).waveform)
    tracks = a.frame_tracks(FPS)
    assert set(tracks) == {"mouth_open", "mouth_width"} and len(tracks["mouth_open"]) == 75
    assert tracks["mouth_open"].min() >= 0 and tracks["mouth_open"].max() <= 1


def test_frames_are_deterministic_and_identities_differ():
    speech = synthesize_speech(1.0, seed=3)
    tracks = {**speech.frame_tracks(FPS), **motion_tracks(25, FPS, seed=4)}
    first = render_frames(sample_identity(5), tracks)
    assert first.shape == (25, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_frames(sample_identity(5), tracks))
    assert sample_identity(5) != sample_identity(6)
    assert not np.array_equal(render_portrait(sample_identity(5)), render_portrait(sample_identity(6)))


def test_identity_round_trips_through_json():
    ident = sample_identity(21)
    again = FaceIdentity.from_dict(json.loads(json.dumps(ident.to_dict())))
    assert again == ident


def test_no_identity_colour_is_near_the_mouth_interior():
    styles = set()
    for seed in range(200):
        ident = sample_identity(seed)
        styles.add(ident.hair_style)
        for name, rgb in ident.colors().items():
            assert color_distance(rgb, MOUTH_INTERIOR_RGB) > MIN_COLOR_DISTANCE, (seed, name, rgb)
    assert len(styles) >= 4


def test_portrait_is_at_rest_and_labels_cover_the_parts():
    ident = sample_identity(2)
    portrait, labels = render_portrait(ident), render_labels(ident)
    assert portrait.shape == (64, 64, 3) and labels.shape == (64, 64) and labels.dtype == np.uint8
    assert measure_mouth_opening(portrait)[0] < 1e-3  # mouth closed
    present = set(np.unique(labels).tolist())
    assert {LABELS["background"], LABELS["skin"], LABELS["eyes"], LABELS["mouth"]} <= present
    assert present <= set(LABELS.values())
    face_rows = np.flatnonzero((labels == LABELS["skin"]).any(1))
    assert face_rows.size >= 0.7 * 64  # the face fills most of the frame


def test_sample_files_and_frame_count(tmp_path):
    seconds = 2.3
    path = make_sample(5, seconds, tmp_path, stem="a")
    truth = json.loads(path.read_text())
    frames = math.ceil(seconds * FPS)
    assert truth["frames"] == frames == 58 and truth["size"] == [64, 64] and truth["version"] == 1
    assert set(truth["tracks"]) == {"mouth_open", "mouth_width", "blink", "head_dx", "head_dy", "head_angle"}
    assert all(len(v) == frames for v in truth["tracks"].values())
    info = probe_video(tmp_path / truth["files"]["video"])
    assert info.frame_count == frames and info.has_audio and info.audio_rate == 16000
    assert abs(info.audio_seconds - seconds) < 1e-3
    gt = load_truth(path)
    assert gt.portrait().shape == (64, 64, 3) and gt.labels().shape == (64, 64)
    assert np.array_equal(gt.labels(), render_labels(gt.identity))
    waveform, rate = load_audio(gt.audio)
    assert rate == 16000 and waveform.shape[1] == round(seconds * rate)


def test_mouth_is_closed_in_long_silences(sample20):
    waveform = load_audio(sample20.audio)[0][0].numpy()
    rms = frame_rms(waveform, sample20.sample_rate, sample20.frames)
    silent = rms < 0.003
    # Frames inside a silence of at least 7 frames (280 ms), two frames away from its edges.
    inner = np.array([silent[max(0, i - 3):i + 4].all() for i in range(sample20.frames)])
    assert inner.sum() >= 10
    assert sample20.tracks["mouth_open"][inner].max() < 0.05


def test_mouth_opening_follows_audio_energy(sample20):
    waveform = load_audio(sample20.audio)[0][0].numpy()
    rms = frame_rms(waveform, sample20.sample_rate, sample20.frames)
    assert np.corrcoef(rms, sample20.tracks["mouth_open"])[0, 1] > 0.5


def test_measured_opening_matches_truth_raw_and_after_mp4(sample20):
    truth = sample20.tracks
    raw = render_frames(sample20.identity, truth)
    assert np.corrcoef(measure_mouth_opening(raw), truth["mouth_open"])[0, 1] >= 0.9
    decoded = read_video_frames(sample20.video)
    assert decoded.shape[0] == sample20.frames
    assert np.corrcoef(measure_mouth_opening(decoded), truth["mouth_open"])[0, 1] >= 0.9


def test_dataset_is_resumable_and_cli_runs(tmp_path, capsys):
    manifest = make_dataset(tmp_path, count=2, seconds=0.4, seed=3)
    data = json.loads(manifest.read_text())
    assert data["samples"] == ["s00000", "s00001"] and data["count"] == 2
    first = [load_truth(tmp_path / f"{s}.json") for s in data["samples"]]
    assert first[0].identity != first[1].identity
    stamp = (tmp_path / "s00000.mp4").stat().st_mtime_ns
    parser = argparse.ArgumentParser()
    add_synth_command(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(tmp_path), "--count", "3", "--seconds", "0.4", "--seed", "3"])
    assert args.func(args) == 0 and str(tmp_path) in capsys.readouterr().out
    assert (tmp_path / "s00000.mp4").stat().st_mtime_ns == stamp  # skipped, not rewritten
    assert json.loads(manifest.read_text())["samples"] == ["s00000", "s00001", "s00002"]


@pytest.mark.parametrize("kwargs, message", [
    ({"seconds": 0.0}, "seconds"),
    ({"seconds": 1.0, "size": 36}, "size"),
    ({"seconds": 1.0, "size": 16}, "size"),
    ({"seconds": 1.0, "count": 0}, "count"),
])
def test_bad_inputs_are_refused(tmp_path, kwargs, message):
    kwargs = {"count": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_dataset(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="mouth_open"):
        render_frames(sample_identity(0), {"blink": np.zeros(3)})
