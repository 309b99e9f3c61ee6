"""MEMO's face analysis (``letstalk_core.face.analysis``) against insightface 0.7.3's own code.

The golden fixture ``tests/fixtures/face/`` (``scripts/make_face_fixtures.py``, run in a venv with
insightface 0.7.3, opencv-python-headless 4.10.0.84 (MEMO's pin), numpy 1.26.4, scikit-image 0.26) holds
tiny ONNX graphs with the published models' inputs/outputs, three images and what insightface returns.

Measured (project venv: numpy 2.x, onnxruntime CPU): boxes, keypoints and scores are *identical* (our
resize is bit-exact with ``cv2.resize``, so the detector sees the same input), the aligned 112x112 crops
are identical (``cv2.warpAffine`` bit-exact), the similarity matrix agrees to ~2e-5 (float32 Umeyama:
numpy 2.x vs 1.26 round differently) and embeddings to < 2e-6 abs (cosine 1 - 1e-7). The asserted
tolerances leave room for other numpy/onnxruntime builds: boxes/kps 1e-3 px, scores 1e-5, crops at most
1 grey level, embedding cosine >= 0.9999 and max abs diff <= 1e-3 x the embedding's max abs.
"""
from __future__ import annotations

import builtins
import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from letstalk_core.face import analysis as fa
from letstalk_core.face.crop import FaceDetector, make_detector

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "face"
IMAGES = ("two_faces", "portrait", "no_face")
BOX_TOL = 1e-3  # pixels
SCORE_TOL = 1e-5
COS_MIN = 0.9999
EMB_REL_TOL = 1e-3

needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                               reason="onnxruntime is not installed: `pip install onnxruntime` (in the `test` extra) "
                                      "to run the insightface equality tests")


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE / "golden.npz") as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    return {n: np.asarray(Image.open(FIXTURE / "images" / f"{n}.png").convert("RGB")) for n in IMAGES}


@pytest.fixture(scope="module")
def analyzer():
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed: `pip install onnxruntime` (in the `test` extra)")
    return fa.FaceAnalyzer.from_folder(FIXTURE, providers=["CPUExecutionProvider"])


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------- OpenCV bit-exactness

def test_resize_matches_cv2_bit_exact(golden):
    src = golden["resize/src"]
    cases = [k for k in golden if k.startswith("resize/") and k != "resize/src"]
    assert len(cases) == 5
    for key in cases:
        w, h = (int(v) for v in key.split("/")[1].split("x"))
        np.testing.assert_array_equal(fa.resize_bilinear_u8(src, w, h), golden[key], err_msg=key)


def test_warp_affine_matches_cv2_bit_exact(golden):
    src = golden["resize/src"]
    for m, expected in zip(golden["warp/matrices"], golden["warp/out"]):
        np.testing.assert_array_equal(fa.warp_affine_u8(src, m, 40, 48), expected)


# ---------------------------------------------------------------- detection

@pytest.mark.parametrize("name", IMAGES)
def test_detection_equals_insightface(analyzer, golden, images, name):
    faces = analyzer.detect(images[name])
    boxes, scores, kps = golden[f"{name}/boxes"], golden[f"{name}/scores"], golden[f"{name}/kps"]
    assert len(faces) == len(boxes), "not the same faces as insightface"
    if name != "no_face":
        assert len(faces) >= 2
    for face, box, score, k in zip(faces, boxes, scores, kps):
        np.testing.assert_allclose(face.box, box, atol=BOX_TOL, rtol=0)
        np.testing.assert_allclose(face.kps, k, atol=BOX_TOL, rtol=0)
        assert abs(face.score - score) <= SCORE_TOL


