"""A tiny random MEMO installation in the published layout, for loop, CLI and host tests.

The MEMO folder is the golden fixture's (``tests/fixtures/memo/golden``: every block type, random
weights) with an ImageProj that takes a 512-d ArcFace embedding and the tiny SCRFD/ArcFace ONNX graphs of
``tests/fixtures/face`` under ``misc/face_analysis/models``; beside it a tiny SD VAE (diffusers layout)
and a tiny wav2vec2 whose 3 layers × 8 channels match the golden audio projector. Frames are 128².
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "memo" / "golden"
FACE = FIXTURES / "face"
PORTRAIT = FACE / "images" / "portrait.png"
NO_FACE = FACE / "images" / "no_face.png"
SIZE = 128


def _perturbed(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def make_tiny_memo(root: Path, *, face_models: bool = True) -> dict[str, Path]:
    """Write the installation under ``root``; returns the paths (``memo``, ``vae``, ``wav2vec2``)."""
    from letstalk_core.audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
    from letstalk_core.autoencoder.sd_vae import SDVAE, SDVAEConfig
    from letstalk_core.families.memo.projections import ImageProj

    root = Path(root)
    memo = root / "memo"
    shutil.copytree(GOLDEN, memo, ignore=shutil.ignore_patterns("io.safetensors"))
    torch.manual_seed(0)
    proj_state = {k: v for k, v in
                  _perturbed(ImageProj(embedding_dim=512, tokens=4, dim=_image_proj_dim()), 1).items()}
    save_file(proj_state, str(memo / "image_proj" / "diffusion_pytorch_model.safetensors"))
    if face_models:
        shutil.copytree(FACE / "models", memo / "misc" / "face_analysis" / "models")
    vae_dir = root / "sd-vae"
    vae_dir.mkdir()
    vae = SDVAE(SDVAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1))
    save_file(_perturbed(vae, 2), str(vae_dir / "diffusion_pytorch_model.safetensors"))
    (vae_dir / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 32,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "act_fn": "silu", "scaling_factor": 0.18215, "sample_size": SIZE}))
    w2v = Wav2Vec2Encoder(Wav2Vec2Config(hidden_size=8, num_layers=3, num_heads=2, intermediate_size=16,
                                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2))
    w2v_path = root / "wav2vec2-tiny.safetensors"
    save_file(_perturbed(w2v, 3), str(w2v_path))
    return {"memo": memo, "vae": vae_dir, "wav2vec2": w2v_path}


def _image_proj_dim() -> int:
    from safetensors import safe_open

    with safe_open(str(GOLDEN / "image_proj" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        return f.get_slice("norm.weight").get_shape()[0]
