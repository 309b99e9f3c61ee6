"""Faces: SCRFD detection + ArcFace embedding on onnxruntime for MEMO (:mod:`.analysis`), and the
pluggable detectors (none, OpenCV Haar, ONNX, SCRFD) with the per-video crop box (:mod:`.crop`).

Importing this package pulls in numpy and torch only; onnxruntime and OpenCV are imported when a model is
loaded.
"""
from .analysis import (
    SCRFD_FILE,
    ArcFaceRecognizer,
    Face,
    FaceAnalyzer,
    ScrfdDetector,
    face_embedding,
    find_face_models,
)
from .crop import (
    DETECTOR_SPECS,
    Box,
    FaceDetector,
    HaarDetector,
    NoDetector,
    OnnxDetector,
    crop_and_resize,
    crop_box_for_video,
    haar_detector,
    make_detector,
    sample_indices,
)

__all__ = ["DETECTOR_SPECS", "SCRFD_FILE", "ArcFaceRecognizer", "Box", "Face", "FaceAnalyzer", "FaceDetector",
           "HaarDetector", "NoDetector", "OnnxDetector", "ScrfdDetector", "crop_and_resize", "crop_box_for_video",
           "face_embedding", "find_face_models", "haar_detector", "make_detector", "sample_indices"]
