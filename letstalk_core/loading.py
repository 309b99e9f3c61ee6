"""Build a ready :class:`~letstalk_core.pipeline.LetsTalkGenerator` from files."""
from __future__ import annotations

import os

import torch

from .checkpoint import inference_recipe, load_transformer, read_checkpoint


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU; anything else is validated."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this torch has no CUDA; use --device cpu.")
    return dev


FORCE_NATIVE_BF16 = "LETSTALK_NATIVE_BF16"  # 1/0: answer the probe below without asking the hardware


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matmuls and convolutions in hardware, and why (for ``info`` and logs).

    CUDA: compute capability 8.0+ (Ampere and later; ``torch.cuda.is_bf16_supported`` without emulation).
    CPU: AMX tiles (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4 and later), as oneDNN
    uses them; elsewhere a CPU computes bf16 by converting to fp32, tens of times slower than fp32 (measured
    by ``benchmarks/limits.py`` on an AVX2 EPYC: a 512² GEMM at 1.9 against 88 GFLOP/s). Other devices: no.
    The environment variable ``LETSTALK_NATIVE_BF16`` (``1``/``0``) overrides the probe: the test suite runs
    both ways on any machine with it.
    """
    forced = os.environ.get(FORCE_NATIVE_BF16, "").strip().lower()
    if forced in ("0", "1", "true", "false", "yes", "no"):
        ok = forced in ("1", "true", "yes")
        return ok, f"{FORCE_NATIVE_BF16}={forced} (the hardware probe is overridden)"
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation flag
            ok = torch.cuda.is_bf16_supported()
        major, minor = torch.cuda.get_device_capability(device)
        return ok, f"CUDA compute capability {major}.{minor} ({'has' if ok else 'no'} native bf16)"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)  # the probes are private in torch: absent ones count as no
        amx, avx512_bf16 = (bool(getattr(cpu, name, lambda: False)())
                            for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
        mkldnn = bool(torch.backends.mkldnn.is_available()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if mkldnn and (amx or avx512_bf16):
            return True, f"CPU with {'AMX' if amx else 'AVX512-BF16'}"
        return False, "CPU without AMX or AVX512-BF16: bf16 would be emulated, tens of times slower than fp32"
    return False, f"{device.type}: fp32 unless asked"


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 where the device runs it in hardware (:func:`native_bf16`), fp32 elsewhere; or the
    dtype named (``fp32``, ``bf16``, ``fp16``)."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device)[0] else torch.float32
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16.")
    return table[dtype]


def bundled_dcae(config, state: dict, source: str = "this checkpoint"):
    """The DC-AE of ``config`` with a bundled state dict (``dcae.*`` of a checkpoint), checked, fp32, eval."""
    from .autoencoder.dc_ae import DCAE
    from .checkpoint import check_module_state

    dcae = DCAE(config.dcae)
    check_module_state(dcae, state, f"the autoencoder bundled in {source}")
    dcae.load_state_dict(state)
    return dcae.float().use_channels_last().eval()


def bundled_wav2vec2(config, state: dict, source: str = "this checkpoint"):
    """The wav2vec2 encoder of ``config`` with a bundled state dict (``speech.*``), checked, eval."""
    from .audio.wav2vec2 import Wav2Vec2Encoder
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
    from .audio.features import SpeechEncoder
    from .audio.wav2vec2 import load_wav2vec2
    from .autoencoder.checkpoint import load_dcae

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
    from .pipeline import LetsTalkGenerator

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev) if isinstance(dtype, str) else dtype
    config, groups, meta = read_checkpoint(checkpoint)
    model = load_transformer(config, groups["dit"], device=dev, dtype=dt)
    dcae, speech = load_parts(config, groups["dcae"], groups["speech"], dcae_path=dcae_path,
                              speech_encoder_path=speech_encoder_path, device=dev)
    dcae = dcae.to(dev, torch.float32 if dev.type == "cpu" else dt)
    return LetsTalkGenerator(config, model, dcae, speech, device=dev, dtype=dt, recipe=inference_recipe(config, meta))
