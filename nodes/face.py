"""Face Crop and Paste Back: any photo in, the talking face composited back into it out."""
from __future__ import annotations

from comfy_api.latest import io

from . import common, host
from .types import socket_types

_, _, _, _, FaceBoxType = socket_types()
DETECTORS = ["manual", "haar", "scrfd (MEMO)", "whole image"]


class LetsTalkFaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkFaceCrop",
            display_name="LetsTalk Face Crop",
            category="LetsTalk/face",
            description="Cuts a square face crop out of any photo (any size or aspect) for the model, and remembers "
                        "where it was so LetsTalk Paste Back can put the talking face back.",
            inputs=[
                io.Image.Input("photo", tooltip="The photo (first image of the batch is used)."),
                io.Combo.Input("detector", options=DETECTORS, default="manual",
                               tooltip="manual: the box below. haar: OpenCV's frontal-face detector (needs "
                                       "opencv-python-headless installed). scrfd (MEMO): the SCRFD detector of a MEMO "
                                       "folder in models/memo (needs onnxruntime), the one MEMO finds faces with. "
                                       "whole image: the largest centred square."),
                io.Float.Input("center_x", default=0.5, min=0.0, max=1.0, step=0.005,
                               tooltip="manual: the face's centre, as a fraction of the photo's width."),
                io.Float.Input("center_y", default=0.4, min=0.0, max=1.0, step=0.005,
                               tooltip="manual: the face's centre, as a fraction of the photo's height."),
                io.Float.Input("box_size", default=0.6, min=0.05, max=1.0, step=0.005,
                               tooltip="manual: the square's side as a fraction of the photo's short side "
                                       "(take in hair and chin)."),
                io.Float.Input("scale", default=1.6, min=1.0, max=4.0, step=0.05,
                               tooltip="haar, scrfd: enlarge the detected face box this much (hair, chin, motion room)."),
                io.Int.Input("size", default=64, min=32, max=2048, step=32,
                             tooltip="Side of the crop in pixels: the model's size (64 for the demo model, 512 for "
                                     "the paper's)."),
            ],
            outputs=[io.Image.Output("face", tooltip="The square face crop, size×size."),
                     FaceBoxType.Output("face_box", tooltip="Where the crop came from, for LetsTalk Paste Back.")],
        )

    @classmethod
    def execute(cls, photo, detector, center_x, center_y, box_size, scale, size) -> io.NodeOutput:
        import numpy as np

        from ..letstalk_core.compose import crop_face, face_box, manual_box
        from ..letstalk_core.io import tensor_to_uint8

        image = common.image_to_core(photo, "photo")[:1, :3]
        h, w = image.shape[-2:]
        if detector == "manual":
            box = manual_box(center_x, center_y, box_size, w, h)
        elif detector == "whole image":
            box = face_box([(0, 0, w, h, 1.0)], w, h, scale=1.0)
        elif detector == "haar":
            from ..letstalk_core.face import HaarDetector

            try:
                det = HaarDetector()
            except ImportError as e:
                raise ValueError("the haar detector needs OpenCV: pip install opencv-python-headless into ComfyUI's "
                                 "Python, or use detector 'manual'.") from e
            rgb = tensor_to_uint8(image[0])
            box = face_box(det.detect(np.ascontiguousarray(rgb)), w, h, scale=scale)
        elif detector == "scrfd (MEMO)":
            rgb = tensor_to_uint8(image[0])
            boxes = _scrfd().detect(np.ascontiguousarray(rgb))
            if not boxes:
                raise ValueError("SCRFD found no face in the photo: use detector 'manual' with a box around the head.")
            box = face_box(boxes, w, h, scale=scale)
        else:
            raise ValueError(f"detector must be one of {DETECTORS}; got {detector!r}.")
        face = crop_face(image, box, size)
        return io.NodeOutput(common.core_to_image(face), box)


