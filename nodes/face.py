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
                io.Int.Input("face_index", default=0, min=0, max=63, optional=True,
                             tooltip="Which face, counted from the left (0 = the leftmost): for a photo of several "
                                     "people, one Face Crop per person, each with its own index."),
                io.String.Input("boxes", default="", optional=True,
                                tooltip="manual: the faces' boxes by hand, 'x0,y0,x1,y1; x0,y0,x1,y1' in photo pixels "
                                        "(square), picked by face_index in the order given (empty: the box above). "
                                        "Another Face Crop's face_boxes output fits here."),
            ],
            outputs=[io.Image.Output("face", tooltip="The square face crop, size×size."),
                     FaceBoxType.Output("face_box", tooltip="Where the crop came from, for LetsTalk Paste Back."),
                     io.Image.Output("faces", tooltip="Every face's crop, left to right (a batch of size×size)."),
                     io.String.Output("face_boxes", tooltip="Every face's box, 'x0,y0,x1,y1; ...' left to right: for "
                                                            "another Face Crop's boxes (detect once, crop each face).")],
        )

    @classmethod
    def execute(cls, photo, detector, center_x, center_y, box_size, scale, size, face_index=0,
                boxes="") -> io.NodeOutput:
        import torch

        from ..letstalk_core.compose import boxes_text, crop_face, face_box, find_faces, manual_box, parse_boxes

        image = common.image_to_core(photo, "photo")[:1, :3]
        h, w = image.shape[-2:]
        if detector == "manual":
            found = parse_boxes(boxes, w, h) if str(boxes or "").strip() else [manual_box(center_x, center_y, box_size, w, h)]
        elif detector == "whole image":
            found = [face_box([(0, 0, w, h, 1.0)], w, h, scale=1.0)]
        elif detector in ("haar", "scrfd (MEMO)"):
            found = find_faces(_detector(detector), image, scale=scale)
        else:
            raise ValueError(f"detector must be one of {DETECTORS}; got {detector!r}.")
        index = int(face_index or 0)
        if index >= len(found):
            raise ValueError(f"face_index is {index} but the photo has {len(found)} face box"
                             f"{'es' if len(found) != 1 else ''} ({boxes_text(found)}); 0 is the leftmost.")
        faces = common.core_to_image(torch.cat([crop_face(image, b, size) for b in found]))
        return io.NodeOutput(faces[index:index + 1], found[index], faces, boxes_text(found))


def _detector(detector: str):
    """The face detector named in the Face Crop node: OpenCV's Haar cascade, or MEMO's SCRFD."""
    if detector == "haar":
        from ..letstalk_core.face import haar_detector

        return haar_detector("install it into ComfyUI's Python, or use detector 'manual' with the boxes by hand.")
    return _scrfd()


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
                        "feathered edge; the rest of the picture stays exactly as it was. Takes either IMAGE frames "
                        "(returns IMAGE) or a VIDEO (returns a VIDEO, streamed frame by frame: use it for long runs "
                        "into large photos). For a conversation, paste each face in turn: the first into the photo, "
                        "the next into the first's video (connect it to 'background'); their sounds are mixed.",
            inputs=[
                io.Image.Input("photo", optional=True,
                               tooltip="The photo the face was cropped from (or background frames, one per face "
                                       "frame). Connect this or 'background'."),
                FaceBoxType.Input("face_box", tooltip="From LetsTalk Face Crop on the same photo."),
                io.Float.Input("feather", default=0.12, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the soft edge, as a fraction of the box side (0 = hard edge)."),
                io.Image.Input("frames", optional=True,
                               tooltip="The generated frames (e.g. Memory Bank Loop images). Connect this or 'video'."),
                io.Video.Input("video", optional=True,
                               tooltip="The generated video (e.g. Memory Bank Loop video): pasted frame by frame "
                                       "into a new video with the same sound, never all frames in memory."),
                io.Video.Input("background", optional=True,
                               tooltip="A video to paste into instead of the photo, e.g. the video of an earlier "
                                       "Paste Back with another face of the same photo: faces are pasted one after "
                                       "another, streamed, and a box that overlaps a face pasted before is refused."),
                io.Combo.Input("sound", options=["mix", "face", "background"], default="mix", optional=True,
                               tooltip="The video's sound: mix (the background video's and the face's, e.g. two "
                                       "voices of a conversation), the face video's only, or the background's only."),
            ],
            outputs=[io.Image.Output("images", tooltip="The photo with the talking face, one per frame (empty when "
                                                       "the output is a video)."),
                     io.Video.Output("video", tooltip="The picture with the talking face as a video (when the face "
                                                      "or the background is a video).")],
        )

    @classmethod
    def execute(cls, face_box, feather, photo=None, frames=None, video=None, background=None,
                sound="mix") -> io.NodeOutput:
        import torch

        from ..letstalk_core.compose import FaceBox, compose_video, iter_paste_back, paste_back_bytes
        from ..letstalk_core.runtime import release_freed_memory

        if not isinstance(face_box, FaceBox):
            raise ValueError("connect 'face_box' to the face_box output of LetsTalk Face Crop.")
        if (frames is None) == (video is None):
            raise ValueError("connect exactly one of 'frames' (IMAGE) and 'video' (VIDEO): for long runs, the Memory "
                             "Bank Loop's video output.")
        if (photo is None) == (background is None):
            raise ValueError("connect exactly one of 'photo' (IMAGE: the photo the face was cropped from) and "
                             "'background' (VIDEO: e.g. the video of an earlier Paste Back).")
        if video is not None or background is not None:
            out = host.temp_file("letstalk_paste_back", ".mp4")
            sources = []
            try:
                face = common.video_source(video) if video is not None else common.image_to_core(frames, "frames")[:, :3]
                if video is not None:
                    sources.append(face)
                back = common.video_source(background, "background") if background is not None else \
                    common.image_to_core(photo, "photo")[:, :3]
                if background is not None:
                    sources.append(back)
                n = compose_video([(face, face_box)], back, out, feather=feather, should_stop=host.check_interrupt,
                                  sound={"face": "faces"}.get(sound, sound))
            finally:
                for source in sources:
                    common.release_source(source)
                release_freed_memory()
            return io.NodeOutput(torch.zeros((0, face_box.height, face_box.width, 3)), common.video_output(out),
                                 ui=common.done_ui(f"{n} frames pasted back"))
        n = frames.shape[0]
        common.check_host_memory(paste_back_bytes(n, face_box.width, face_box.height),
                                 f"{n} frames of {face_box.width}×{face_box.height}")
        faces = common.image_to_core(frames, "frames")[:, :3]
        image = common.image_to_core(photo, "photo")[:, :3]
        if image.shape[0] not in (1, n):
            raise ValueError(f"'photo' holds {image.shape[0]} images and 'frames' {n}: give one photo, or one "
                             "background frame per face frame.")
        out = torch.empty((n, face_box.height, face_box.width, 3), dtype=torch.float32)
        pos = 0
        for chunk in iter_paste_back(faces, image, face_box, feather=feather):
            out[pos:pos + chunk.shape[0]] = common.core_to_image(chunk)
            pos += chunk.shape[0]
        return io.NodeOutput(out, None, ui=common.done_ui(f"{n} frames pasted back"))


NODES = [LetsTalkFaceCrop, LetsTalkPasteBack]
