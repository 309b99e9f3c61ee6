"""A conversation with the demo model, through the CLI, on people and speech training never saw.

Two people side by side in one photo, two speech tracks taking turns (A 0–10 s, B 8–20 s: 2 s of overlap), 20 s:
each face's lips follow its own track's ground truth during its own speech, and its mouth stays at the listening
level of a silent run during the other's turn; outside both boxes the frames are the photo's; the video has
exactly the frames of 20 s and the mix of the two tracks as its sound. Three faces work the same way; memory stays
flat from 10 s to 60 s. A contact sheet of the frames is saved to outputs/conversation/ to look at.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from letstalk_core.cli import main
from letstalk_core.data.procedural import measure_mouth_opening, render_portrait, sample_identity, sample_seeds
from letstalk_core.data.speech_synth import synthesize_speech
from letstalk_core.eval.metrics import lip_sync
from letstalk_core.io import load_audio, probe_video, read_video_frames, save_wav, tensor_to_uint8

REPO = Path(__file__).resolve().parents[2]
SHEETS = REPO / "outputs" / "conversation"
FPS, RATE, TILE = 25, 16000, 128
#: held out: training draws its people and voices from dataset seed 1000, the shipped demo and assets 777xxx
PEOPLE = (424_242, 515_151, 606_060)


def _photo(n: int, width: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``n`` procedural people rendered at 128 px side by side on a plain backdrop, and their boxes."""
    img = np.empty((224, width, 3), np.uint8)
    img[:] = (150, 160, 170)
    img[180:] = (96, 84, 70)
    boxes = []
    for i in range(n):
        x0 = round((i + 0.5) * width / n - TILE / 2)
        img[40:40 + TILE, x0:x0 + TILE] = render_portrait(sample_identity(sample_seeds(PEOPLE[i])["identity"]), TILE)
        boxes.append((x0, 40, x0 + TILE, 40 + TILE))
    return img, boxes


def _track(person: int, start: float, stop: float, total: float):
    """Silence, then the person's speech from ``start`` to ``stop`` s (the file ends there); with its ground truth
    mouth opening per frame over ``total`` s (0 outside the speech)."""
    speech = synthesize_speech(stop - start, seed=sample_seeds(PEOPLE[person])["speech"], sample_rate=RATE)
    wave = np.concatenate([np.zeros(round(start * RATE), np.float32), speech.waveform])
    truth = np.zeros(round(total * FPS), np.float32)
    mouth = speech.frame_tracks(FPS)["mouth_open"]
    first = round(start * FPS)
    truth[first:first + len(mouth)] = mouth[:len(truth) - first]
    return wave, truth


def _generate(d: Path, photo: np.ndarray, boxes, waves, out: Path, *extra) -> list[str]:
    from PIL import Image

    Image.fromarray(photo).save(d / "photo.png")
    args = ["generate", "--checkpoint", "demo", "--image", str(d / "photo.png"), "--out", str(out),
            "--face", "; ".join(",".join(map(str, b)) for b in boxes), *extra]
    for i, wave in enumerate(waves):
        save_wav(d / f"voice_{out.stem}_{i}.wav", torch.from_numpy(wave)[None], RATE)
        args += ["--audio", str(d / f"voice_{out.stem}_{i}.wav")]
    return args


