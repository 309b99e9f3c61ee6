"""Face analysis for MEMO: SCRFD detection + ArcFace embedding on onnxruntime (see :mod:`.analysis`).

Importing this package pulls in numpy only; onnxruntime is imported when a model is loaded.
"""
from .analysis import (
    ArcFaceRecognizer,
    Face,
    FaceAnalyzer,
    ScrfdDetector,
    face_embedding,
    find_face_models,
)

__all__ = ["ArcFaceRecognizer", "Face", "FaceAnalyzer", "ScrfdDetector", "face_embedding", "find_face_models"]
