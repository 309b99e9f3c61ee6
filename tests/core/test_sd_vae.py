"""SD VAE (MEMO's AutoencoderKL): equivalence with diffusers, both key layouts (diffusers folder, LDM/CompVis
single file, full-checkpoint prefix, pre-0.14 attention names), config.json handling, clear refusals and
dtype / memory-format support. Tiny widths keep it fast."""
from __future__ import annotations

import json
import re

import pytest
import torch

from letstalk_core.autoencoder import (
    SDVAE,
    SDVAEConfig,
    convert_ldm_vae_to_diffusers,
    detect_sd_vae_layout,
    ldm_vae_key_to_diffusers,
    load_sd_vae,
)

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

TOL = 1e-5
SF = 0.18215
# 32 norm groups (SD's, which a bare file cannot state) so single files load; 3 levels: compression 4.
TINY = dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32, latent_channels=4)
LEVELS = len(TINY["block_out_channels"])


def reference(seed: int = 0, **overrides) -> "diffusers.AutoencoderKL":
    """A diffusers AutoencoderKL at tiny widths with every parameter (norms and biases included) randomised."""
    kw = dict(TINY, **overrides)
    n = len(kw["block_out_channels"])
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n, **kw
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def diffusers_config(**overrides) -> dict:
    n = len(TINY["block_out_channels"])
    cfg = dict(
        _class_name="AutoencoderKL", _diffusers_version="0.42.0", act_fn="silu", in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(TINY["block_out_channels"]), layers_per_block=1, latent_channels=4,
        norm_num_groups=32, sample_size=16, scaling_factor=SF, force_upcast=True,
    )
    cfg.update(overrides)
    return cfg


