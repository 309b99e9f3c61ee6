"""Regenerate the face-analysis golden fixture (``tests/fixtures/face/``) from insightface's own code.

MEMO computes its portrait embedding with insightface 0.7.3 ``FaceAnalysis`` (SCRFD ``scrfd_10g_bnkps.onnx``
+ ArcFace ``glintr100.onnx``). The published models cannot be downloaded here, so this script builds tiny
ONNX graphs with the **same inputs and outputs** (random weights, deterministic), runs insightface on a few
synthetic images, and stores what it returns. ``tests/core/test_face_analysis.py`` holds
``letstalk_core.face.analysis`` to it.

* ``models/scrfd_10g_bnkps.onnx``: input ``input.1`` ``[1, 3, ?, ?]``, 9 outputs ``score_8/16/32`` ``[N, 1]``,
  ``bbox_*`` ``[N, 4]``, ``kps_*`` ``[N, 10]`` (2 anchors per cell, insightface's order). Per stride: the
  image average-pooled to the stride, a 5x5 centre-surround score head (bright blobs about 3.5 cells wide
  score high) plus random weights, softplus box distances and keypoint offsets around a face-like template
  plus random weights. ``models/glintr100.onnx``: ``[1, 3, 112, 112] -> [1, 512]``, two strided convolutions
  and two dense layers, node names PyTorch-style (so insightface picks mean/std 127.5).
* ``extra/scrfd_batched.onnx``: the same detector with a fixed 640x640 input and ``[1, N, C]`` outputs
  (insightface's ``SCRFD`` batched branch; ``FaceAnalysis`` itself would route it to ``RetinaFace``, which
  cannot read batched outputs, so it is run through ``SCRFD`` directly). ``extra/arcface_mxnet.onnx``: the
  recogniser with MXNet-style ``_minus0``/``_mul0`` nodes first (insightface then feeds raw 0..255 pixels).
* ``images/*.png``: two images with faces (upscaled and downscaled into the 640 canvas) and one with none.
* ``golden.npz``: per image insightface's boxes, scores, keypoints and embeddings of every face, MEMO's
  choice (the largest box) and its embedding, the similarity matrix and aligned crop of that face; the
  batched detector's output (also with ``max_num=1``); the MXNet-style recogniser's mean/std and embedding;
  and ``cv2.resize`` / ``cv2.warpAffine`` on small random images (bit-exactness checks).

How (a separate venv; MEMO pins opencv-python-headless 4.10.0.84 and numpy 1.26.4)::

    python -m venv <reference venv>
    <reference venv>/bin/pip install numpy==1.26.4 onnx onnxruntime opencv-python-headless==4.10.0.84 \\
        scikit-image insightface==0.7.3
    OMP_NUM_THREADS=1 <reference venv>/bin/python scripts/make_face_fixtures.py

Deterministic (seeded numpy weights and images; onnxruntime CPU).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, checker, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "face"
STRIDES = (8, 16, 32)
ANCHORS = 2
EMB = 512
OPSET = 13
BRIGHT = 0.3  # normalised brightness (x - 127.5) / 128 above which a pixel counts as "face"
SCORE_GAIN = 30.0


# ---------------------------------------------------------------- graphs

def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def scrfd_graph(rng: np.random.Generator, *, batched: bool) -> bytes:
    """The tiny SCRFD look-alike (see the module docstring)."""
    nodes, inits = [], []
    outputs = {"score": [], "bbox": [], "kps": []}
    half = 1.75  # box half-size in cells for a matched blob
    # keypoints in units of the half-size: eyes, nose, mouth corners
    template = np.array([[-0.4, -0.3], [0.4, -0.3], [0.0, 0.1], [-0.3, 0.5], [0.3, 0.5]]) * half
    centre_surround = np.full((5, 5), -1.0 / 16)
    centre_surround[1:4, 1:4] = 1.0 / 9
    # "brightness above skin level": relu(mean(RGB) - 0.3) (background and canvas padding give 0)
    inits += [_init("w_lum", np.full((1, 3, 1, 1), 1 / 3)), _init("b_lum", [-BRIGHT])]
    nodes.append(helper.make_node("Conv", ["input.1", "w_lum", "b_lum"], ["lum"], name="Conv_lum"))
    nodes.append(helper.make_node("Relu", ["lum"], ["bright"], name="Relu_lum"))
    for s in STRIDES:
        p, q = f"pool_{s}", f"poolb_{s}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [p], kernel_shape=[s, s], strides=[s, s],
                                      name=f"AveragePool_{s}"))
        nodes.append(helper.make_node("AveragePool", ["bright"], [q], kernel_shape=[s, s], strides=[s, s],
                                      name=f"AveragePool_bright_{s}"))
        nodes.append(helper.make_node("Concat", [q, p], [f"feat_{s}"], axis=1, name=f"Concat_{s}"))
        # score head: centre-surround on the brightness + small random weights on the colours; sigmoid
        ws = np.zeros((ANCHORS, 4, 5, 5))
        ws[:, 0] = centre_surround * SCORE_GAIN
        ws[:, 1:] = rng.normal(0, 0.03, (ANCHORS, 3, 5, 5))
        bs = np.array([-3.0, -3.2]) + rng.normal(0, 0.05, ANCHORS)
        inits += [_init(f"ws_{s}", ws), _init(f"bs_{s}", bs)]
        nodes.append(helper.make_node("Conv", [f"feat_{s}", f"ws_{s}", f"bs_{s}"], [f"sl_{s}"], pads=[2, 2, 2, 2],
                                      name=f"Conv_score_{s}"))
        nodes.append(helper.make_node("Sigmoid", [f"sl_{s}"], [f"sg_{s}"], name=f"Sigmoid_{s}"))
        # box distances (l, t, r, b) per anchor, in cells: softplus(random + bias)
        wb = rng.normal(0, 0.08, (4 * ANCHORS, 3, 3, 3))
        bb = np.full(4 * ANCHORS, np.log(np.expm1(half))) + rng.normal(0, 0.05, 4 * ANCHORS)
        inits += [_init(f"wb_{s}", wb), _init(f"bb_{s}", bb)]
        nodes.append(helper.make_node("Conv", [p, f"wb_{s}", f"bb_{s}"], [f"bl_{s}"], pads=[1, 1, 1, 1],
                                      name=f"Conv_bbox_{s}"))
        nodes.append(helper.make_node("Softplus", [f"bl_{s}"], [f"bp_{s}"], name=f"Softplus_{s}"))
        # keypoint offsets, in cells: template + random
        wk = rng.normal(0, 0.05, (10 * ANCHORS, 3, 3, 3))
        bk = np.tile(template.reshape(-1), ANCHORS) + rng.normal(0, 0.03, 10 * ANCHORS)
        inits += [_init(f"wk_{s}", wk), _init(f"bk_{s}", bk)]
        nodes.append(helper.make_node("Conv", [p, f"wk_{s}", f"bk_{s}"], [f"kp_{s}"], pads=[1, 1, 1, 1],
                                      name=f"Conv_kps_{s}"))
        for kind, src, width in (("score", f"sg_{s}", 1), ("bbox", f"bp_{s}", 4), ("kps", f"kp_{s}", 10)):
            shape_name = f"shape_{kind}_{s}"
            inits.append(numpy_helper.from_array(np.array([1, -1, width] if batched else [-1, width], np.int64),
                                                 shape_name))
            nodes.append(helper.make_node("Transpose", [src], [f"t_{kind}_{s}"], perm=[0, 2, 3, 1],
                                          name=f"Transpose_{kind}_{s}"))
            out = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [f"t_{kind}_{s}", shape_name], [out], name=f"Reshape_{kind}_{s}"))
            outputs[kind].append((out, width))
    if batched:
        x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, (640 // s) ** 2 * ANCHORS, w])
                for kind in ("score", "bbox", "kps") for (n, w), s in zip(outputs[kind], STRIDES)]
    else:
        x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"N{s}", w])
                for kind in ("score", "bbox", "kps") for (n, w), s in zip(outputs[kind], STRIDES)]
    graph = helper.make_graph(nodes, "scrfd_tiny", [x], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="letstalk-fixture")
    model.ir_version = 8
    checker.check_model(model)
    return model.SerializeToString()


def arcface_graph(weights: dict, *, mxnet: bool) -> bytes:
    """The tiny ArcFace look-alike: ``[1, 3, 112, 112] -> [1, 512]``."""
    nodes, inits = [], [_init(k, v) for k, v in weights.items()]
    src = "input.1"
    if mxnet:  # MXNet exports normalise in the graph: (x - 127.5) * 0.0078125
        inits += [_init("mean", np.full((1, 3, 1, 1), 127.5)), _init("scale", np.full((1, 3, 1, 1), 0.0078125))]
        nodes.append(helper.make_node("Sub", [src, "mean"], ["x_sub"], name="_minus0"))
        nodes.append(helper.make_node("Mul", ["x_sub", "scale"], ["x_mul"], name="_mul0"))
        src = "x_mul"
    nodes += [
        helper.make_node("Conv", [src, "w1", "b1"], ["c1"], strides=[4, 4], name="Conv_0"),
        helper.make_node("Relu", ["c1"], ["r1"], name="Relu_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[4, 4], name="Conv_2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="Relu_3"),
        helper.make_node("Flatten", ["r2"], ["f"], name="Flatten_4"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g3"], transB=1, name="Gemm_5"),
        helper.make_node("Tanh", ["g3"], ["h3"], name="Tanh_6"),
        helper.make_node("Gemm", ["h3", "w4", "b4"], ["683"], transB=1, name="Gemm_7"),
    ]
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, EMB])
    graph = helper.make_graph(nodes, "arcface_tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="letstalk-fixture")
    model.ir_version = 8
    checker.check_model(model)
    return model.SerializeToString()


def arcface_weights(rng: np.random.Generator) -> dict:
    hidden = 16
    return {
        "w1": rng.normal(0, 0.15, (8, 3, 4, 4)), "b1": rng.normal(0, 0.05, 8),
        "w2": rng.normal(0, 0.1, (16, 8, 4, 4)), "b2": rng.normal(0, 0.05, 16),
        "w3": rng.normal(0, 0.05, (hidden, 16 * 7 * 7)), "b3": rng.normal(0, 0.05, hidden),
        "w4": rng.normal(0, 1.0, (EMB, hidden)), "b4": rng.normal(0, 0.1, EMB),
    }


# ---------------------------------------------------------------- images

def _shading(h, w, rng, base):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w, 3), base, dtype=np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.03), rng.uniform(0, 6.3)
        img[..., c] += 12 * np.sin(fx * xx + fy * yy + ph) + 0.03 * (xx - w / 2) * (c - 1)
    return img


def _draw_face(img, cx, cy, d, rng):
    """A bright shaded ellipse with darker eyes and mouth, diameter ``d`` pixels."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rx, ry = d / 2 * 0.85, d / 2
    e = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    skin = np.array([225.0, 190.0, 170.0]) + rng.uniform(-10, 10, 3)
    shade = 1.0 - 0.15 * ((xx - cx) / rx) - 0.1 * ((yy - cy) / ry)
    mask = np.clip(1.5 - e * 1.5, 0, 1)[..., None]  # soft edge
    img[:] = img * (1 - mask) + (skin * shade[..., None]) * mask
    for ex, ey, r in ((-0.35, -0.25, 0.09), (0.35, -0.25, 0.09), (0.0, 0.45, 0.12)):
        m = (((xx - cx - ex * d / 2) / (r * d)) ** 2 + ((yy - cy - ey * d / 2) / (0.6 * r * d)) ** 2) < 1
        img[m] = img[m] * 0.45


