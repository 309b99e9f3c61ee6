"""The MEMO loader: a MEMO folder from models/memo (the published memoavatar/memo layout) with the SD
VAE and wav2vec2 it runs with, as a MODEL the Memory Bank Loop takes like a LetsTalk checkpoint. No
download, ever: the README says which files go where."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..letstalk_core.families.memo import TIERS
from . import common, host
from .loaders import AUTO_DTYPE, DTYPES
from .types import LoadedMemo, socket_types

Model, _, Speech, _, _ = socket_types()
MEMO_FOLDER = host.MEMO_FOLDER  # ComfyUI/models/memo/<name>/{reference_net,diffusion_net,image_proj,audio_proj,misc}
NO_EMOTION2VEC = "(none: pick an emotion below)"


def _emotions() -> list[str]:
    from ..letstalk_core.audio import EMOTION_CLASSES

    return list(EMOTION_CLASSES)


def memo_folders() -> list[str]:
    """The MEMO folders under every models/memo path (folders that look like MEMO's layout)."""
    from ..letstalk_core.families.memo import looks_like_memo_folder

    names = []
    for root in host.folder_paths_for(MEMO_FOLDER):
        base = Path(root)
        if base.is_dir():
            names += [d.name for d in sorted(base.iterdir()) if d.is_dir() and looks_like_memo_folder(d)]
    return sorted(set(names))


def memo_folder_path(name: str) -> Path:
    for root in host.folder_paths_for(MEMO_FOLDER):
        p = Path(root) / name
        if p.is_dir():
            return p
    where = ", ".join(host.folder_paths_for(MEMO_FOLDER))
    raise FileNotFoundError(f"MEMO folder '{name}' was not found in {where}. Download memoavatar/memo there (its "
                            "reference_net, diffusion_net, image_proj, audio_proj and misc folders) and refresh the page.")


class LetsTalkMemoLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkMemoLoader",
            display_name="LetsTalk MEMO Loader",
            category="LetsTalk/loaders",
            description="Loads a MEMO model folder (memoavatar/memo) from models/memo, with the Stable Diffusion VAE "
                        "and wav2vec2-base-960h it runs with, for the Memory Bank Loop: real photos talking for "
                        "minutes. Each network loads when first used.",
            inputs=[
                io.Combo.Input("memo_folder", options=memo_folders() or ["(none found)"],
                               tooltip="A MEMO folder in models/memo (reference_net/, diffusion_net/, image_proj/, "
                                       "audio_proj/, misc/)."),
                io.Combo.Input("vae_name", options=host.model_files("vae") or ["(none found)"],
                               tooltip="The SD VAE MEMO uses (sd-vae-ft-mse) from models/vae; a VAE connected "
                                       "below is used instead."),
                io.Combo.Input("encoder_name", options=host.model_files("audio_encoders") or ["(none found)"],
                               tooltip="wav2vec2-base-960h from models/audio_encoders; a speech encoder connected "
                                       "below is used instead."),
                io.Combo.Input("emotion2vec", options=[NO_EMOTION2VEC, *host.model_files(
                                   "audio_encoders", extensions=(".pt", ".safetensors"))], default=NO_EMOTION2VEC,
                               tooltip="emotion2vec_plus_large's model.pt in models/audio_encoders, for the loop's "
                                       "emotion 'auto' (the emotion read from the speech)."),
                io.Combo.Input("weight_dtype", options=DTYPES, default="auto",
                               tooltip=f"Precision of the networks. {AUTO_DTYPE}"),
                io.Float.Input("fps", default=30.0, min=1.0, max=120.0, step=0.5,
                               tooltip="Frame rate of the video (MEMO's is 30)."),
                io.Int.Input("size", default=512, min=64, max=1024, step=8,
                             tooltip="Frame side in pixels (MEMO was trained at 512; the portrait is cropped square)."),
                io.Combo.Input("emotion", options=["auto", *_emotions()], default="auto",
                               tooltip="The face's emotion. auto: read from the speech, second by second, one label "
                                       "per clip as MEMO does (needs emotion2vec above); or one emotion for the whole "
                                       "video."),
                io.Boolean.Input("allow_no_face", default=False,
                                 tooltip="Where no face is found in the portrait, use MEMO's zero face embedding "
                                         "(identity is then not conditioned) instead of stopping with an error."),
                io.Combo.Input("memory_tier", options=["auto", *TIERS], default="auto", optional=True,
                               tooltip="How the run trades speed for GPU memory. 24gb: everything on the GPU; 16gb: "
                                       "Reference Net and VAE offloaded while sampling, guidance rows one after the "
                                       "other, smaller chunks; 12gb: also the memory state in CPU RAM. auto: the "
                                       "fastest whose memory plan fits (the plan is checked before any work)."),
                io.Combo.Input("state_dtype", options=["auto", "fp32"], default="auto", optional=True,
                               tooltip="The memory state's dtype: auto keeps it in the weights' dtype with fp32 sums, "
                                       "as MEMO's authors do (6.5 GiB at 512² in bf16); fp32 doubles it."),
                io.Vae.Input("vae", optional=True, tooltip="ComfyUI's Load VAE output (an SD 1.x VAE), instead of "
                                                           "vae_name."),
                io.MultiType.Input("speech_encoder", types=[Speech, io.AudioEncoder], optional=True,
                                   tooltip="LetsTalk Speech Encoder Loader or the native Load Audio Encoder "
                                           "(wav2vec2-base-960h), instead of encoder_name."),
            ],
            outputs=[Model.Output("model", tooltip="MEMO, for the Memory Bank Loop.")],
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return True  # missing files end as clear node errors that say where to put them

    @classmethod
    def execute(cls, memo_folder, vae_name, encoder_name, emotion2vec=NO_EMOTION2VEC, weight_dtype="auto", fps=30.0,
                size=512, emotion="auto", allow_no_face=False, memory_tier="auto", state_dtype="auto", vae=None,
                speech_encoder=None) -> io.NodeOutput:
        from ..letstalk_core.autoencoder import load_sd_vae
        from ..letstalk_core.families.memo import MemoConfig, MemoVideo, load_memo
        from .types import LoadedSpeech

        if weight_dtype not in DTYPES:
            raise ValueError(f"weight_dtype must be one of {DTYPES}; got {weight_dtype!r}.")
        if memory_tier not in ("auto", *TIERS) or state_dtype not in ("auto", "fp32"):
            raise ValueError(f"memory_tier must be auto or one of {list(TIERS)} and state_dtype auto or fp32; got "
                             f"{memory_tier!r}, {state_dtype!r}.")
        folder = memo_folder_path(memo_folder)
        dtype = host.weight_dtype(weight_dtype, host.torch_device())
        models = load_memo(folder, device="cpu", dtype=dtype)  # checks every part's config and tensors now
        if vae is not None:
            sd = vae.get_sd() if hasattr(vae, "get_sd") else vae.first_stage_model.state_dict()
            module = load_sd_vae(sd, dtype=dtype)
        else:
            module = load_sd_vae(host.model_path("vae", vae_name, "SD VAE (sd-vae-ft-mse)"), dtype=dtype)
        if speech_encoder is None:
            from ..letstalk_core.audio import load_wav2vec2

            path = host.model_path("audio_encoders", encoder_name, "speech encoder (wav2vec2-base-960h)")
            w2v = load_wav2vec2(path).eval()
            speech_encoder = LoadedSpeech(encoder_name, w2v, host.patcher_for(w2v))
        e2v = None
        if emotion2vec and emotion2vec != NO_EMOTION2VEC:
            e2v = host.model_path("audio_encoders", emotion2vec, "emotion2vec_plus_large file")
        from ..letstalk_core.audio import emotion_choice

        emotion_choice(emotion, e2v)  # 'auto' without emotion2vec: say what to download now, not mid-run
        config = MemoConfig(video=MemoVideo(width=int(size), height=int(size), fps=float(fps)))
        loaded = LoadedMemo(memo_folder, folder, config, models, dtype, module, speech_encoder, e2v, emotion,
                            bool(allow_no_face), {"vae": host.patcher_for(module, vae=True)},
                            memory_tier=memory_tier, state_dtype=state_dtype)
        return io.NodeOutput(loaded, ui=common.done_ui(f"loaded MEMO {memo_folder}"))


NODES = [LetsTalkMemoLoader]
