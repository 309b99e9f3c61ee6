"""Image autoencoders. Deep compression autoencoder (DC-AE, arXiv 2410.10733, LetsTalk): model, presets,
both checkpoint key layouts and chunked encode/decode. See ``dc_ae.py`` (network and frame helpers),
``config.py`` (configs and the released presets) and ``checkpoint.py`` (loading, conversion, saving).
Stable Diffusion VAE (diffusers ``AutoencoderKL``, MEMO): ``sd_vae.py`` (model, diffusers and LDM key
layouts, ``load_sd_vae``)."""
from .checkpoint import (
    CONFIG_METADATA_KEY,
    check_state_dict,
    convert_original_to_diffusers,
    detect_layout,
    load_dcae,
    save_dcae,
    unwrap_state_dict,
)
from .config import DCAE_PRESETS, DCAEConfig, dcae_config_from_diffusers_json, get_dcae_config
from .dc_ae import (
    DCAE,
    check_images,
    check_latents,
    decode_latents,
    encode_frames,
    fit_to_multiple,
    iter_decode,
    nearest_multiples,
)
from .sd_vae import (
    SDVAE,
    SDVAEConfig,
    convert_ldm_vae_to_diffusers,
    detect_sd_vae_layout,
    infer_sd_vae_shape,
    ldm_vae_key_to_diffusers,
    load_sd_vae,
)

__all__ = [
    "CONFIG_METADATA_KEY",
    "DCAE",
    "DCAEConfig",
    "DCAE_PRESETS",
    "SDVAE",
    "SDVAEConfig",
    "check_images",
    "check_latents",
    "check_state_dict",
    "convert_ldm_vae_to_diffusers",
    "convert_original_to_diffusers",
    "dcae_config_from_diffusers_json",
    "decode_latents",
    "detect_layout",
    "detect_sd_vae_layout",
    "encode_frames",
    "fit_to_multiple",
    "get_dcae_config",
    "infer_sd_vae_shape",
    "iter_decode",
    "ldm_vae_key_to_diffusers",
    "load_dcae",
    "load_sd_vae",
    "nearest_multiples",
    "save_dcae",
    "unwrap_state_dict",
]