def images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(n: int = 3, size: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


def ref_encode(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(x).latent_dist.mean * SF


def ref_decode(model, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(z / SF).sample


def assert_matches(ours: SDVAE, ref) -> None:
    x, z = images(), latents()
    assert (ours.encode(x, chunk_size=2) - ref_encode(ref, x)).abs().max() <= TOL
    assert (ours.decode(z, chunk_size=2, clamp=False) - ref_decode(ref, z)).abs().max() <= TOL


# -- an independent diffusers -> LDM mapping, used to write LDM files -------------------------------------
def to_ldm_key(key: str, n: int) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        part, kind, i, sub, j, rest = m.groups()
        level = int(i) if kind == "down" else n - 1 - int(i)
        rest = rest.replace("conv_shortcut", "nin_shortcut")
        if sub == "resnets":
            return f"{part}.{kind}.{level}.block.{j}.{rest}"
        return f"{part}.{kind}.{level}.{kind}sample.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key)
    if m:
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}"
    return key.replace("conv_norm_out", "norm_out")


def ldm_state_dict(model, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in model.state_dict().items():
        if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", key):
            tensor = tensor[:, :, None, None]  # LDM stores 1x1 convolutions
        out[prefix + to_ldm_key(key, LEVELS)] = tensor.contiguous()
    return out


# Written by hand (3 levels, so decoder up.0 is up_blocks.2: the reversed index).
KEY_PAIRS = [
    ("encoder.down.0.block.0.norm1.weight", "encoder.down_blocks.0.resnets.0.norm1.weight"),
    ("encoder.down.0.downsample.conv.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight"),
    ("encoder.down.1.block.0.nin_shortcut.bias", "encoder.down_blocks.1.resnets.0.conv_shortcut.bias"),
    ("encoder.mid.block_1.conv2.bias", "encoder.mid_block.resnets.0.conv2.bias"),
    ("encoder.mid.block_2.norm1.weight", "encoder.mid_block.resnets.1.norm1.weight"),
    ("encoder.mid.attn_1.norm.bias", "encoder.mid_block.attentions.0.group_norm.bias"),
    ("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight"),
    ("decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
    ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
    ("decoder.up.2.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"),
    ("decoder.up.2.upsample.conv.bias", "decoder.up_blocks.0.upsamplers.0.conv.bias"),
    ("decoder.up.1.block.2.conv2.weight", "decoder.up_blocks.1.resnets.2.conv2.weight"),
    ("decoder.up.0.block.0.nin_shortcut.weight", "decoder.up_blocks.2.resnets.0.conv_shortcut.weight"),
    ("decoder.conv_in.bias", "decoder.conv_in.bias"),
    ("quant_conv.weight", "quant_conv.weight"),
    ("post_quant_conv.bias", "post_quant_conv.bias"),
]


@pytest.fixture(scope="module")
def ref():
    return reference()


# -- network ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [{}, dict(norm_num_groups=8, block_out_channels=(8, 16, 16)),
     dict(mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False, layers_per_block=2)],
    ids=["sd", "groups-8", "no-attn-no-quant"],
)
def test_matches_diffusers(overrides):
    ref = reference(**overrides)
    ours = SDVAE(SDVAEConfig(**dict(TINY, **overrides))).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_matches(ours, ref)
    x = images(1, 24)  # non-square, odd number of latent rows after the right/bottom pad downsampling
    x = torch.cat([x, x[..., :16]], dim=-1)[..., :16, :]  # 16x40
    with torch.no_grad():
        assert (ours.latent_mean(x) - ref.encode(x).latent_dist.mean).abs().max() <= TOL


def test_sd_defaults_and_compression():
    cfg = SDVAEConfig()
    assert cfg.block_out_channels == (128, 256, 512, 512) and cfg.layers_per_block == 2
    assert cfg.scaling_factor == SF and cfg.spatial_compression == 8 and cfg.latent_channels == 4
    assert SDVAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        SDVAEConfig(block_out_channels=(8, 12), norm_num_groups=8)


def test_decode_clamps_and_chunks_identically(ref):
    ours = load_sd_vae(ref.state_dict())
    z = latents(5) * 3
    whole = ours.decode(z, chunk_size=5, clamp=False)
    assert whole.abs().max() > 1  # the clamp below is exercised
    clamped = ours.decode(z, chunk_size=2)
    assert clamped.abs().max() == 1.0  # batch-size dependent conv kernels: equal to float rounding only
    assert (clamped - whole.clamp(-1, 1)).abs().max() <= TOL
    chunks = list(ours.iter_decode(z, chunk_size=2))
    assert [c.shape[0] for c in chunks] == [2, 2, 1] and chunks[0].dtype == torch.float32


def test_shift_factor_applied(ref):
    ours = load_sd_vae(ref.state_dict())
    shifted = SDVAE(SDVAEConfig(**TINY, shift_factor=0.25)).eval()
    shifted.load_state_dict(ref.state_dict())
    x, z = images(), latents()
    assert torch.allclose(shifted.encode(x), (ours.encode(x) / SF - 0.25) * SF, atol=1e-6)
    assert (shifted.decode(z, clamp=False) - ref_decode(ref, z + 0.25 * SF)).abs().max() <= TOL


def test_channels_last_and_bf16(ref):
    ours = load_sd_vae(ref.state_dict())
    x, z = images(), latents()
    enc, dec = ours.encode(x), ours.decode(z, clamp=False)
    cl = load_sd_vae(ref.state_dict()).to(memory_format=torch.channels_last)
    assert (cl.encode(x) - enc).abs().max() <= TOL
    assert (cl.decode(z, clamp=False) - dec).abs().max() <= TOL
    bf = load_sd_vae(ref.state_dict(), dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    e16, d16 = bf.encode(x), bf.decode(z, clamp=False)
    assert e16.dtype == d16.dtype == torch.float32
    assert (e16 - enc).abs().max() <= 0.05 * enc.abs().max()
    assert (d16 - dec).abs().max() <= 0.05 * dec.abs().max()


# -- loading: layouts ---------------------------------------------------------------------------------------
def test_ldm_key_table():
    for ldm, diff in KEY_PAIRS:
        assert ldm_vae_key_to_diffusers(ldm, LEVELS) == diff, ldm
        assert to_ldm_key(diff, LEVELS) == ldm, diff  # the test's own mapping agrees with the table
    # SD's 4 levels: ldm up.3 == diffusers up_blocks.0
    sd_levels = 4
    assert ldm_vae_key_to_diffusers("decoder.up.3.block.0.conv1.weight", sd_levels) == \
        "decoder.up_blocks.0.resnets.0.conv1.weight"
    assert ldm_vae_key_to_diffusers("decoder.up.0.upsample.conv.bias", sd_levels) == \
        "decoder.up_blocks.3.upsamplers.0.conv.bias"
    assert ldm_vae_key_to_diffusers("model.diffusion_model.out.0.weight", 4) is None


def test_ldm_file_round_trip(ref, tmp_path):
    sd = ldm_state_dict(ref)
    assert sd["encoder.mid.attn_1.k.weight"].shape == (64, 64, 1, 1)
    path = tmp_path / "vae-ft-mse-tiny.safetensors"
    save_file(sd, str(path))
    assert detect_sd_vae_layout(sd) == "ldm"
    ours = load_sd_vae(path)
    assert ours.config == SDVAEConfig(**TINY)
    assert_matches(ours, ref)
    converted = convert_ldm_vae_to_diffusers(sd)
    assert set(converted) == set(ref.state_dict())
    assert all(torch.equal(converted[k], v) for k, v in ref.state_dict().items())


def test_full_checkpoint_prefix(ref, tmp_path):
    sd = ldm_state_dict(ref, prefix="first_stage_model.")
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 4, 3, 3)
    sd["model_ema.decay"] = torch.tensor(0.999)
    sd["loss.logvar"] = torch.zeros(())
    sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    path = tmp_path / "sd15-full.safetensors"
    save_file(sd, str(path))
    assert_matches(load_sd_vae(path), ref)


def test_diffusers_folder_and_bare_file(ref, tmp_path):
    grouped = reference(seed=5, norm_num_groups=8)  # only config.json can say 8 groups: numbers prove it was read
    folder = tmp_path / "sd-vae-ft-mse"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in grouped.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(diffusers_config(scaling_factor=0.5, norm_num_groups=8)))
    ours = load_sd_vae(folder)
    assert ours.config.scaling_factor == 0.5 and ours.config.norm_num_groups == 8
    x = images()
    assert (ours.encode(x) - ref_encode(grouped, x) / SF * 0.5).abs().max() <= TOL
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (folder).rename(pipeline / "vae")
    assert load_sd_vae(pipeline).config.scaling_factor == 0.5  # a pipeline folder's vae/ is found
    assert load_sd_vae(pipeline, scaling_factor=SF).config.scaling_factor == SF
    # A bare diffusers-key file: config inferred from the shapes (norm groups cannot be, so give them here).
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(bare))
    assert detect_sd_vae_layout(ref.state_dict()) == "diffusers"
    inferred = load_sd_vae(bare).config
    assert inferred.block_out_channels == (32, 64, 64) and inferred.layers_per_block == 1
    assert inferred.latent_channels == 4 and inferred.use_quant_conv and inferred.mid_block_add_attention


