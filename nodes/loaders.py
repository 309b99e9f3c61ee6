"""Loaders: the LetsTalk checkpoint (models/letstalk, the demo model always listed), a DC-AE
(models/vae) and a wav2vec2 speech encoder (models/audio_encoders). No download, ever."""
from __future__ import annotations

from comfy_api.latest import io

from . import common, host
from .types import LoadedDCAE, LoadedModel, LoadedSpeech, socket_types

Model, DCAE, Speech, _, _ = socket_types()
DTYPES = ["auto", "fp32", "bf16", "fp16"]
AUTO_DTYPE = ("auto: bf16 where the hardware runs it (GPUs that run it well, CPUs with AMX or AVX512-BF16), "
              "else fp32.")


def _bundled(config, groups, name: str) -> tuple[LoadedDCAE | None, LoadedSpeech | None]:
    """Handles for the DC-AE and the speech front end bundled in a checkpoint (None where absent)."""
    from ..letstalk_core.families.letstalk import bundled_dcae, bundled_wav2vec2

    dcae = speech = None
    if groups["dcae"]:
        module = bundled_dcae(config, groups["dcae"], f"'{name}'")
        dcae = LoadedDCAE(f"{name} (bundled)", module, host.patcher_for(module, vae=True))
    if config.speech_encoder.kind == "mel":
        speech = LoadedSpeech(f"{name} (log-mel)")
    elif groups["speech"]:
        module = bundled_wav2vec2(config, groups["speech"], f"'{name}'")
        speech = LoadedSpeech(f"{name} (wav2vec2)", module, host.patcher_for(module))
    return dcae, speech


class LetsTalkModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkModelLoader",
            display_name="LetsTalk Model Loader",
            category="LetsTalk/loaders",
            description="Loads a LetsTalk transformer checkpoint (.safetensors with its config inside) and the DC-AE "
                        "and speech encoder bundled with it.",
            inputs=[
                io.Combo.Input("ckpt_name", options=host.model_files(host.MODEL_FOLDER) or [host.DEMO_MODEL],
                               default=host.DEMO_MODEL,
                               tooltip="LetsTalk checkpoint from models/letstalk. letstalk-demo.safetensors ships with "
                                       "the pack (64×64, 25 fps), so a graph works with no download."),
                io.Combo.Input("weight_dtype", options=DTYPES, default="auto",
                               tooltip=f"Precision of the transformer. {AUTO_DTYPE}"),
            ],
            outputs=[
                Model.Output("model", tooltip="The transformer with its config (fps, clip length, memory frames)."),
                DCAE.Output("dcae", tooltip="The DC-AE bundled with the checkpoint (None if it has none: use LetsTalk DC-AE Loader)."),
                Speech.Output("speech_encoder", tooltip="The speech front end the model was trained with (None when "
                                                        "it needs a wav2vec2 file: use LetsTalk Speech Encoder Loader)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, weight_dtype):
        # Naming ckpt_name here skips the list check, so a missing file ends as a clear node error
        # (with where to put it) instead of a bare "value not in list".
        return True

    @classmethod
    def execute(cls, ckpt_name, weight_dtype="auto") -> io.NodeOutput:
        from ..letstalk_core.families.letstalk import load_transformer, read_checkpoint

        if weight_dtype not in DTYPES:
            raise ValueError(f"weight_dtype must be one of {DTYPES}; got {weight_dtype!r}.")
        path = host.model_path(host.MODEL_FOLDER, ckpt_name, "LetsTalk checkpoint")
        config, groups, meta = read_checkpoint(path)
        device = host.torch_device()
        dtype = host.weight_dtype(weight_dtype, device)
        transformer = load_transformer(config, groups["dit"], device="cpu", dtype=dtype)
        dcae, speech = _bundled(config, groups, ckpt_name)
        loaded = LoadedModel(ckpt_name, config, transformer, host.patcher_for(transformer), dtype, dcae, speech,
                             {k: v for k, v in meta.items() if k != "letstalk_config"})
        return io.NodeOutput(loaded, dcae, speech, ui=common.done_ui(f"loaded {ckpt_name}"))


class LetsTalkDCAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDCAELoader",
            display_name="LetsTalk DC-AE Loader",
            category="LetsTalk/loaders",
            description="Loads a deep-compression autoencoder (DC-AE) from models/vae: the original (MIT) or the "
                        "diffusers key layout, with its config from the file's metadata or a .json beside it.",
            inputs=[
                io.Combo.Input("dcae_name", options=host.model_files("vae") or ["(none found)"],
                               tooltip="DC-AE weights in models/vae (.safetensors)."),
            ],
            outputs=[DCAE.Output("dcae", tooltip="The autoencoder, for DC-AE Encode/Decode and the samplers.")],
        )

    @classmethod
    def validate_inputs(cls, dcae_name):
        return True

    @classmethod
    def execute(cls, dcae_name) -> io.NodeOutput:
        from ..letstalk_core.autoencoder import load_dcae

        path = host.model_path("vae", dcae_name, "DC-AE file")
        module = load_dcae(path).float().eval()
        return io.NodeOutput(LoadedDCAE(dcae_name, module, host.patcher_for(module, vae=True)))


class LetsTalkSpeechEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkSpeechEncoderLoader",
            display_name="LetsTalk Speech Encoder Loader",
            category="LetsTalk/loaders",
            description="Loads a wav2vec2 speech encoder (base or large, Hugging Face or ComfyUI key layout) from "
                        "models/audio_encoders. The native Load Audio Encoder output can be connected instead.",
            inputs=[
                io.Combo.Input("encoder_name", options=host.model_files("audio_encoders") or ["(none found)"],
                               tooltip="wav2vec2 weights in models/audio_encoders (e.g. wav2vec2-base-960h)."),
            ],
            outputs=[Speech.Output("speech_encoder", tooltip="The wav2vec2 encoder for LetsTalk Audio Encoder.")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name):
        return True

    @classmethod
    def execute(cls, encoder_name) -> io.NodeOutput:
        from ..letstalk_core.audio import load_wav2vec2

        path = host.model_path("audio_encoders", encoder_name, "speech encoder file")
        module = load_wav2vec2(path).eval()
        return io.NodeOutput(LoadedSpeech(encoder_name, module, host.patcher_for(module)))


NODES = [LetsTalkModelLoader, LetsTalkDCAELoader, LetsTalkSpeechEncoderLoader]