def _scrfd():
    """The SCRFD detector of the first MEMO folder in models/memo that has its face-analysis models
    (loaded once)."""
    global _SCRFD
    if _SCRFD is None:
        from ..letstalk_core.face import SCRFD_FILE, ScrfdDetector
        from .memo import memo_folder_path, memo_folders

        for name in memo_folders():
            try:
                _SCRFD = ScrfdDetector.from_folder(memo_folder_path(name))
                break
            except FileNotFoundError:
                continue
        else:
            raise ValueError(f"no MEMO folder with misc/face_analysis/models/{SCRFD_FILE} in models/memo: download "
                             "memoavatar/memo there, or use detector 'manual'.")
    return _SCRFD


_SCRFD = None


class LetsTalkPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkPasteBack",
            display_name="LetsTalk Paste Back",
            category="LetsTalk/face",
            description="Puts generated face frames back into the photo at the crop's place, blended through a "
                        "feathered edge; the rest of the photo stays exactly as it was. Takes either IMAGE frames "
                        "(returns IMAGE) or a VIDEO (returns a VIDEO with its sound, streamed frame by frame: use "
                        "it for long runs into large photos).",
            inputs=[
                io.Image.Input("photo", tooltip="The photo the face was cropped from."),
                FaceBoxType.Input("face_box", tooltip="From LetsTalk Face Crop on the same photo."),
                io.Float.Input("feather", default=0.12, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the soft edge, as a fraction of the box side (0 = hard edge)."),
                io.Image.Input("frames", optional=True,
                               tooltip="The generated frames (e.g. Memory Bank Loop images). Connect this or 'video'."),
                io.Video.Input("video", optional=True,
                               tooltip="The generated video (e.g. Memory Bank Loop video): pasted frame by frame "
                                       "into a new video with the same sound, never all frames in memory."),
            ],
            outputs=[io.Image.Output("images", tooltip="The photo with the talking face, one per frame (empty when "
                                                       "the input was a video)."),
                     io.Video.Output("video", tooltip="The photo with the talking face as a video with the input "
                                                      "video's sound (only when the input was a video).")],
        )

    @classmethod
    def execute(cls, photo, face_box, feather, frames=None, video=None) -> io.NodeOutput:
        import torch

        from ..letstalk_core.compose import FaceBox, iter_paste_back, paste_back_bytes, paste_back_video
        from ..letstalk_core.runtime import release_freed_memory

        if not isinstance(face_box, FaceBox):
            raise ValueError("connect 'face_box' to the face_box output of LetsTalk Face Crop.")
        if (frames is None) == (video is None):
            raise ValueError("connect exactly one of 'frames' (IMAGE) and 'video' (VIDEO): for long runs, the Memory "
                             "Bank Loop's video output.")
        image = common.image_to_core(photo, "photo")[:1, :3]
        if video is not None:
            out = host.temp_file("letstalk_paste_back", ".mp4")
            source = common.video_source(video)
            try:
                paste_back_video(source, out, image, face_box, feather=feather, should_stop=host.check_interrupt)
            finally:
                common.release_source(source)
                release_freed_memory()
            return io.NodeOutput(torch.zeros((0, face_box.height, face_box.width, 3)), common.video_output(out),
                                 ui=common.done_ui("video pasted back"))
        n = frames.shape[0]
        common.check_host_memory(paste_back_bytes(n, face_box.width, face_box.height),
                                 f"{n} frames of {face_box.width}×{face_box.height}")
        faces = common.image_to_core(frames, "frames")[:, :3]
        out = torch.empty((n, face_box.height, face_box.width, 3), dtype=torch.float32)
        pos = 0
        for chunk in iter_paste_back(faces, image, face_box, feather=feather):
            out[pos:pos + chunk.shape[0]] = common.core_to_image(chunk)
            pos += chunk.shape[0]
        return io.NodeOutput(out, None, ui=common.done_ui(f"{n} frames pasted back"))


NODES = [LetsTalkFaceCrop, LetsTalkPasteBack]