def _mouths(video: Path, boxes) -> tuple[np.ndarray, list[np.ndarray]]:
    frames = tensor_to_uint8(read_video_frames(video))
    return frames, [measure_mouth_opening(frames[:, y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]


def _sheet(frames: np.ndarray, name: str, times) -> Path:
    from PIL import Image

    SHEETS.mkdir(parents=True, exist_ok=True)
    picks = [frames[min(len(frames) - 1, round(t * FPS))] for t in times]
    rows = [np.concatenate(picks[i:i + 4], 1) for i in range(0, len(picks), 4)]
    path = SHEETS / name
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    return path


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("conversation")
    photo, boxes = _photo(2, 448)
    (a, truth_a), (b, truth_b) = _track(0, 0, 10, 20), _track(1, 8, 20, 20)
    out = d / "two.mp4"
    assert main(_generate(d, photo, boxes, [a, b], out)) == 0
    silent = d / "silent.mp4"
    quiet = [np.zeros(10 * RATE, np.float32)] * 2
    assert main(_generate(d, photo, boxes, quiet, silent)) == 0
    return d, photo, boxes, out, (a, b), (truth_a, truth_b), silent


def test_two_faces_each_speak_their_own_track_and_listen_otherwise(two, capsys):
    d, photo, boxes, out, waves, truths, silent = two
    frames, (mouth_a, mouth_b) = _mouths(out, boxes)
    _, silent_mouths = _mouths(silent, boxes)
    assert len(frames) == 500  # 20 s at 25 fps, exactly
    turns = {"A": (mouth_a, truths[0], slice(0, 250), slice(250, 500)),  # A speaks 0-10 s, only B speaks 10-20 s
             "B": (mouth_b, truths[1], slice(200, 500), slice(0, 200))}  # B speaks 8-20 s, only A speaks 0-8 s
    report = []
    for (name, (mouth, truth, speaking, listening)), still in zip(turns.items(), silent_mouths):
        sync = lip_sync(mouth[speaking], truth[speaking], max_lag=3)
        level = float(still.mean())  # the listening level: the same face, silent tracks
        heard = float(mouth[listening].mean())
        report.append(f"{name}: r = {sync.best_corr:.2f} at lag {sync.best_lag} in its speech; mouth while the other "
                      f"speaks {heard:.5f}, silent run {level:.5f}, speaking {float(mouth[speaking].mean()):.5f}")
        assert sync.best_corr >= 0.75 and abs(sync.best_lag) <= 1, report[-1]
        assert heard <= level * 1.10 + 1e-5, report[-1]  # no larger than listening (measurement noise: 10 %)
    path = _sheet(frames, "two_faces.png", [1, 4, 7, 8.5, 9.5, 11, 15, 19])
    with capsys.disabled():
        print("\n" + "\n".join(report) + f"\ncontact sheet: {path}")


def test_outside_both_boxes_the_video_is_the_photo_and_its_sound_is_the_mix(two):
    """The frames handed to the encoder are the photo's outside the boxes, exactly (tests/core/test_conversation);
    through H.264 (lossy, 4:2:0) the mp4 is within a level or two of them."""
    from letstalk_core.audio.tracks import align_tracks, mix_tracks

    d, photo, boxes, out, waves, truths, silent = two
    frames = tensor_to_uint8(read_video_frames(out))
    outside = np.ones(photo.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        outside[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False  # the codec's 8×8 blocks at the edges
    diff = np.abs(frames[:, outside].astype(np.int16) - photo[outside].astype(np.int16))
    # what H.264 alone does to this photo (4:2:0 chroma blurs its sharp colour edges by up to ~9 levels)
    from letstalk_core.io import VideoWriter

    with VideoWriter(d / "photo_only.mp4", FPS) as w:
        w.write(np.repeat(photo[None], 25, 0))
    codec = np.abs(tensor_to_uint8(read_video_frames(d / "photo_only.mp4"))[:, outside].astype(np.int16)
                   - photo[outside].astype(np.int16))
    stats = (diff.mean(), np.percentile(diff, 99.9), codec.mean(), np.percentile(codec, 99.9))
    assert diff.mean() <= codec.mean() + 0.25 and np.percentile(diff, 99.9) <= 12, stats
    print(f"\noutside the boxes: mean |video - photo| {stats[0]:.2f} levels (99.9th percentile {stats[1]:.0f}); the photo "
          f"alone through H.264: {stats[2]:.2f} ({stats[3]:.0f})")
    info = probe_video(out)
    assert info.frame_count == 500 and info.has_audio and abs(info.audio_seconds - 20.0) < 0.05
    sound, rate = load_audio(out)
    mix = mix_tracks(align_tracks([(torch.from_numpy(w), RATE) for w in waves])[0])[0].numpy()
    got = sound[0].numpy()[:len(mix)]
    n = min(len(got), len(mix))
    assert rate == RATE and np.corrcoef(got[:n], mix[:n])[0, 1] > 0.98  # AAC: close, not bit-exact


def test_three_faces_in_one_photo(tmp_path, capsys):
    photo, boxes = _photo(3, 640)
    tracks = [_track(0, 0, 4, 12), _track(1, 4, 8, 12), _track(2, 8, 12, 12)]
    out = tmp_path / "three.mp4"
    assert main(_generate(tmp_path, photo, boxes, [w for w, _ in tracks], out)) == 0
    frames, mouths = _mouths(out, boxes)
    assert len(frames) == 300
    lines = []
    for i, (mouth, (_, truth)) in enumerate(zip(mouths, tracks)):
        own = slice(i * 100, (i + 1) * 100)
        others = np.r_[0:i * 100, (i + 1) * 100:300]
        sync = lip_sync(mouth[own], truth[own], max_lag=3)
        lines.append(f"face {i + 1}: r = {sync.best_corr:.2f} at lag {sync.best_lag}; mouth {mouth[own].mean():.5f} "
                     f"speaking, {mouth[others].mean():.5f} listening")
        assert sync.best_corr >= 0.75 and abs(sync.best_lag) <= 1, lines[-1]
        assert mouth[others].mean() < 0.25 * mouth[own].mean(), lines[-1]
    outside = np.ones(photo.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        outside[y0 - 8:y1 + 8, x0 - 8:x1 + 8] = False
    assert np.abs(frames[:, outside].astype(np.int16) - photo[outside]).mean() < 1.0
    path = _sheet(frames, "three_faces.png", [1, 3, 5, 7, 9, 11, 11.5, 11.9])
    with capsys.disabled():
        print("\n" + "\n".join(lines) + f"\ncontact sheet: {path}")


def test_four_boxes_of_which_two_overlap_are_refused(tmp_path, capsys):
    photo, _ = _photo(2, 448)
    boxes = [(0, 40, 100, 140), (110, 40, 210, 140), (220, 40, 320, 140), (300, 60, 380, 140)]
    waves = [np.zeros(RATE, np.float32)] * 4
    assert main(_generate(tmp_path, photo, boxes, waves, tmp_path / "four.mp4")) == 2
    err = capsys.readouterr().err
    assert "face box 3 (220, 40)–(320, 140) and face box 4 (300, 60)–(380, 140)" in err, err
    assert not (tmp_path / "four.mp4").exists()


# VmHWM, not getrusage's ru_maxrss: Linux keeps the pre-exec peak in ru_maxrss, so a child forked from a large
# pytest process reported the parent's 2378 MiB for both lengths.
_PEAK = """
import sys
from letstalk_core.cli import main
code = main(sys.argv[1:])
print("PEAK", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
sys.exit(code)
"""


def test_memory_stays_flat_from_10_to_60_seconds(tmp_path, capsys):
    photo, boxes = _photo(2, 448)
    peaks = {}
    for seconds in (10, 60):
        half = seconds / 2
        waves = [_track(0, 0, half + 1, seconds)[0], _track(1, half - 1, seconds, seconds)[0]]
        args = _generate(tmp_path, photo, boxes, waves, tmp_path / f"s{seconds}.mp4", "--threads", "2")
        r = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        peaks[seconds] = int(r.stdout.split("PEAK")[-1].split()[0]) * 1024
        assert probe_video(tmp_path / f"s{seconds}.mp4", decode=False).frame_count == seconds * FPS
    ratio = peaks[60] / peaks[10]
    with capsys.disabled():
        print(f"\ntwo faces: peak RSS {peaks[10] / 2**20:.0f} MiB at 10 s, {peaks[60] / 2**20:.0f} MiB at 60 s "
              f"({ratio:.3f})")
    assert ratio <= 1.10


class _FakeHaar:
    """Stands in for OpenCV's detector (not installed here): the tiles of the photo, right to left."""

    boxes: list = []

    def __init__(self, **_):
        pass

    def detect(self, frame):
        return [(x0, y0, x1, y1, 1.0) for x0, y0, x1, y1 in reversed(self.boxes)]


def test_faces_found_by_a_detector_are_taken_left_to_right(tmp_path, monkeypatch, capsys):
    import letstalk_core.face.crop as face  # where haar_detector builds it

    photo, boxes = _photo(2, 448)
    monkeypatch.setattr(face, "HaarDetector", type("Haar", (_FakeHaar,), {"boxes": boxes}))
    waves = [_track(0, 0, 1, 2)[0], _track(1, 1, 2, 2)[0]]
    args = _generate(tmp_path, photo, boxes, waves, tmp_path / "found.mp4", "--face-scale", "1.0")
    args[args.index("--face") + 1] = "haar"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 faces found, left to right: 48,40,176,168; 272,40,400,168" in err, err
    assert probe_video(tmp_path / "found.mp4").frame_count == 50
    monkeypatch.setattr(face, "HaarDetector", type("Haar", (_FakeHaar,), {"boxes": boxes + [(0, 0, 40, 40)]}))
    assert main(args) == 2
    assert "3 faces found (0,0,40,40; 48,40,176,168; 272,40,400,168) but 2 speech tracks" in capsys.readouterr().err


def test_finding_faces_without_opencv_says_what_to_do(tmp_path, capsys):
    try:
        import cv2  # noqa: F401
        pytest.skip("OpenCV is installed here")
    except ImportError:
        pass
    photo, boxes = _photo(2, 448)
    args = _generate(tmp_path, photo, boxes, [np.zeros(RATE, np.float32)] * 2, tmp_path / "x.mp4")
    del args[args.index("--face"):args.index("--face") + 2]  # several tracks, no --face: the default detector
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs OpenCV (pip install opencv-python-headless)" in err and "--face \"x0,y0,x1,y1" in err, err


def test_a_conversation_resumes_from_each_faces_clips(tmp_path, capsys):
    """--resume-dir keeps each face's clips in its own subfolder until the composed video is written. A rerun over
    the folder replays face 1 from its clips; face 2's folder, missing clips, is started afresh with a warning
    (a broken folder never gives a wrong video); the video is the same, frame for frame."""
    import shutil

    from tests.core.helpers import assert_same_video

    photo, boxes = _photo(2, 448)
    waves = [_track(0, 0, 2, 3)[0], _track(1, 1, 3, 3)[0]]
    run = tmp_path / "run"
    full = _generate(tmp_path, photo, boxes, waves, tmp_path / "full.mp4", "--resume-dir", str(run),
                     "--keep-resume-dir")
    assert main(full) == 0
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["face_1", "face_2"]
    clips = sorted((run / "face_2").glob("clip_*.npy"))
    assert len(clips) > 3
    for extra in clips[3:]:  # face 2's folder loses clips its state says are there
        extra.unlink()
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    capsys.readouterr()
    again = _generate(tmp_path, photo, boxes, waves, tmp_path / "again.mp4", "--resume-dir", str(partial))
    assert main(again) == 0
    err = capsys.readouterr().err
    assert "face 1 of 2" in err and "resuming after clip 6" in err, err  # face 1: every clip replayed
    assert "could not be used" in err and "starting afresh" in err, err  # face 2
    assert_same_video(tmp_path / "full.mp4", tmp_path / "again.mp4")
    assert not partial.exists() or not any(partial.rglob("clip_*.npy"))  # removed once the video is complete
