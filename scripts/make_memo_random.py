"""A full-width MEMO installation with random weights, in the published layout, for memory and speed
measurements where the published weights cannot be downloaded (``benchmarks/memo_tiers.py``, the 512²
runs in the README).

Writes under ``--out``:

* ``memo/``: ``reference_net/``, ``diffusion_net/``, ``image_proj/``, ``audio_proj/``,
  ``misc/audio_emotion_classifier/`` — each the published ``config.json`` (``tests/fixtures/memo/configs``)
  and ``diffusion_pytorch_model.safetensors`` with every tensor the published file has (names and
  shapes as in ``tests/fixtures/memo/manifest.json``), in ``--dtype`` (fp32 like the published files by
  default); ``misc/face_analysis/models/`` with the test suite's tiny SCRFD/ArcFace graphs (they find
  no face in the random portrait: run with ``--allow-no-face``);
* ``sd-vae/``: an ``AutoencoderKL`` folder at sd-vae-ft-mse's width;
* ``wav2vec2-base.safetensors``: wav2vec2-base at full width;
* ``portrait.png`` (``--size``²) and ``speech.wav`` (``--seconds`` of a synthetic voice, 16 kHz).

The weights are random (no download is possible here), drawn tensor by tensor so that activations keep
a sane scale through 2.6 B parameters (matrices ~ N(0, 1/fan_in), norm gains ~ 1): the figures measured
on them are memory and time, not picture quality.

    python scripts/make_memo_random.py --out outputs/memo_random
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "fixtures" / "memo" / "configs"
FACE_MODELS = ROOT / "tests" / "fixtures" / "face" / "models"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_state(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random tensors for every entry of ``module.state_dict()`` (built on the meta device)."""
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith(".pos_encoder.pe"):
            continue  # a fixed function of its shape; the loader rebuilds it (as the published file may omit it)
        if not t.is_floating_point():
            out[name] = torch.zeros(t.shape, dtype=t.dtype)
            continue
        if t.ndim == 1:
            base = 1.0 if name.endswith("weight") else 0.0
            x = base + 0.02 * torch.randn(t.shape, generator=generator)
        else:
            fan_in = math.prod(t.shape[1:])
            x = torch.randn(t.shape, generator=generator) / math.sqrt(fan_in)
        out[name] = x.to(dtype).contiguous()
    return out


def _meta(build):
    with torch.device("meta"):
        return build()


def write_part(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "memo_random"))
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="the weight files' dtype (published: fp32)")
    p.add_argument("--size", type=int, default=512, help="the portrait's side")
    p.add_argument("--seconds", type=float, default=1.0, help="length of the speech file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = build_installation(Path(a.out), dtype=DTYPES[a.dtype], size=a.size, seconds=a.seconds, seed=a.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def build_installation(out: Path, *, dtype: torch.dtype, size: int, seconds: float, seed: int = 0) -> dict[str, Path]:
    """Write the installation (parts already written are kept); returns the paths."""
    from letstalk_core.audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
    from letstalk_core.autoencoder.sd_vae import SDVAE, SDVAEConfig
    from letstalk_core.families.memo.config import parse_unet_config
    from letstalk_core.families.memo.diffusion_net import DiffusionNet
    from letstalk_core.families.memo.loading import open_memo_folder
    from letstalk_core.families.memo.reference_net import ReferenceNet

    g = torch.Generator().manual_seed(seed)
    memo = out / "memo"
    builders = {
        "reference_net": lambda raw: ReferenceNet(parse_unet_config(raw, "reference", "reference_net")),
        "diffusion_net": lambda raw: DiffusionNet(parse_unet_config(raw, "diffusion", "diffusion_net")),
    }
    small = {"image_proj": None, "audio_proj": None, "audio_emotion_classifier": None}
    for name in (*builders, *small):
        sub = "misc/audio_emotion_classifier" if name == "audio_emotion_classifier" else name
        folder = memo / sub
        raw = json.loads((CONFIGS / name / "config.json").read_text())
        if (folder / "diffusion_pytorch_model.safetensors").is_file():
            continue
        if name in builders:
            module = _meta(lambda: builders[name](raw))
        else:
            module = _meta(lambda: _small_part(name, raw))
        write_part(folder, raw, random_state(module, g, dtype))
        print(f"wrote {folder}", flush=True)
    faces = memo / "misc" / "face_analysis" / "models"
    if not faces.is_dir():
        shutil.copytree(FACE_MODELS, faces)
    check_manifest(memo)
    open_memo_folder(memo)  # the loader accepts it as a published folder

    vae_dir = out / "sd-vae"
    if not (vae_dir / "diffusion_pytorch_model.safetensors").is_file():
        cfg = SDVAEConfig()
        write_part(vae_dir, {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                             "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
                             "norm_num_groups": cfg.norm_num_groups, "down_block_types": ["DownEncoderBlock2D"] * 4,
                             "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "scaling_factor": 0.18215,
                             "sample_size": 512},
                   random_state(_meta(lambda: SDVAE(cfg)), g, dtype))
    w2v = out / "wav2vec2-base.safetensors"
    if not w2v.is_file():
        from safetensors.torch import save_file
        save_file(random_state(_meta(lambda: Wav2Vec2Encoder(Wav2Vec2Config())), g, torch.float32), str(w2v))

    portrait, speech = out / "portrait.png", out / "speech.wav"
    _write_inputs(portrait, speech, size=size, seconds=seconds, seed=seed)
    return {"memo": memo, "vae": vae_dir, "wav2vec2": w2v, "portrait": portrait, "speech": speech}


def _small_part(name: str, raw: dict):
    from letstalk_core.families.memo.memory_plan import ConfigFolder

    return ConfigFolder.read(CONFIGS).parts[name].build()


def check_manifest(memo: Path) -> None:
    """Every part's tensors, names and shapes, equal to the reference classes' (``manifest.json``)."""
    from letstalk_core.families.memo.loading import PARTS, read_header

    manifest = json.loads((ROOT / "tests" / "fixtures" / "memo" / "manifest.json").read_text())["parts"]
    for name, (sub, _) in PARTS.items():
        found = {k: list(v[0]) for k, v in read_header(memo / sub / "diffusion_pytorch_model.safetensors").items()}
        want = {k: list(v) if not isinstance(v, dict) else list(v["shape"]) for k, v in manifest[name]["tensors"].items()}
        want = {k: v for k, v in want.items() if not k.endswith(".pos_encoder.pe")}
        if found != want:
            diff = sorted(set(found) ^ set(want))[:5] or [k for k in want if found.get(k) != want[k]][:5]
            raise SystemExit(f"{name}: not the published layout (e.g. {diff})")


def _write_inputs(portrait: Path, speech: Path, *, size: int, seconds: float, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in (0.0, 1.0, 2.0)], -1)
    img = (np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img).save(portrait)
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(t.shape)
    from letstalk_core.io.audio_file import save_wav
    save_wav(speech, torch.from_numpy(voice.astype(np.float32))[None], rate)


if __name__ == "__main__":
    sys.exit(main())
