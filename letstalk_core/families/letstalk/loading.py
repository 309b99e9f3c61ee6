"""Build a ready :class:`~letstalk_core.families.letstalk.generator.LetsTalkGenerator` from files."""
from __future__ import annotations

import torch

from ...devices import pick_device, pick_dtype
from .checkpoint import inference_recipe, load_transformer, read_checkpoint


def bundled_dcae(config, state: dict, source: str = "this checkpoint"):
    """The DC-AE of ``config`` with a bundled state dict (``dcae.*`` of a checkpoint), checked, fp32, eval."""
    from ...autoencoder.dc_ae import DCAE
    from .checkpoint import check_module_state

    dcae = DCAE(config.dcae)
    check_module_state(dcae, state, f"the autoencoder bundled in {source}")
    dcae.load_state_dict(state)
    return dcae.float().use_channels_last().eval()


def bundled_wav2vec2(config, state: dict, source: str = "this checkpoint"):
    """The wav2vec2 encoder of ``config`` with a bundled state dict (``speech.*``), checked, eval."""
    from ...audio.wav2vec2 import Wav2Vec2Encoder
    from .checkpoint import check_module_state

    model = Wav2Vec2Encoder(config.speech_encoder.wav2vec2)
    check_module_state(model, state, f"the speech encoder bundled in {source}")
    model.load_state_dict(state)
    return model.eval()


def load_parts(config, dcae_state: dict | None = None, speech_state: dict | None = None, *, dcae_path=None,
               speech_encoder_path=None, device: torch.device = torch.device("cpu")):
    """The DC-AE and speech encoder a model config needs: from the given files, else from the state
    dicts bundled in a checkpoint (``dcae.*``/``speech.*``). Returns ``(dcae, SpeechEncoder)``; the
    DC-AE in float32 on ``device`` (the caller casts it), eval mode."""
    from ...audio.features import SpeechEncoder
    from ...audio.wav2vec2 import load_wav2vec2
    from ...autoencoder.checkpoint import load_dcae

    if dcae_path is not None:
        dcae = load_dcae(dcae_path, config.dcae)
        if dcae.config.latent_channels != config.dcae.latent_channels or dcae.config.spatial_compression != config.dcae.spatial_compression:
            raise ValueError(f"the DC-AE file gives {dcae.config.latent_channels} channels at {dcae.config.spatial_compression}× "
                             f"but the model was trained on {config.dcae.latent_channels} at {config.dcae.spatial_compression}×.")
    elif dcae_state:
        dcae = bundled_dcae(config, dcae_state)
    else:
        raise ValueError("no autoencoder weights: give the DC-AE file (--dcae) "
                         f"(config: {config.dcae.latent_channels} latent channels, {config.dcae.spatial_compression}×).")
    wav2vec2 = None
    if config.speech_encoder.kind == "wav2vec2":
        if speech_encoder_path is not None:
            wav2vec2 = load_wav2vec2(speech_encoder_path)
        elif speech_state:
            wav2vec2 = bundled_wav2vec2(config, speech_state)
        else:
            raise ValueError("this model uses a wav2vec2 speech encoder; give its file "
                             "(e.g. wav2vec2-base-960h model.safetensors) with --speech-encoder.")
        wav2vec2 = wav2vec2.to(device).eval()
    return dcae.to(device, torch.float32).eval(), SpeechEncoder(config.speech_encoder, wav2vec2)


def load_generator(checkpoint, *, dcae_path=None, speech_encoder_path=None, device="auto", dtype="auto"):
    """Load a generator from a LetsTalk checkpoint. The DC-AE and the wav2vec2 encoder come from the
    checkpoint when bundled (``dcae.*``/``speech.*``), otherwise from the given files."""
    from .generator import LetsTalkGenerator

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev) if isinstance(dtype, str) else dtype
    config, groups, meta = read_checkpoint(checkpoint)
    model = load_transformer(config, groups["dit"], device=dev, dtype=dt)
    dcae, speech = load_parts(config, groups["dcae"], groups["speech"], dcae_path=dcae_path,
                              speech_encoder_path=speech_encoder_path, device=dev)
    dcae = dcae.to(dev, torch.float32 if dev.type == "cpu" else dt)
    return LetsTalkGenerator(config, model, dcae, speech, device=dev, dtype=dt, recipe=inference_recipe(config, meta))