def test_old_diffusers_config_and_attention_names(ref, tmp_path):
    """sd-vae-ft-mse was written by diffusers 0.4: config.json without use_quant_conv & co., and weights with
    the deprecated attention names query/key/value/proj_attn."""
    old = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    sd = {}
    for key, tensor in ref.state_dict().items():
        for before, after in old.items():
            key = key.replace(f"attentions.0.{after}.", f"attentions.0.{before}.")
        sd[key] = tensor.contiguous()
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in sd
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    cfg = diffusers_config(_diffusers_version="0.4.2")
    for name in ("scaling_factor", "force_upcast"):
        cfg.pop(name)
    (folder / "config.json").write_text(json.dumps(cfg))
    ours = load_sd_vae(folder)
    assert ours.config.scaling_factor == SF and ours.config.use_quant_conv
    assert_matches(ours, ref)


def test_torch_file_weights_only(ref, tmp_path):
    path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": ldm_state_dict(ref), "global_step": 840000}, path)
    assert_matches(load_sd_vae(path), ref)

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": ldm_state_dict(ref), "callback": Evil()}, bad)
    with pytest.raises(ValueError, match="evil.ckpt.* Python objects besides tensors.*safetensors"):
        load_sd_vae(bad)


def test_bf16_cast_on_load(ref, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file(ldm_state_dict(ref), str(path))
    ours = load_sd_vae(path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    w = ours.state_dict()["encoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(w, ref.state_dict()["encoder.mid_block.attentions.0.to_q.weight"].to(torch.bfloat16))
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_sd_vae(path, dtype=torch.int8)


# -- loading: refusals --------------------------------------------------------------------------------------
def test_refuses_dcae_and_unet(tmp_path):
    dcae = {
        "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "encoder.down_blocks.1.0.conv1.weight": torch.zeros(8, 8, 3, 3),
        "decoder.up_blocks.1.0.conv1.weight": torch.zeros(8, 8, 3, 3),
    }
    path = tmp_path / "dc-ae-f32c32.safetensors"
    save_file(dcae, str(path))
    with pytest.raises(ValueError, match=r"'dc-ae-f32c32.safetensors' is not a Stable Diffusion VAE: .*DC-AE"):
        load_sd_vae(path)
    unet = {"conv_in.weight": torch.zeros(4, 4, 3, 3), "time_embedding.linear_1.weight": torch.zeros(4, 4)}
    path = tmp_path / "unet.safetensors"
    save_file(unet, str(path))
    with pytest.raises(ValueError, match="'unet.safetensors' is not a Stable Diffusion VAE: .*diffusion model"):
        load_sd_vae(path)


def test_refuses_truncated_file(ref, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file(ldm_state_dict(ref), str(path))
    data = path.read_bytes()
    for cut in (len(data) - 100, 20):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="'vae.safetensors' is incomplete or corrupt.*download it again"):
            load_sd_vae(path)


def test_refuses_missing_and_misshaped_tensors(ref, tmp_path):
    sd = ldm_state_dict(ref)
    del sd["decoder.up.0.block.1.conv2.bias"]
    path = tmp_path / "missing.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"'missing.safetensors'.*1 missing tensors.*up_blocks\.2\.resnets\.1\.conv2"):
        load_sd_vae(path)
    sd = ldm_state_dict(ref)
    sd["encoder.mid.attn_1.v.weight"] = torch.zeros(64, 8, 1, 1)
    path = tmp_path / "shape.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"wrong shape.*to_v\.weight': expected \(64, 64\), file has \(64, 8\)"):
        load_sd_vae(path)
    sd = ldm_state_dict(ref)
    sd["encoder.extra.weight"] = torch.zeros(1)
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"unexpected tensors.*encoder\.extra\.weight"):
        load_sd_vae(path)


def test_config_json_refusals(ref, tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    cases = [
        (diffusers_config(use_fancy_norm=True), r"config.json'.*unknown AutoencoderKL field.*use_fancy_norm"),
        (diffusers_config(down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"]),
         r"config.json'.*down_block_types=.*AttnDownEncoderBlock2D.*not supported"),
        (diffusers_config(act_fn="gelu"), r"config.json'.*act_fn='gelu'"),
        (diffusers_config(_class_name="AutoencoderDC"), r"config.json' describes a 'AutoencoderDC'"),
        (diffusers_config(latent_channels=8), r"latent channels.*config.json.*wrong shape"),
    ]
    for cfg, pattern in cases:
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=pattern):
            load_sd_vae(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not read the SD VAE config"):
        load_sd_vae(folder)
    partial = diffusers_config()
    del partial["block_out_channels"]
    with pytest.raises(ValueError, match="no 'block_out_channels' and there are no weights"):
        SDVAEConfig.from_diffusers_config(partial, "config.json")
    inferred = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                    layers_per_block=1, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)
    assert SDVAEConfig.from_diffusers_config(partial, "c", inferred=inferred).block_out_channels == (32, 64, 64)


def test_refuses_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="SD VAE not found"):
        load_sd_vae(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no SD VAE weights"):
        load_sd_vae(empty)
    other = tmp_path / "vae.gguf"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported SD VAE file type"):
        load_sd_vae(other)


# -- input validation ---------------------------------------------------------------------------------------
def test_input_validation(ref):
    ours = load_sd_vae(ref.state_dict())
    with pytest.raises(ValueError, match="14x16 .*not a multiple of 4"):
        ours.encode(torch.zeros(1, 3, 14, 16))
    with pytest.raises(ValueError, match="Add a batch dimension"):
        ours.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="permute"):
        ours.encode(torch.zeros(1, 16, 16, 3))
    with pytest.raises(TypeError, match="float tensor.*127.5"):
        ours.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\].*x\*2-1"):
        ours.encode(torch.full((1, 3, 16, 16), 255.0))
    with pytest.raises(ValueError, match="NaN"):
        ours.encode(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\].*DC-AE"):
        ours.decode(torch.zeros(1, 32, 4, 4))
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        ours.decode(torch.zeros(1, 4, 4, 4), chunk_size=0)
