"""Shared adapter code: ComfyUI IMAGE/AUDIO ↔ core tensors, and a generator assembled from the
loaded parts (placed on their devices by ComfyUI's model management)."""
from __future__ import annotations

from . import host
from .types import LoadedDCAE, LoadedModel, LoadedSpeech

IMAGE_MAX_SIDE = 8192  # the core's MAX_PORTRAIT_SIDE


def image_to_core(image, what: str = "image"):
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] → core ``[B, C, H, W]`` in [-1, 1] (CPU float32)."""
    import torch

    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} must be an IMAGE [batch, height, width, channels]; got "
                         f"{tuple(getattr(image, 'shape', ())) or type(image).__name__}.")
    h, w = image.shape[1:3]
    if max(h, w) > IMAGE_MAX_SIDE:
        raise ValueError(f"{what} is {w}×{h} pixels; LetsTalk takes at most {IMAGE_MAX_SIDE} pixels a side. Scale it "
                         "down first (Upscale Image / ImageScale) or crop the face with LetsTalk Face Crop.")
    return image.detach().to("cpu", torch.float32).permute(0, 3, 1, 2) * 2 - 1


def core_to_image(frames):
    """Core frames ``[N, 3, H, W]`` in [-1, 1] → IMAGE ``[N, H, W, 3]`` in [0, 1] (CPU float32)."""
    import torch

    return ((frames.detach().to("cpu", torch.float32) + 1) / 2).clamp_(0, 1).permute(0, 2, 3, 1).contiguous()


def audio_waveform(audio, what: str = "audio"):
    """ComfyUI AUDIO → ``(waveform [C, T], sample_rate)``; a batch must hold one clip."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{what} must be a ComfyUI AUDIO (a dict with 'waveform' and 'sample_rate'); connect Load Audio.")
    wave = audio["waveform"]
    if getattr(wave, "ndim", 0) == 3:
        if wave.shape[0] != 1:
            raise ValueError(f"{what} holds a batch of {wave.shape[0]} clips; LetsTalk takes one speech track.")
        wave = wave[0]
    return wave, int(audio["sample_rate"])


def warn_if_silent(wave, what: str = "The audio") -> str | None:
    """Log (ComfyUI's console) and return the warning for a silent track: it is accepted as a
    "listening" clip, as the CLI does, but reported in case the file or its channel is wrong."""
    from ..letstalk_core.audio import silence_warning

    warning = silence_warning(wave, what)
    if warning:
        log_warning(warning)
    return warning


def log_warning(warning: str) -> None:
    """A warning on ComfyUI's console."""
    import logging

    logging.getLogger("letstalk").warning("LetsTalk: %s", warning)


def covered_audio(audio, num_frames: int, fps: float) -> dict:
    """The AUDIO the video covers: the track padded with silence to exactly ``num_frames / fps`` seconds."""
    from ..letstalk_core.audio import cover_frames

    wave, rate = audio_waveform(audio)
    return {"waveform": cover_frames(wave, rate, num_frames, fps)[None].contiguous(), "sample_rate": rate}


def resolve_parts(model: LoadedModel, dcae: LoadedDCAE | None, speech) -> tuple[LoadedDCAE, object]:
    """The DC-AE and speech encoder to use: the connected ones, else those bundled with the model."""
    if not isinstance(model, LoadedModel):
        raise ValueError("connect a LetsTalk Model Loader to 'model'.")
    dcae = dcae if dcae is not None else model.dcae
    if dcae is None:
        raise ValueError(f"'{model.name}' has no DC-AE bundled; connect a LetsTalk DC-AE Loader to 'dcae'.")
    return dcae, speech if speech is not None else model.speech  # None is refused by speech_encoder_for


def speech_encoder_for(model: LoadedModel, speech):
    """A core :class:`SpeechEncoder` for ``model``'s config from our handle or ComfyUI's native
    AUDIO_ENCODER (whose wav2vec2 weights are loaded into the core encoder, so features follow the
    LetsTalk/Hallo recipe exactly), plus the patcher to place."""
    from ..letstalk_core.audio import SpeechEncoder

    kind = model.config.speech_encoder.kind
    if speech is None:
        raise ValueError(f"'{model.name}' uses a wav2vec2 speech encoder that is not bundled; connect LetsTalk Speech "
                         "Encoder Loader (or the native Load Audio Encoder) to 'speech_encoder'.")
    if isinstance(speech, LoadedSpeech):
        if kind == "wav2vec2" and speech.wav2vec2 is None:
            raise ValueError(f"'{model.name}' needs a wav2vec2 speech encoder but '{speech.name}' is the log-mel front "
                             "end; connect LetsTalk Speech Encoder Loader.")
        return SpeechEncoder(model.config.speech_encoder, speech.wav2vec2 if kind == "wav2vec2" else None), speech.patcher
    if hasattr(speech, "get_sd") and hasattr(speech, "encode_audio"):  # native AudioEncoderLoader output
        if kind != "wav2vec2":
            raise ValueError(f"'{model.name}' was trained on {kind} features, not wav2vec2; leave 'speech_encoder' "
                             "empty to use its own front end.")
        from ..letstalk_core.audio import load_wav2vec2

        module = load_wav2vec2(speech.get_sd()).eval()
        return SpeechEncoder(model.config.speech_encoder, module), host.patcher_for(module)
    raise ValueError(f"'speech_encoder' must come from LetsTalk Speech Encoder Loader or Load Audio Encoder; got "
                     f"{type(speech).__name__}.")


