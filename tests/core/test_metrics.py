"""Video metrics (letstalk_core.eval): lip-sync lag, sRGB -> Lab, CIEDE2000 against Sharma et al.'s
published test data, colour drift (trend, chunk invariance), clip-boundary jump, flicker, and
evaluate_video / `letstalk eval` end to end on a small mp4."""
import argparse
import json
import math

import numpy as np
import pytest

from letstalk_core.eval import metrics as M
from letstalk_core.eval import report as R
from letstalk_core.eval.report import (
    add_eval_command,
    evaluate_video,
    format_table,
    iter_video_chunks,
    load_eval_truth,
)

# ------------------------------------------------------------------------------------------------
# lip sync


def _smooth_track(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.standard_normal(n + 8), np.ones(5) / 5, mode="valid")[:n]
    return x - x.min()


@pytest.mark.parametrize("shift", [3, -2, 0])
def test_lip_sync_recovers_shift_and_sign(shift):
    truth = _smooth_track(300)
    rng = np.random.default_rng(1)
    measured = np.roll(truth, shift) + 0.1 * rng.standard_normal(truth.size)  # measured[t] = truth[t - shift]
    result = M.lip_sync(measured, truth, max_lag=5)
    assert result.best_lag == shift  # positive = generated lags behind the truth
    assert result.best_corr > 0.9
    if shift:
        assert result.corr_at_zero < result.best_corr - 0.05


def test_lip_sync_constant_measured_is_zero_and_bad_inputs():
    truth = _smooth_track(50)
    assert M.lip_sync(np.full(50, 0.3), truth) == M.LipSync(0.0, 0, 0.0)
    with pytest.raises(ValueError, match="same frames"):
        M.lip_sync(truth[:-1], truth)
    with pytest.raises(ValueError, match="at least 10"):
        M.lip_sync(truth[:9], truth[:9])
    with pytest.raises(ValueError, match="truth is constant"):
        M.lip_sync(truth, np.ones(50))
    with pytest.raises(ValueError, match="max_lag <= 2"):
        M.lip_sync(truth[:12], truth[:12], max_lag=5)
    bad = truth.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        M.lip_sync(bad, truth)


# ------------------------------------------------------------------------------------------------
# colour


