"""Audio Encoder (AUDIO → per-frame features) and DC-AE Encode / Decode (IMAGE ↔ LATENT, chunked)."""
from __future__ import annotations

from comfy_api.latest import io

from . import common, host
from .types import AudioFeatures, LoadedDCAE, socket_types

Model, DCAE, Speech, Features, _ = socket_types()


class LetsTalkAudioEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkAudioEncoder",
            display_name="LetsTalk Audio Encoder",
            category="LetsTalk",
            description="Speech → one feature vector per video frame at the chosen fps (frame i covers audio "
                        "[i/fps, (i+1)/fps)), with the speech front end the model was trained on.",
            inputs=[
                Model.Input("model", tooltip="The LetsTalk model the features are for (its speech front end and fps)."),
                io.Audio.Input("audio", tooltip="The speech track, any length, any sample rate; stereo is mixed to mono."),
                io.Float.Input("fps", default=0.0, min=0.0, max=120.0, step=0.001,
                               tooltip="Video frame rate of the features. 0 = the model's own fps (recommended: the "
                                       "model was trained at it)."),
                io.MultiType.Input("speech_encoder", types=[Speech, io.AudioEncoder], optional=True,
                                   tooltip="Optional: a wav2vec2 encoder (LetsTalk Speech Encoder Loader or the native "
                                           "Load Audio Encoder). Empty: the one bundled with the model."),
            ],
            outputs=[Features.Output("audio_features", tooltip="Per-frame features for the Linear DiT Sampler."),
                     io.Int.Output("frames", tooltip="Frames the video will have: ceil(seconds × fps)."),
                     io.Float.Output("fps", tooltip="The features' frame rate.")],
        )

    @classmethod
    def execute(cls, model, audio, fps=0.0, speech_encoder=None) -> io.NodeOutput:
        import dataclasses

        common.require_letstalk(model, "LetsTalk Audio Encoder (features for the Linear DiT Sampler)")
        wave, rate = common.audio_waveform(audio)
        common.warn_if_silent(wave)
        config = model.config
        if fps and abs(fps - config.video.fps) > 1e-6:
            config = dataclasses.replace(config, video=dataclasses.replace(config.video, fps=fps))
        from ..letstalk_core.families.letstalk import encode_speech_track

        encoder, patcher = common.speech_encoder_for(model, speech_encoder if speech_encoder is not None else model.speech)
        if patcher is not None:
            host.load_to_device(patcher)
            encoder.model.to(patcher.load_device)
        features, frames, seconds = encode_speech_track(encoder, config, wave, rate)
        return io.NodeOutput(AudioFeatures(features, frames, float(config.video.fps), seconds,
                                           config.speech_encoder.kind, audio), frames, float(config.video.fps))


def _dcae(dcae, model) -> LoadedDCAE:
    if dcae is not None:
        return dcae
    if model is not None and model.dcae is not None:
        return model.dcae
    raise ValueError("connect a DC-AE: the 'dcae' output of LetsTalk Model Loader or LetsTalk DC-AE Loader.")


class LetsTalkDCAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDCAEEncode",
            display_name="LetsTalk DC-AE Encode",
            category="LetsTalk",
            description="Images → DC-AE latents (32× smaller per side for f32 models), a chunk of images at a time.",
            inputs=[
                DCAE.Input("dcae", tooltip="The autoencoder (from LetsTalk Model Loader or LetsTalk DC-AE Loader)."),
                io.Image.Input("image", tooltip="Images to encode; a portrait for the sampler."),
                io.Int.Input("size", default=0, min=0, max=4096, step=32,
                             tooltip="0: keep the size (sides must be multiples of the DC-AE's factor). Otherwise "
                                     "centre-crop to square and resize to size×size (use the model's size, e.g. 64 for "
                                     "the demo model)."),
                io.Int.Input("chunk", default=8, min=1, max=256, tooltip="Images encoded at a time (peak memory)."),
            ],
            outputs=[io.Latent.Output("latent", tooltip="{'samples': [B, C, h, w]} scaled DC-AE latents.")],
        )

    @classmethod
    def execute(cls, dcae, image, size=0, chunk=8) -> io.NodeOutput:
        import torch

        from ..letstalk_core.autoencoder import encode_frames
        from ..letstalk_core.io import prepare_portrait_image

        frames = common.image_to_core(image, "image")
        factor = dcae.module.config.spatial_compression
        if not size and (frames.shape[-1] % factor or frames.shape[-2] % factor):
            raise ValueError(f"the image is {frames.shape[-1]}×{frames.shape[-2]}; the DC-AE needs sides that are "
                             f"multiples of {factor}. Set 'size' (e.g. 64) or resize the image first.")
        h, w = (size, size) if size else frames.shape[-2:]
        mode = "model" if size else "keep"  # gray → RGB, RGBA over white, and the crop/resize when sized
        frames = torch.cat([prepare_portrait_image(f, h, w, size_mode=mode, factor=factor) for f in frames])
        host.load_to_device(dcae.patcher)
        dev = dcae.patcher.load_device
        latents = encode_frames(dcae.module.to(dev), frames, chunk_size=chunk).cpu()
        return io.NodeOutput({"samples": latents})


class LetsTalkDCAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDCAEDecode",
            display_name="LetsTalk DC-AE Decode",
            category="LetsTalk",
            description="DC-AE latents → images, a chunk of frames at a time, so memory stays flat for long videos.",
            inputs=[
                DCAE.Input("dcae", tooltip="The autoencoder the latents were made with."),
                io.Latent.Input("latent", tooltip="Latents [B, C, h, w] or a clip [B, C, T, h, w] (frames in order)."),
                io.Int.Input("chunk", default=8, min=1, max=256, tooltip="Frames decoded at a time (peak memory)."),
            ],
            outputs=[io.Image.Output("images", tooltip="Decoded frames, in order.")],
        )

    @classmethod
    def execute(cls, dcae, latent, chunk=8) -> io.NodeOutput:
        import torch

        from ..letstalk_core.autoencoder import iter_decode

        z = latent["samples"] if isinstance(latent, dict) else latent
        if z.ndim == 5:
            z = z.permute(0, 2, 1, 3, 4).reshape(-1, *z.shape[1:2], *z.shape[3:])
        host.load_to_device(dcae.patcher)
        dev = dcae.patcher.load_device
        out = []
        for frames in iter_decode(dcae.module.to(dev), z.float(), chunk_size=chunk):
            host.check_interrupt()
            out.append(common.core_to_image(frames))
        return io.NodeOutput(torch.cat(out))


NODES = [LetsTalkAudioEncoder, LetsTalkDCAEEncode, LetsTalkDCAEDecode]