def is_memo(model) -> bool:
    """Whether a MODEL socket carries a MEMO loader's model (:class:`LoadedMemo`) rather than LetsTalk's."""
    return getattr(model, "family", "letstalk") == "memo"


def require_letstalk(model, node: str) -> None:
    """Nodes that work on one LetsTalk stage at a time refuse a MEMO model with what to use instead."""
    if is_memo(model):
        raise ValueError(f"{node} works with LetsTalk checkpoints; a MEMO model runs through LetsTalk Memory Bank "
                         "Loop (connect the MEMO loader's model there).")


def make_generator(model: LoadedModel, dcae: LoadedDCAE | None = None, speech=None):
    """A core generator over the loaded parts, after model management has put them on the device."""
    from ..letstalk_core.families.letstalk import LetsTalkGenerator

    require_letstalk(model, "this node")
    dcae, speech = resolve_parts(model, dcae, speech)
    encoder, speech_patcher = speech_encoder_for(model, speech)
    host.load_to_device(model.patcher, dcae.patcher, speech_patcher)
    device = model.patcher.load_device
    if encoder.model is not None:
        encoder.model.to(device)
    return LetsTalkGenerator(model.config, model.transformer, dcae.module, encoder, device=device, dtype=model.dtype)


MEMO_PARTS = ("reference_net", "diffusion_net", "image_proj", "audio_proj", "emotion_classifier")


def memo_wav2vec2(speech):
    """The wav2vec2 module of a MEMO loader's speech handle (ours or ComfyUI's AUDIO_ENCODER) and its patcher."""
    from .types import LoadedSpeech

    if isinstance(speech, LoadedSpeech) and speech.wav2vec2 is not None:
        return speech.wav2vec2, speech.patcher
    if hasattr(speech, "get_sd") and hasattr(speech, "encode_audio"):
        from ..letstalk_core.audio import load_wav2vec2

        module = load_wav2vec2(speech.get_sd()).eval()
        return module, host.patcher_for(module)
    raise ValueError("MEMO needs wav2vec2-base-960h: pick it in the MEMO loader's encoder_name, or connect LetsTalk "
                     "Speech Encoder Loader / Load Audio Encoder to its speech_encoder.")


def memo_plan(model, device, decode_chunk: int = 8):
    """The MEMO run's memory plan on ``device`` (the loader's tier, or under auto the fastest that fits
    what ComfyUI can free); refuses a run that cannot fit, before any work."""
    from ..letstalk_core.families.memo import choose_options

    v = model.config.video
    return choose_options(model.models.folder, tier=model.memory_tier, state_dtype=model.state_dtype,
                          free_bytes=host.plannable_memory(device), device=device, size=v.width,
                          dtype=model.dtype, frames=v.clip_frames, decode_chunk=decode_chunk)


def make_memo_generator(model, decode_chunk: int = 8):
    """A core :class:`MemoGenerator` over a :class:`LoadedMemo`, its networks placed by model management,
    which is told the run's planned state and activations (``memory_required``) so that it frees or
    offloads other models for them. Returns ``(generator, tier, plan)``."""
    from ..letstalk_core.families.memo import MemoGenerator

    device = host.torch_device()
    tier, options, plan = memo_plan(model, device, decode_chunk)
    weights = sum(b for name, b in plan.resident.items() if "weights" in name)
    wav2vec2, speech_patcher = memo_wav2vec2(model.speech)
    needed = MEMO_PARTS if model.emotion2vec else MEMO_PARTS[:-1]
    for name in needed:
        if name not in model.patchers:
            model.patchers[name] = host.patcher_for(getattr(model.models, name))
    host.load_to_device(*(model.patchers[n] for n in needed), model.patchers["vae"], speech_patcher,
                        memory_required=max(0, plan.peak - weights))
    device = model.patchers["diffusion_net"].load_device
    wav2vec2.to(device)
    model.models.device = device
    gen = MemoGenerator(model.models, model.vae, wav2vec2, config=model.config, device=device, dtype=model.dtype,
                        options=options)
    if options.offload:  # the Reference Net and the VAE leave the device through model management
        parts = {"reference_net": model.patchers["reference_net"], "vae": model.patchers["vae"]}
        gen.place = lambda name, on_device: (host.load_to_device(parts[name]) if on_device
                                             else host.offload(parts[name]))
    return gen, tier, plan