def test_nms_and_threshold_are_exercised(analyzer, images):
    det = analyzer.detector
    scores_list, _, _ = det._forward(np.zeros((640, 640, 3), np.uint8))
    assert sum(len(s) for s in scores_list) == 0  # nothing above 0.5 on a blank canvas
    # the two-face image has more candidates above the threshold than faces kept after NMS
    img = images["two_faces"]
    scale = 640 / img.shape[1]
    canvas = np.zeros((640, 640, 3), np.uint8)
    canvas[:int(img.shape[0] * scale), :640] = fa.resize_bilinear_u8(img, 640, int(img.shape[0] * scale))
    candidates = sum(len(s) for s in det._forward(canvas)[0])
    assert candidates > len(analyzer.detect(img))


def test_largest_face_is_memos_choice(analyzer, golden, images):
    for name in ("two_faces", "portrait"):
        i = int(golden[f"{name}/largest"])
        assert i > 0, "the fixture should have a largest face that is not the best-scoring one"
        face = analyzer.largest_face(images[name])
        np.testing.assert_allclose(face.box, golden[f"{name}/boxes"][i], atol=BOX_TOL, rtol=0)
    assert analyzer.largest_face(images["no_face"]) is None


@needs_ort
def test_batched_scrfd_and_max_num(golden, images):
    det = fa.ScrfdDetector(FIXTURE / "extra" / "scrfd_batched.onnx", providers=["CPUExecutionProvider"])
    assert det.batched and det.input_size == (640, 640) and det.use_kps and det.fmc == 3
    for max_num in (0, 1):
        det.max_num = max_num
        dets, kps = det.detect_raw(images["two_faces"])
        np.testing.assert_allclose(dets, golden[f"batched/max_num{max_num}/dets"], atol=BOX_TOL, rtol=0)
        np.testing.assert_allclose(kps, golden[f"batched/max_num{max_num}/kps"], atol=BOX_TOL, rtol=0)
    assert len(golden["batched/max_num1/dets"]) == 1 < len(golden["batched/max_num0/dets"])


@needs_ort
def test_scrfd_detector_is_a_face_crop_detector(golden, images):
    for det in (make_detector(f"scrfd:{FIXTURE / 'models' / fa.SCRFD_FILE}"), make_detector(f"memo:{FIXTURE}")):
        assert isinstance(det, FaceDetector)
        boxes = det.detect(images["two_faces"])
        h, w = images["two_faces"].shape[:2]
        ref = golden["two_faces/boxes"]
        assert len(boxes) == len(ref)
        for (x0, y0, x1, y1, s), r in zip(boxes, ref):
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            np.testing.assert_allclose([x0, y0, x1, y1], np.clip(r, 0, [w, h, w, h]), atol=BOX_TOL)
        assert det.detect(images["no_face"]) == []


# ---------------------------------------------------------------- alignment and embedding

@pytest.mark.parametrize("name", ["two_faces", "portrait"])
def test_alignment_equals_insightface(analyzer, golden, images, name):
    face = analyzer.largest_face(images[name])
    np.testing.assert_allclose(fa.estimate_norm(face.kps), golden[f"{name}/norm_matrix"], atol=1e-4, rtol=0)
    crop = fa.norm_crop(images[name], face.kps).astype(int)
    assert np.abs(crop - golden[f"{name}/aligned_rgb"]).max() <= 1


@pytest.mark.parametrize("name", IMAGES)
def test_embedding_equals_insightface(analyzer, golden, images, name, caplog):
    ref = golden[f"{name}/memo_embedding"]
    if name == "no_face":
        with pytest.raises(ValueError, match="no face found in the portrait.*crop it closer.*Face Crop"):
            fa.face_embedding(analyzer, images[name])
        with caplog.at_level("WARNING", logger="letstalk_core.face.analysis"):
            emb = fa.face_embedding(analyzer, images[name], allow_missing=True)
        assert emb.shape == (512,) and not emb.any() and not ref.any()
        assert "zero face embedding" in caplog.text
        return
    emb = fa.face_embedding(analyzer, images[name])
    assert emb.shape == (512,) and emb.dtype == np.float32
    assert _cos(emb, ref) >= COS_MIN
    assert np.abs(emb - ref).max() <= EMB_REL_TOL * np.abs(ref).max()
    # every face's embedding, as FaceAnalysis.get computes them
    for face, r in zip(analyzer.detect(images[name]), golden[f"{name}/embeddings"]):
        assert _cos(analyzer.embed(images[name], face), r) >= COS_MIN