def test_srgb_to_lab_known_colours():
    lab = M.srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.01)
    np.testing.assert_allclose(lab[2], [0.0, 0.0, 0.0], atol=1e-9)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(M.srgb_to_lab(rgb), M.srgb_to_lab(rgb / 255.0), atol=1e-9)  # LUT == formula
    with pytest.raises(ValueError, match="divide 0..255"):
        M.srgb_to_lab(np.array([255.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="3 channels"):
        M.srgb_to_lab(np.zeros((4, 4), dtype=np.uint8))


# Sharma, Wu & Dalal (2005), supplementary test data: (Lab1, Lab2, ΔE00 to 4 decimals).
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_sharma_reference_pairs():
    lab1 = np.array([p[0] for p in SHARMA_PAIRS])
    lab2 = np.array([p[1] for p in SHARMA_PAIRS])
    expected = np.array([p[2] for p in SHARMA_PAIRS])
    np.testing.assert_array_equal(np.round(M.delta_e2000(lab1, lab2), 4), expected)
    np.testing.assert_array_equal(np.round(M.delta_e2000(lab2, lab1), 4), expected)  # symmetric
    assert float(M.delta_e2000([50, 10, 10], [50, 10, 10])) == 0.0
    assert float(M.delta_e76([50, 0, 0], [50, 3, 4])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="3 values"):
        M.delta_e2000([50, 0], [50, 0])


# ------------------------------------------------------------------------------------------------
# masks and colour drift


def test_erode_square_and_border():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:10, 3:11] = True
    eroded = M.erode(mask, 2)
    expected = np.zeros_like(mask)
    expected[4:8, 5:9] = True
    np.testing.assert_array_equal(eroded, expected)
    full = M.erode(np.ones((6, 6), dtype=bool), 1)  # outside the image counts as False
    assert full.sum() == 16 and not full[0].any()
    np.testing.assert_array_equal(M.erode(mask, 0), mask)
    with pytest.raises(ValueError, match="integer >= 0"):
        M.erode(mask, -1)


def _face_masks(size=16):
    face = np.zeros((size, size), dtype=bool)
    face[4:12, 4:12] = True
    hair = np.zeros((size, size), dtype=bool)
    hair[0:3, :] = True
    return {"face": face, "hair": hair}


def _ramp_video(frames=600, size=16, start=110, stop=130):
    """Gray background 90, hair 40, face gray ramping linearly from ``start`` to ``stop``."""
    video = np.full((frames, size, size, 3), 90, dtype=np.uint8)
    video[:, 0:3] = 40
    levels = np.round(start + (stop - start) * np.arange(frames) / (frames - 1)).astype(np.uint8)
    video[:, 4:12, 4:12] = levels[:, None, None, None]
    return video


def test_colour_drift_ramp_slope_and_constant_video():
    fps = 10
    video = _ramp_video()  # 60 s, face L from L(110) to L(130)
    portrait = video[0].copy()
    drift = M.colour_drift(video, portrait, _face_masks(), fps, window_seconds=10.0)
    assert set(drift.regions) == {"face", "hair", "frame"}
    face = drift["face"]
    assert len(face.windows) == 6
    lab = M.srgb_to_lab(np.array([[110] * 3, [130] * 3], dtype=np.uint8))
    expected = (lab[1, 0] - lab[0, 0]) / 1.0  # gray: ΔE00 ≈ ΔL near L = 50, over one minute
    assert face.slope_per_min == pytest.approx(expected, rel=0.05)
    assert face.max == pytest.approx(face.windows[-1]) and face.windows == sorted(face.windows)
    assert drift["hair"].max == 0.0 and drift["hair"].slope_per_min == 0.0
    assert 0 < drift["frame"].slope_per_min < face.slope_per_min  # the face is a quarter of the frame

    constant = np.repeat(portrait[None], 100, axis=0)
    still = M.colour_drift(constant, portrait, _face_masks(), fps)
    for region in still.regions.values():
        assert region.max == 0.0 and region.slope_per_min == 0.0 and all(v == 0.0 for v in region.windows)


def test_colour_drift_windows_partial_last():
    portrait = np.full((4, 4, 3), 100, dtype=np.uint8)
    video = np.repeat(portrait[None], 25 * 10 + 24, axis=0)  # 10 s + 0.96 s at 25 fps
    assert len(M.colour_drift(video, portrait, None, 25, window_seconds=5.0)["frame"].windows) == 2  # < 1 s dropped
    video = np.repeat(portrait[None], 25 * 10 + 25, axis=0)  # 10 s + 1 s
    assert len(M.colour_drift(video, portrait, None, 25, window_seconds=5.0)["frame"].windows) == 3
    assert len(M.colour_drift(video[:5], portrait, None, 25)["frame"].windows) == 1  # only window is kept


def test_region_means_equal_per_pixel_lab_means():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    masks = {"spots": rng.random((20, 24)) < 0.3}
    got = M.ColourDriftAccumulator(frames[0], masks, 25)._mean_lab(frames)
    lab = M.srgb_to_lab(frames)
    for i in range(3):
        np.testing.assert_allclose(got[i, 0], lab[i][masks["spots"]].mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(got[i, 1], lab[i].reshape(-1, 3).mean(axis=0), atol=1e-9)


def _noisy_video(frames=50, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (1, size, size, 3))
    drift = np.cumsum(rng.integers(-2, 3, (frames, 1, 1, 3)), axis=0)
    jumps = (np.arange(frames) // 16 * 7)[:, None, None, None]
    return np.clip(base + drift + jumps + rng.integers(0, 4, (frames, size, size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("chunk", [1, 2, 7, 16, 50])
def test_accumulators_chunked_equal_whole(chunk):
    video = _noisy_video()
    portrait, masks = video[0], _face_masks()
    whole = (M.colour_drift(video, portrait, masks, 10, window_seconds=1.0),
             M.boundary_jump(video, 16), M.flicker(video, 16))
    drift = M.ColourDriftAccumulator(portrait, masks, 10, window_seconds=1.0)
    jump, flick = M.BoundaryJumpAccumulator(16), M.FlickerAccumulator(16)
    for s in range(0, len(video), chunk):
        for acc in (drift, jump, flick):
            acc.update(video[s:s + chunk])
    d = drift.result()
    for name, region in whole[0].regions.items():
        np.testing.assert_allclose(d[name].windows, region.windows, rtol=1e-12, atol=1e-12)
        assert d[name].slope_per_min == pytest.approx(region.slope_per_min, rel=1e-9, abs=1e-12)
    j, f = jump.result(), flick.result()
    assert (j.boundary_count, j.within_count) == (whole[1].boundary_count, whole[1].within_count) == (3, 46)
    assert j.boundary_mean == pytest.approx(whole[1].boundary_mean) and j.within_mean == pytest.approx(whole[1].within_mean)
    assert f.count == whole[2].count == 48 - 2 * 3  # second differences touching one of the 3 seams left out
    assert f.flicker == pytest.approx(whole[2].flicker) and f.frame_change == pytest.approx(whole[2].frame_change)


def test_pixel_drift_is_flat_for_motion_and_climbs_for_decay():
    rng = np.random.default_rng(0)
    portrait = rng.integers(60, 200, (16, 16, 3)).astype(np.uint8)
    frames = 300  # 30 s at 10 fps
    moving = np.stack([np.roll(portrait, (i % 4) - 2, axis=1) for i in range(frames)])  # motion only
    flat = M.pixel_drift(moving, portrait, 10)
    assert len(flat.windows) == 3 and abs(flat.slope_per_min) < 1e-9 and flat.max > 0
    noise = rng.normal(0, 1, (frames, 16, 16, 3)) * np.linspace(0, 40, frames)[:, None, None, None]
    decaying = np.clip(portrait.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)  # blotches that grow
    d = M.pixel_drift(decaying, portrait, 10)
    assert d.windows[0] < d.windows[1] < d.windows[2] and d.slope_per_min > 20
    assert M.colour_drift(decaying, portrait, None, 10)["frame"].max < 3  # mean colour barely moves: ΔE misses it
    acc = M.PixelDriftAccumulator(portrait, 10)
    for s0 in range(0, frames, 7):
        acc.update(decaying[s0:s0 + 7])
    np.testing.assert_allclose(acc.result().windows, d.windows, rtol=1e-12)
    with pytest.raises(ValueError, match="portrait at the video's size"):
        M.pixel_drift(decaying[:, :8], portrait, 10)


# ------------------------------------------------------------------------------------------------
# boundary jump and flicker


def _brightness_video(levels, size=8):
    return np.repeat(np.asarray(levels, dtype=np.uint8)[:, None, None, None], size, axis=1).repeat(size, axis=2).repeat(3, axis=3)


def test_boundary_jump_detects_clip_seams():
    t = np.arange(64)
    seams = _brightness_video(60 + t + 30 * (t // 16))  # +1 per frame, +31 at each clip start
    result = M.boundary_jump(seams, 16)
    assert result.boundary_count == 3 and result.within_count == 60
    assert result.within_mean == pytest.approx(1.0) and result.boundary_mean == pytest.approx(31.0)
    assert result.ratio > 20
    smooth = M.boundary_jump(_brightness_video(60 + t), 16)
    assert smooth.ratio == pytest.approx(1.0)
    assert math.isnan(M.boundary_jump(_brightness_video(60 + t[:16]), 16).ratio)  # one clip: no boundary


def test_flicker_alternating_vs_ramp():
    t = np.arange(40)
    alternating = M.flicker(_brightness_video(100 + 20 * (t % 2)), 16)
    ramp = M.flicker(_brightness_video(60 + 2 * t), 16)
    assert alternating.flicker == pytest.approx(40.0) and alternating.ratio == pytest.approx(2.0)
    assert ramp.flicker == 0.0 and ramp.ratio == 0.0
    seams = M.flicker(_brightness_video(60 + t + 30 * (t // 16)), 16)  # smooth within clips, jumps at seams
    assert seams.flicker == 0.0 and seams.count == 40 - 2 - 2 * 2
    assert M.flicker(_brightness_video(60 + t + 30 * (t // 16))).flicker > 1  # without clip_frames: seams count
    with pytest.raises(ValueError, match="smaller than the 4x4"):
        M.flicker(np.zeros((3, 2, 2, 3), dtype=np.uint8))


def test_bad_inputs_are_actionable():
    portrait = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="portrait coordinates"):
        M.ColourDriftAccumulator(portrait, {"face": np.ones((8, 8), dtype=bool)}, 25)
    with pytest.raises(ValueError, match="erode it less"):
        M.ColourDriftAccumulator(portrait, {"face": np.zeros((16, 16), dtype=bool)}, 25)
    with pytest.raises(ValueError, match="bool array"):
        M.ColourDriftAccumulator(portrait, {"face": np.ones((16, 16), dtype=np.uint8)}, 25)
    with pytest.raises(ValueError, match="fps"):
        M.ColourDriftAccumulator(portrait, None, 0)
    acc = M.ColourDriftAccumulator(portrait, None, 25)
    with pytest.raises(ValueError, match="resize/crop the portrait"):
        acc.update(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="call update"):
        acc.result()
    with pytest.raises(ValueError, match="uint8 \\[N, H, W, 3\\]"):
        M.boundary_jump(np.zeros((4, 8, 8, 3), dtype=np.float32), 16)
    with pytest.raises(ValueError, match="clip_frames"):
        M.boundary_jump(np.zeros((4, 8, 8, 3), dtype=np.uint8), 0)


# ------------------------------------------------------------------------------------------------
# whole video


SIZE, FPS, FRAMES = 64, 10, 48


def _talking_frames(track):
    """Skin-coloured square face on gray, a dark mouth box whose height follows ``track`` (0..1)."""
    frames = np.empty((len(track), SIZE, SIZE, 3), dtype=np.uint8)
    frames[:] = (120, 120, 120)
    frames[:, 8:56, 12:52] = (220, 170, 140)
    for i, v in enumerate(track):
        h = round(2 + 12 * float(v))
        frames[i, 36:36 + h, 22:42] = (60, 20, 30)
    return frames


def _measure(frames):
    """Test stand-in for the procedural mouth measure: dark rows in the mouth area."""
    region = frames[:, 30:56, 22:42].astype(np.float64).mean(axis=-1)
    return (region < 110).mean(axis=(1, 2)) * 26


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    from PIL import Image

    from letstalk_core.io.video import VideoWriter

    d = tmp_path_factory.mktemp("eval")
    track = _smooth_track(FRAMES, seed=3)
    track = track / track.max()
    frames = _talking_frames(track)
    with VideoWriter(d / "talk.mp4", FPS) as out:
        out.write(frames[:20])
        out.write(frames[20:])
    Image.fromarray(frames[0]).save(d / "talk_portrait.png")
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[8:56, 12:52] = 1
    labels[36:52, 22:42] = 4
    labels[8:18, 12:52] = 2
    Image.fromarray(labels).save(d / "talk_labels.png")
    truth = {"version": 1, "seed": 0, "fps": FPS, "size": [SIZE, SIZE], "sample_rate": 16000, "frames": FRAMES,
             "seconds": FRAMES / FPS, "identity": {}, "tracks": {"mouth_open": track.tolist()},
             "files": {"video": "talk.mp4", "audio": "talk.wav", "portrait": "talk_portrait.png", "labels": "talk_labels.png"}}
    (d / "talk.json").write_text(json.dumps(truth))
    return d, track, frames


def test_iter_video_chunks_matches_read_video_frames(talking):
    from letstalk_core.io.image import tensor_to_uint8
    from letstalk_core.io.video import read_video_frames

    d, _, _ = talking
    chunks = list(iter_video_chunks(d / "talk.mp4", chunk=20))
    assert [c.shape[0] for c in chunks] == [20, 20, 8]
    np.testing.assert_array_equal(np.concatenate(chunks), tensor_to_uint8(read_video_frames(d / "talk.mp4")))


def test_evaluate_video_end_to_end(talking):
    d, track, frames = talking
    masks = {"face": M.erode(np.pad(np.ones((48, 40), bool), ((8, 8), (12, 12))), 3)}
    result = evaluate_video(d / "talk.mp4", clip_frames=16, portrait=frames[0], masks=masks, truth_mouth=track,
                            measure_mouth=_measure, chunk=13)
    json.dumps(result, allow_nan=False)
    assert result["frames"] == FRAMES and result["seconds"] == pytest.approx(FRAMES / FPS)
    assert result["lipsync_best_lag"] == 0 and result["lipsync_corr"] > 0.9
    assert result["lipsync_corr_at_0"] == result["lipsync_corr"]
    for key in ("face_de_max", "face_de_slope_per_min", "frame_de_max", "boundary_jump_ratio", "boundary_mean",
                "within_mean", "flicker", "flicker_ratio"):
        assert isinstance(result[key], float), key
    assert isinstance(result["face_de_windows"], list) and len(result["face_de_windows"]) == 1
    generic = evaluate_video(d / "talk.mp4", clip_frames=16)  # no portrait: drift vs. the first frame
    assert "lipsync_corr" not in generic and "face_de_max" not in generic and generic["frame_de_max"] >= 0

    table = format_table([("talk", result), ("generic", generic)])
    lines = table.splitlines()
    assert lines[0].startswith("| video | lipsync_corr |") and len(lines) == 4
    assert lines[3].split("|")[2].strip() == "–"  # generic has no lip sync

    with pytest.raises(ValueError, match="one mouth value per video frame"):
        evaluate_video(d / "talk.mp4", clip_frames=16, truth_mouth=track[:-1], measure_mouth=_measure)
    with pytest.raises(ValueError, match="together"):
        evaluate_video(d / "talk.mp4", clip_frames=16, truth_mouth=track)
    with pytest.raises(ValueError, match="video's size"):
        evaluate_video(d / "talk.mp4", clip_frames=16, portrait=frames[0, :32])
    with pytest.raises(FileNotFoundError):
        evaluate_video(d / "missing.mp4", clip_frames=16)


def test_eval_command_with_truth(talking, monkeypatch, capsys):
    d, _, _ = talking
    truth = load_eval_truth(d / "talk.json")
    assert set(truth["masks"]) == {"face", "hair"} and truth["portrait"].shape == (SIZE, SIZE, 3)
    assert truth["masks"]["hair"].sum() == 4 * 34  # 10 x 40 label area eroded by 3 px
    monkeypatch.setattr(R, "_procedural_mouth_measure", lambda: _measure)
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", str(d / "talk.mp4"), "--clip-frames", "16", "--truth", str(d / "talk.json"),
                              "--json", str(d / "out.json")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| video |" in printed and "face_de_max" in printed and "hair_de_max" in printed
    saved = json.loads((d / "out.json").read_text())
    assert saved[str(d / "talk.mp4")]["lipsync_best_lag"] == 0