def make_images(rng: np.random.Generator) -> dict[str, np.ndarray]:
    images = {}
    a = _shading(360, 480, rng, 95.0)  # landscape, upscaled into the canvas (x 4/3)
    _draw_face(a, 140, 170, 44, rng)
    _draw_face(a, 330, 190, 84, rng)
    images["two_faces"] = a
    b = _shading(820, 700, rng, 110.0)  # portrait, downscaled (x 0.78)
    _draw_face(b, 360, 400, 150, rng)
    _draw_face(b, 560, 700, 40, rng)
    images["portrait"] = b
    images["no_face"] = _shading(300, 400, rng, 100.0)
    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in images.items()}


# ---------------------------------------------------------------- reference runs

def main() -> None:
    import cv2
    import insightface
    import onnxruntime
    import skimage
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils import face_align
    from PIL import Image

    rng = np.random.default_rng(20250101)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "models").mkdir(parents=True)
    (OUT / "extra").mkdir()
    (OUT / "images").mkdir()
    (OUT / "models" / "scrfd_10g_bnkps.onnx").write_bytes(scrfd_graph(np.random.default_rng(1), batched=False))
    (OUT / "extra" / "scrfd_batched.onnx").write_bytes(scrfd_graph(np.random.default_rng(1), batched=True))
    weights = arcface_weights(np.random.default_rng(2))
    (OUT / "models" / "glintr100.onnx").write_bytes(arcface_graph(weights, mxnet=False))
    (OUT / "extra" / "arcface_mxnet.onnx").write_bytes(arcface_graph(weights, mxnet=True))
    images = make_images(rng)
    for name, img in images.items():
        Image.fromarray(img).save(OUT / "images" / f"{name}.png", optimize=True)

    golden: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:  # FaceAnalysis(name="", root=...) reads <root>/models/*.onnx
        shutil.copytree(OUT / "models", Path(tmp) / "models")
        app = FaceAnalysis(name="", root=tmp, providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=0, det_size=(640, 640))
        rec = app.models["recognition"]
        for name, img in images.items():
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            faces = app.get(bgr)
            n = len(faces)
            golden[f"{name}/boxes"] = np.array([f.bbox for f in faces], np.float32).reshape(n, 4)
            golden[f"{name}/scores"] = np.array([f.det_score for f in faces], np.float32).reshape(n)
            golden[f"{name}/kps"] = np.array([f.kps for f in faces], np.float32).reshape(n, 5, 2)
            golden[f"{name}/embeddings"] = np.array([f.embedding for f in faces], np.float32).reshape(n, EMB)
            # memo/utils/vision_utils.py::preprocess_image
            if not faces:
                memo_emb, largest = np.zeros(EMB), -1
            else:
                ranked = sorted(faces, key=lambda x: (x["bbox"][2] - x["bbox"][0]) * (x["bbox"][3] - x["bbox"][1]),
                                reverse=True)
                memo_emb, largest = ranked[0]["embedding"], next(i for i, f in enumerate(faces) if f is ranked[0])
                golden[f"{name}/norm_matrix"] = face_align.estimate_norm(ranked[0].kps, 112)
                golden[f"{name}/aligned_rgb"] = cv2.cvtColor(face_align.norm_crop(bgr, ranked[0].kps, 112),
                                                             cv2.COLOR_BGR2RGB)
            golden[f"{name}/largest"] = np.array(largest)
            golden[f"{name}/memo_embedding"] = np.asarray(memo_emb)
            print(f"{name}: {n} faces, scores {np.round(golden[f'{name}/scores'], 3).tolist()}, "
                  f"boxes {np.round(golden[f'{name}/boxes'], 1).tolist()}, largest {largest}")
        golden["recognition/mean_std"] = np.array([rec.input_mean, rec.input_std])

    # the batched SCRFD branch and max_num (insightface's SCRFD class directly)
    det = SCRFD(str(OUT / "extra" / "scrfd_batched.onnx"))
    det.prepare(0, input_size=(640, 640))
    bgr = cv2.cvtColor(images["two_faces"], cv2.COLOR_RGB2BGR)
    for max_num in (0, 1):
        d, k = det.detect(bgr, max_num=max_num)
        golden[f"batched/max_num{max_num}/dets"], golden[f"batched/max_num{max_num}/kps"] = d, k
    # the MXNet-style recogniser: mean/std from the graph, embedding of the portrait's largest face
    mx = ArcFaceONNX(str(OUT / "extra" / "arcface_mxnet.onnx"),
                     session=onnxruntime.InferenceSession(str(OUT / "extra" / "arcface_mxnet.onnx"),
                                                          providers=["CPUExecutionProvider"]))
    golden["mxnet/mean_std"] = np.array([mx.input_mean, mx.input_std])
    i = int(golden["portrait/largest"])
    kps = golden["portrait/kps"][i]
    golden["mxnet/embedding"] = mx.get(cv2.cvtColor(images["portrait"], cv2.COLOR_RGB2BGR),
                                       insightface.app.common.Face(kps=kps)).astype(np.float32)

    # OpenCV resize / warpAffine on small random images
    small = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    golden["resize/src"] = small
    for w, h in ((53, 37), (71, 100), (20, 13), (160, 111), (29, 61)):
        golden[f"resize/{w}x{h}"] = cv2.resize(small, (w, h))
    mats = []
    for t in range(4):
        a, s = rng.uniform(-0.6, 0.6), rng.uniform(0.4, 2.5)
        mats.append([[s * np.cos(a), -s * np.sin(a), rng.uniform(-40, 20)],
                     [s * np.sin(a), s * np.cos(a), rng.uniform(-40, 20)]])
    golden["warp/matrices"] = np.array(mats)
    golden["warp/out"] = np.stack([cv2.warpAffine(small, np.array(m), (40, 48), borderValue=0.0) for m in mats])

    np.savez_compressed(OUT / "golden.npz", **golden)
    versions = {"insightface": insightface.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__, "scikit-image": skimage.__version__}
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB), reference {versions}")


if __name__ == "__main__":
    main()