@needs_ort
def test_arcface_mean_std_from_the_graph(golden, images):
    names = fa.onnx_first_node_names(FIXTURE / "models" / fa.ARCFACE_FILE)
    assert names[:2] == ["Conv_0", "Relu_1"]
    assert fa.arcface_input_norm(names) == tuple(golden["recognition/mean_std"]) == (127.5, 127.5)
    path = FIXTURE / "extra" / "arcface_mxnet.onnx"
    assert fa.onnx_first_node_names(path)[:2] == ["_minus0", "_mul0"]
    rec = fa.ArcFaceRecognizer(path, providers=["CPUExecutionProvider"])
    assert (rec.input_mean, rec.input_std) == tuple(golden["mxnet/mean_std"]) == (0.0, 1.0)
    i = int(golden["portrait/largest"])
    emb = rec.embed(images["portrait"], golden["portrait/kps"][i])
    assert _cos(emb, golden["mxnet/embedding"]) >= COS_MIN


def test_runtime_is_small(analyzer, images):
    t = time.perf_counter()
    fa.face_embedding(analyzer, images["portrait"])
    assert time.perf_counter() - t < 5.0


# ---------------------------------------------------------------- errors

def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for call in (lambda: fa.FaceAnalyzer.from_folder(FIXTURE),
                 lambda: fa.ScrfdDetector(FIXTURE / "models" / fa.SCRFD_FILE),
                 lambda: make_detector(f"memo:{FIXTURE}")):
        with pytest.raises(ImportError, match=r"pip install onnxruntime.*onnxruntime-gpu"):
            call()


@needs_ort
def test_missing_model_files_name_the_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fa.FaceAnalyzer.from_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"scrfd_10g_bnkps\.onnx and glintr100\.onnx") as err:
        fa.FaceAnalyzer.from_folder(tmp_path)
    assert str(tmp_path) in str(err.value)
    models = tmp_path / "misc" / "face_analysis" / "models"
    models.mkdir(parents=True)
    shutil.copy(FIXTURE / "models" / fa.SCRFD_FILE, models)
    with pytest.raises(FileNotFoundError, match=r"lacks glintr100\.onnx") as err:
        fa.FaceAnalyzer.from_folder(tmp_path)
    assert str(models) in str(err.value)
    shutil.copy(FIXTURE / "models" / fa.ARCFACE_FILE, models)
    assert fa.find_face_models(tmp_path) == (models / fa.SCRFD_FILE, models / fa.ARCFACE_FILE)
    assert fa.find_face_models(tmp_path / "misc" / "face_analysis")[0] == models / fa.SCRFD_FILE


@needs_ort
def test_swapped_models_are_refused(tmp_path):
    for name, src in ((fa.SCRFD_FILE, fa.ARCFACE_FILE), (fa.ARCFACE_FILE, fa.SCRFD_FILE)):
        shutil.copy(FIXTURE / "models" / src, tmp_path / name)
    with pytest.raises(ValueError, match="not a face detection model"):
        fa.FaceAnalyzer.from_folder(tmp_path, providers=["CPUExecutionProvider"])


def test_bad_images_are_refused(analyzer):
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match="RGB uint8"):
            analyzer.detect(bad)


def test_default_providers_prefer_cuda():
    class FakeOrt:
        def __init__(self, available):
            self.available = available

        def get_available_providers(self):
            return self.available

    assert fa.default_providers(FakeOrt(["CPUExecutionProvider", "CUDAExecutionProvider"])) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fa.default_providers(FakeOrt(["CPUExecutionProvider"])) == ["CPUExecutionProvider"]


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, letstalk_core.face; "
            "print(','.join(m for m in ('onnxruntime', 'cv2', 'skimage', 'insightface') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent.parent)
    assert out.stdout.strip() == ""