def memo_conditions(model, generator, image) -> dict:
    """The face embedding (the MEMO folder's SCRFD + ArcFace through onnxruntime) of the portrait
    ``[3, H, W]`` in [-1, 1] and the emotion source chosen in the MEMO loader, as
    :meth:`MemoGenerator.prepare` takes them."""
    from ..letstalk_core.families.memo import emotion_source, portrait_face_embedding

    if "face" not in model.patchers:
        from ..letstalk_core.face import FaceAnalyzer

        model.patchers["face"] = FaceAnalyzer.from_folder(model.folder)
    face = portrait_face_embedding(image, model.patchers["face"], allow_missing=model.allow_no_face)
    return {"face_embedding": face, "emotions": emotion_source(model.emotion, model.emotion2vec, generator)}


def preview_decoder(generator):
    """A callable turning the current clean estimate ``[1, C, F, h, w]`` into a PIL preview (its first
    frame through the DC-AE: one frame's decode per preview)."""
    from PIL import Image

    def decode(latents):
        from ..letstalk_core.autoencoder import iter_decode
        from ..letstalk_core.io import tensor_to_uint8

        first = latents[0, :, :1].transpose(0, 1).float()
        if getattr(generator, "vae", None) is not None:  # MEMO: the SD VAE
            img = generator.vae.decode(first.to(generator.vae_dtype), chunk_size=1)
        else:
            img = next(iter_decode(generator.dcae, first, chunk_size=1))
        return Image.fromarray(tensor_to_uint8(img[0]))

    return decode


def check_host_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Fail before any work when the result cannot fit in RAM (the late OOM users of other packs
    lose hours to)."""
    try:
        import psutil
    except ImportError:
        return
    avail = psutil.virtual_memory().available
    if nbytes > 0.8 * avail:
        raise MemoryError(f"{what} need {nbytes / 2**30:.1f} GiB as an IMAGE batch but only {avail / 2**30:.1f} GiB of "
                          "RAM is free. " + (hint or "Use a shorter speech track (split it and join the videos), a "
                                                     "smaller photo, or free memory."))


def consumed_outputs(prompt, node_id) -> set[int] | None:
    """Which output slots of node ``node_id`` some node of ``prompt`` (the API graph ComfyUI runs) takes
    as input; None when that cannot be told (then the caller makes every output)."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    me = str(node_id)
    used = set()
    for node in prompt.values():
        for value in (node.get("inputs", {}) if isinstance(node, dict) else {}).values():
            if isinstance(value, (list, tuple)) and len(value) == 2 and str(value[0]) == me and isinstance(value[1], int):
                used.add(value[1])
    return used or None


def video_output(path):
    """A native VIDEO for a temp file we wrote (streamed: nothing of it is held in memory). The file lives as long
    as the VIDEO does: when ComfyUI drops the output from its cache (the next prompt replaces it), the file is
    removed, so a day of prompts leaves no trail of videos in the temp folder."""
    import weakref

    from comfy_api.latest import InputImpl

    video = InputImpl.VideoFromFile(str(path))
    weakref.finalize(video, _remove_quietly, str(path))
    return video


def _remove_quietly(path: str) -> None:
    from pathlib import Path

    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def video_source(video, what: str = "video"):
    """The file behind a native VIDEO, to stream from it; a VIDEO built from frames in memory is written
    to a temporary file first (it is in memory already)."""
    src = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(src, str) or hasattr(src, "__fspath__"):
        return str(src)
    if not hasattr(video, "save_to"):
        raise ValueError(f"{what} must be a VIDEO (e.g. the Memory Bank Loop's video output or Load Video).")
    path = host.temp_file(TEMP_SOURCE, ".mp4")
    video.save_to(str(path))
    return str(path)


TEMP_SOURCE = "letstalk_source"  # video_source's own temp copies: removed by their user after reading


def release_source(path: str) -> None:
    """Remove ``path`` if it is one of :func:`video_source`'s temp copies (never a user's file)."""
    from pathlib import Path

    p = Path(path)
    if p.parent == host.temp_dir() / "letstalk" and p.name.startswith(TEMP_SOURCE + "_"):
        _remove_quietly(str(p))


def done_ui(summary: str) -> dict:
    """A small UI result. ComfyUI's queue progress ("Total") counts a node as finished only when it sends
    a UI result (or is cached); without one, a graph of LetsTalk nodes reads "Total: 0 %" until the end."""
    return {"letstalk": [summary]}
