"""DC-AE: equivalence with diffusers' AutoencoderDC, both checkpoint layouts, published parameter counts,
chunked encode/decode and input validation (reference: components.md section 1)."""
from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch

from letstalk_core.autoencoder import (
    DCAE,
    DCAE_PRESETS,
    DCAEConfig,
    convert_original_to_diffusers,
    dcae_config_from_diffusers_json,
    decode_latents,
    detect_layout,
    encode_frames,
    fit_to_multiple,
    get_dcae_config,
    iter_decode,
    load_dcae,
    save_dcae,
)
from letstalk_core.autoencoder import dc_ae
from letstalk_core.autoencoder.dc_ae import relu_linear_attention, relu_quadratic_attention

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

TOL = 1e-4

# Same structure as the released models (Res x3 + EfficientViT x3, 6 stages, f32), reduced widths/depths.
SANA_SMALL = dict(
    in_channels=3,
    latent_channels=8,
    attention_head_dim=8,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[8, 16, 32, 32, 64, 64],
    decoder_block_out_channels=[8, 16, 32, 32, 64, 64],
    encoder_layers_per_block=[1, 1, 1, 2, 1, 1],
    decoder_layers_per_block=[1, 1, 1, 1, 2, 1],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    downsample_block_type="conv",
    upsample_block_type="interpolate",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    encoder_out_shortcut=True,
    decoder_in_shortcut=True,
    decoder_conv_act_fn="relu",
    scaling_factor=0.41407,
)
IN_SMALL = dict(
    SANA_SMALL,
    encoder_block_out_channels=[16, 32, 32, 32, 64, 64],
    decoder_block_out_channels=[16, 32, 32, 32, 64, 64],
    encoder_layers_per_block=[0, 2, 1, 1, 1, 1],
    decoder_layers_per_block=[0, 2, 2, 1, 1, 1],
    encoder_qkv_multiscales=[[]] * 6,
    decoder_qkv_multiscales=[[]] * 6,
    downsample_block_type="pixel_unshuffle",
    upsample_block_type="pixel_shuffle",
    decoder_norm_types=["batch_norm"] * 3 + ["rms_norm"] * 3,
    decoder_act_fns=["relu"] * 3 + ["silu"] * 3,
    scaling_factor=0.3189,
)
# 32x64 input: the 1/8 map (4x8 = 32 > head_dim 8) takes the linear path, the 1/16 and 1/32 maps
# (2x4, 1x2 <= 8) the quadratic one, in the encoder and in the decoder.
IMAGE_HW = (32, 64)


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Non-default values everywhere: weights ~ N(0, 1/fan_in), 1-D params (biases, norm affine) random,
    BatchNorm running statistics random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(0.3 * noise + (1.0 if name.endswith("norm.weight") or "norm_out.weight" in name else 0.0))
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def _pair(kwargs: dict, seed: int):
    ref = diffusers.AutoencoderDC(**kwargs).eval()
    _randomize_(ref, seed)
    cfg = dcae_config_from_diffusers_json(json.loads(json.dumps(dict(ref.config))))
    ours = DCAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, cfg


@pytest.fixture(scope="module", params=["sana", "in"])
def pair(request):
    kwargs = SANA_SMALL if request.param == "sana" else IN_SMALL
    return (request.param, *_pair(kwargs, seed=1 if request.param == "sana" else 2))


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, *IMAGE_HW), generator=g) * 2 - 1


# -- test-local inverse of the diffusers conversion, built from components.md 1.5 (original keys) -------
def _original_key(key: str, cfg: DCAEConfig) -> str:
    ends = {
        r"encoder\.conv_in\.conv\.(\w+)": r"encoder.project_in.conv.conv.\1",
        r"encoder\.conv_in\.(\w+)": r"encoder.project_in.conv.\1",
        r"encoder\.conv_out\.(\w+)": r"encoder.project_out.main.op_list.0.conv.\1",
        r"decoder\.conv_in\.(\w+)": r"decoder.project_in.main.conv.\1",
        r"decoder\.norm_out\.(\w+)": r"decoder.project_out.op_list.0.\1",
        r"decoder\.conv_out\.conv\.(\w+)": r"decoder.project_out.op_list.2.conv.conv.\1",
        r"decoder\.conv_out\.(\w+)": r"decoder.project_out.op_list.2.conv.\1",
    }
    for pat, rep in ends.items():
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    m = re.fullmatch(r"(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.(\d+)\.(.+)", key)
    assert m, key
    part, s, j, rest = m.groups()
    conv_down = part == "encoder" and cfg.downsample_block_type == "conv"
    inner = {
        r"conv1\.(\w+)": r"main.conv1.conv.\1",
        r"conv2\.weight": "main.conv2.conv.weight",
        r"norm\.(\w+)": r"main.conv2.norm.\1",
        r"attn\.to_qkv_multiscale\.0\.proj_in\.weight": "context_module.main.aggreg.0.0.weight",
        r"attn\.to_qkv_multiscale\.0\.proj_out\.weight": "context_module.main.aggreg.0.1.weight",
        r"attn\.to_out\.weight": "context_module.main.proj.conv.weight",
        r"attn\.norm_out\.(\w+)": r"context_module.main.proj.norm.\1",
        r"attn\.to_[qkv]\.weight": "context_module.main.qkv.conv.weight",
        r"conv_out\.conv_inverted\.(\w+)": r"local_module.main.inverted_conv.conv.\1",
        r"conv_out\.conv_depth\.(\w+)": r"local_module.main.depth_conv.conv.\1",
        r"conv_out\.conv_point\.weight": "local_module.main.point_conv.conv.weight",
        r"conv_out\.norm\.(\w+)": r"local_module.main.point_conv.norm.\1",
        # down/up-sampling ops: a ConvLayer (sana conv down) or a layer wrapping one (pixel ops, interpolate up)
        r"conv\.(\w+)": r"main.conv.\1" if conv_down else r"main.conv.conv.\1",
    }
    for pat, rep in inner.items():
        if re.fullmatch(pat, rest):
            return f"{part}.stages.{s}.op_list.{j}.{re.sub(pat, rep, rest)}"
    raise AssertionError(f"no original name for {key}")


def to_original_layout(state_dict: dict, cfg: DCAEConfig) -> dict:
    out = {}
    for key, t in state_dict.items():
        new = _original_key(key, cfg)
        if new.endswith("qkv.conv.weight"):
            if key.endswith("to_q.weight"):
                parent = key.removesuffix("to_q.weight")
                qkv = [state_dict[parent + f"to_{c}.weight"] for c in "qkv"]
                out[new] = torch.cat(qkv)[:, :, None, None]
        elif new.endswith("proj.conv.weight"):
            out[new] = t[:, :, None, None]
        else:
            out[new] = t
    return out


# -- equivalence with diffusers ----------------------------------------------------------------------
def test_matches_diffusers_encoder_and_decoder(pair, monkeypatch):
    name, ref, ours, _ = pair
    calls = {"linear": 0, "quadratic": 0}

    def counted(kind, fn):
        def wrapper(*args):
            calls[kind] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(dc_ae, "relu_linear_attention", counted("linear", relu_linear_attention))
    monkeypatch.setattr(dc_ae, "relu_quadratic_attention", counted("quadratic", relu_quadratic_attention))
    x = _images()
    with torch.no_grad():
        z_ref, z = ref.encode(x).latent, ours.encode(x)
        y_ref, y = ref.decode(z_ref).sample, ours.decode(z_ref)
    assert calls["linear"] > 0 and calls["quadratic"] > 0, calls  # both attention paths are compared
    assert z.shape == (2, 8, IMAGE_HW[0] // 32, IMAGE_HW[1] // 32)
    assert y.shape == x.shape
    d_enc, d_dec = (z - z_ref).abs().max().item(), (y - y_ref).abs().max().item()
    print(f"{name}: max|dz|={d_enc:.2e} (max|z| {z_ref.abs().max():.2f}), "
          f"max|dy|={d_dec:.2e} (max|y| {y_ref.abs().max():.2f})")
    assert z_ref.std() > 0.05 and y_ref.std() > 0.05  # non-degenerate outputs
    assert d_enc < TOL and d_dec < TOL


def test_linear_and_quadratic_attention_agree():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 8, 20, generator=g) for _ in range(3))
    q, k = q.relu(), k.relu()
    t = lambda z: z.transpose(-1, -2)  # noqa: E731  (the shared kernel is token-first, the DC-AE channel-first)
    torch.testing.assert_close(t(relu_linear_attention(t(q), t(k), t(v), 1e-15)), relu_quadratic_attention(q, k, v, 1e-15),
                               atol=1e-5, rtol=1e-5)


def test_bf16_and_autocast_keep_attention_in_fp32(pair, monkeypatch):
    _, _, ours, cfg = pair
    seen = set()

    def recording(q, k, v, eps):
        seen.update({q.dtype, k.dtype, v.dtype})
        return relu_linear_attention(q, k, v, eps)

    monkeypatch.setattr(dc_ae, "relu_linear_attention", recording)
    x = _images(1)
    with torch.no_grad():
        z32 = ours.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_auto = ours.encode(x).float()
        half = DCAE(cfg).eval()
        half.load_state_dict(ours.state_dict())
        z16 = half.to(torch.bfloat16).encode(x.bfloat16()).float()
    assert seen == {torch.float32}
    for z in (z_auto, z16):
        assert torch.isfinite(z).all() and (z - z32).abs().max() < 0.1 * z32.abs().max()


# -- configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,total,enc,dec,n_diffusers,n_original",
    [
        ("dc-ae-f32c32-in-1.0", 323.36, 123.17, 200.18, 362, 338),
        ("dc-ae-f32c32-sana-1.0", 312.25, 153.03, 159.22, 375, 339),
        ("dc-ae-f64c128-in-1.0", 676.90, 264.55, 412.35, 418, 386),
    ],
)
def test_full_size_parameter_and_key_counts(name, total, enc, dec, n_diffusers, n_original):
    cfg = get_dcae_config(name)
    with torch.device("meta"):
        model = DCAE(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"{name}: {count(model):.2f} M ({count(model.encoder):.2f} / {count(model.decoder):.2f})")
    counts = tuple(round(count(m), 2) for m in (model, model.encoder, model.decoder))
    assert counts == (total, enc, dec)
    sd = model.state_dict()
    original = to_original_layout(sd, cfg)
    assert (len(sd), len(original)) == (n_diffusers, n_original)  # key counts of components.md 1.5
    assert detect_layout(original) == "original" and detect_layout(sd) == "diffusers"
    back = convert_original_to_diffusers(original, cfg)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


def test_original_key_names_follow_the_reference():
    shapes = {}
    for name in ("dc-ae-f32c32-sana-1.0", "dc-ae-f32c32-in-1.0"):
        cfg = get_dcae_config(name)
        with torch.device("meta"):
            shapes[name] = {k: tuple(v.shape) for k, v in to_original_layout(DCAE(cfg).state_dict(), cfg).items()}
    sana, inet = shapes["dc-ae-f32c32-sana-1.0"], shapes["dc-ae-f32c32-in-1.0"]
    assert sana["encoder.project_in.conv.weight"] == (128, 3, 3, 3)
    assert sana["encoder.stages.3.op_list.0.context_module.main.qkv.conv.weight"] == (1536, 512, 1, 1)
    assert sana["encoder.stages.3.op_list.0.context_module.main.aggreg.0.0.weight"] == (1536, 1, 5, 5)
    assert sana["encoder.stages.3.op_list.0.context_module.main.aggreg.0.1.weight"] == (1536, 32, 1, 1)
    assert sana["encoder.stages.3.op_list.0.context_module.main.proj.conv.weight"] == (512, 1024, 1, 1)
    assert sana["encoder.stages.0.op_list.2.main.conv.weight"] == (256, 128, 3, 3)
    assert sana["encoder.project_out.main.op_list.0.conv.weight"] == (32, 1024, 3, 3)
    assert sana["decoder.project_in.main.conv.weight"] == (1024, 32, 3, 3)
    assert sana["decoder.project_out.op_list.2.conv.weight"] == (3, 128, 3, 3)
    assert sana["decoder.stages.4.op_list.0.main.conv.conv.weight"] == (1024, 1024, 3, 3)
    assert inet["encoder.project_in.conv.conv.weight"] == (64, 3, 3, 3)
    assert inet["decoder.project_out.op_list.2.conv.conv.weight"] == (12, 256, 3, 3)
    assert "decoder.stages.1.op_list.0.main.conv.conv.bias" in inet
    assert "decoder.stages.1.op_list.1.main.conv2.norm.running_var" in inet


def test_presets_and_config_round_trip(pair):
    *_, cfg = pair
    assert DCAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.spatial_compression == 32 and get_dcae_config("dc-ae-f64c128-mix-1.0").spatial_compression == 64
    assert get_dcae_config("mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers").scaling_factor == 0.41407
    assert {n: c.scaling_factor for n, c in DCAE_PRESETS.items()} == {
        "dc-ae-f32c32-in-1.0": 0.3189, "dc-ae-f32c32-mix-1.0": 0.4552, "dc-ae-f32c32-sana-1.0": 0.41407,
        "dc-ae-f32c32-sana-1.1": 0.41407, "dc-ae-f64c128-in-1.0": 0.2889, "dc-ae-f64c128-mix-1.0": 0.4538,
    }
    with pytest.raises(ValueError, match=r"unknown DC-AE preset 'dc-ae-f16'.*dc-ae-f32c32-sana-1.0"):
        get_dcae_config("dc-ae-f16")
    with pytest.raises(ValueError, match="not a multiple of attention_head_dim=8"):
        DCAEConfig(**dict(SANA_SMALL, encoder_block_out_channels=[8, 16, 32, 32, 60, 64]))
    with pytest.raises(ValueError, match="decoder_norm_types has 2 entries but there are 6 stages"):
        DCAEConfig(**dict(SANA_SMALL, decoder_norm_types=["rms_norm"] * 2))
    with pytest.raises(ValueError, match=r"unknown DC-AE config keys \['bogus'\]"):
        DCAEConfig.from_dict({"bogus": 1})


# -- checkpoints ---------------------------------------------------------------------------------------
def _outputs(model, x):
    with torch.no_grad():
        z = model.encode(x)
        return z, model.decode(z)


def _channels_last(model):
    """A copy of ``model`` in the layout ``load_dcae`` returns, so loaded weights can be compared bit for bit."""
    return copy.deepcopy(model).use_channels_last()


def test_channels_last_equals_the_usual_layout(pair):
    """``use_channels_last`` (what loading sets, for speed) changes the layout, not the model: same
    outputs to float rounding, returned in the usual layout; and it can be turned off again."""
    _, _, ours, _ = pair
    fast = _channels_last(ours)
    assert fast.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x = _images(2)
    for a, b in zip(_outputs(fast, x), _outputs(ours, x)):
        assert a.is_contiguous() and a.shape == b.shape
        # float rounding of another kernel's summation order: 1.1e-5 measured on an AVX512 CPU (outputs ~1)
        assert (a - b).abs().max() < 5e-5 * max(1.0, b.abs().max().item())
    back = fast.use_channels_last(False)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(back, x), _outputs(ours, x)))


def test_load_diffusers_layout_with_config_json(pair, tmp_path):
    _, ref, ours, cfg = pair
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, weights)
    (tmp_path / "config.json").write_text(json.dumps(dict(ref.config, _class_name="AutoencoderDC")))
    loaded = load_dcae(weights)
    assert detect_layout(ref.state_dict()) == "diffusers"
    assert loaded.config == cfg and not loaded.training
    for a, b in zip(_outputs(loaded, _images(1)), _outputs(_channels_last(ours), _images(1))):
        assert torch.equal(a, b)


def test_load_original_layout_safetensors_and_pt(pair, tmp_path):
    _, ref, ours, cfg = pair
    original = to_original_layout(ours.state_dict(), cfg)
    assert detect_layout(original) == "original"
    save_file(original, tmp_path / "model.safetensors")
    torch.save({"state_dict": original}, tmp_path / "model.pt")
    expected = _outputs(_channels_last(ours), _images(1))
    for path in (tmp_path / "model.safetensors", tmp_path / "model.pt"):
        loaded = load_dcae(path, cfg)
        assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, _images(1)), expected))
    with torch.no_grad():
        assert (ref.encode(_images(1)).latent - expected[0]).abs().max() < TOL


def test_save_and_load_with_metadata(pair, tmp_path):
    _, _, ours, cfg = pair
    path = save_dcae(ours, cfg, tmp_path / "sub" / "ae.safetensors")
    loaded = load_dcae(path, device="cpu", dtype=torch.float32)
    assert loaded.config == cfg
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, _images(1)), _outputs(_channels_last(ours), _images(1))))
    other = DCAEConfig(**dict(cfg.to_dict(), scaling_factor=2.0))
    with pytest.raises(ValueError, match=r"scaling_factor: given 2.0, stored 0\.\d+"):
        load_dcae(path, other)


def test_checkpoint_errors(pair, tmp_path):
    _, _, ours, cfg = pair
    sd = dict(ours.state_dict())
    with pytest.raises(FileNotFoundError, match="DC-AE checkpoint not found"):
        load_dcae(tmp_path / "nope.safetensors", cfg)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match=r"carries no DC-AE config.*dc-ae-f32c32-in-1.0"):
        load_dcae(tmp_path / "bare.safetensors")
    missing = {k: v for k, v in sd.items() if k != "decoder.conv_in.bias"}
    with pytest.raises(ValueError, match=r"1 missing tensors, e.g. \['decoder.conv_in.bias'\]"):
        load_dcae(missing, cfg)
    bad = dict(sd, **{"encoder.conv_out.weight": torch.zeros(4, 64, 3, 3)})
    shape_msg = r"'encoder.conv_out.weight': expected \(8, 64, 3, 3\), file has \(4, 64, 3, 3\)"
    with pytest.raises(ValueError, match=shape_msg):
        load_dcae(bad, cfg)
    extra = dict(sd, **{"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected tensors, e.g. \['encoder.extra.weight'\]"):
        load_dcae(extra, cfg)
    with pytest.raises(ValueError, match="does not look like a DC-AE checkpoint"):
        load_dcae({"unet.weight": torch.zeros(1)}, cfg)
    # an original-layout file next to an original config.json naming a full-size preset: shapes differ
    save_file(to_original_layout(sd, cfg), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "dc-ae-f32c32-sana-1.0"}))
    with pytest.raises(ValueError, match=r"'encoder.conv_in.weight': expected \(128, 3, 3, 3\), file has"):
        load_dcae(tmp_path / "model.safetensors")


# -- frame helpers --------------------------------------------------------------------------------------
def test_chunked_encode_decode_match_unchunked(pair):
    _, _, ours, cfg = pair
    x = _images(3, seed=5)
    z_all = encode_frames(ours, x, chunk_size=8)
    z_one = encode_frames(ours, x, chunk_size=1)
    with torch.no_grad():
        torch.testing.assert_close(z_all, ours.encode(x) * cfg.scaling_factor, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(z_one, z_all, atol=1e-5, rtol=1e-5)
    chunks = list(iter_decode(ours, z_all, chunk_size=2))
    assert [c.shape[0] for c in chunks] == [2, 1]
    y = decode_latents(ours, z_all, chunk_size=8)
    torch.testing.assert_close(torch.cat(chunks), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(y, ours.decode(z_all / cfg.scaling_factor).clamp(-1, 1), atol=1e-6, rtol=1e-6)
    assert y.min() >= -1 and y.max() <= 1 and y.shape == x.shape


def test_bad_inputs_are_explained(pair):
    _, _, ours, cfg = pair
    with pytest.raises(ValueError, match=r"size 33x64 \(HxW\) is not a multiple of the DC-AE compression factor 32\. "
                                         r"Nearest valid heights: 32 or 64; widths: 64\. .*fit_to_multiple"):
        encode_frames(ours, torch.zeros(1, 3, 33, 64))
    with pytest.raises(ValueError, match=r"3 channels.*\(1, 1, 32, 64\).*Grayscale"):
        encode_frames(ours, torch.zeros(1, 1, 32, 64))
    with pytest.raises(ValueError, match="4 dimensions"):
        encode_frames(ours, torch.zeros(3, 32, 64))
    nan = torch.zeros(2, 3, 32, 64)
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frames contains 1 NaN"):
        encode_frames(ours, nan)
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\], got values in \[0, 255\]"):
        encode_frames(ours, torch.full((1, 3, 32, 64), 255.0).index_fill_(1, torch.tensor([0]), 0.0))
    with pytest.raises(ValueError, match=r"latents must have 8 channels.*\(1, 4, 1, 2\)"):
        iter_decode(ours, torch.zeros(1, 4, 1, 2))
    bad_z = torch.zeros(1, 8, 1, 2)
    bad_z[0, 3, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="latents contains 1 NaN or infinite values. The sampler diverged"):
        decode_latents(ours, bad_z)
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        encode_frames(ours, torch.zeros(1, 3, 32, 64), chunk_size=0)


def test_fit_to_multiple():
    img = torch.arange(3 * 70 * 45, dtype=torch.float32).reshape(3, 70, 45)
    crop = fit_to_multiple(img, 32, "center_crop")
    assert crop.shape == (3, 64, 32) and torch.equal(crop, img[:, 3:67, 6:38])
    pad = fit_to_multiple(img[None], 32, "pad")
    assert pad.shape == (1, 3, 96, 64) and torch.equal(pad[0, :, 13:83, 9:54], img)
    assert fit_to_multiple(img, 32, "resize").shape == (3, 64, 32)
    assert fit_to_multiple(img[:, :10, :10], 32, "resize").shape == (3, 32, 32)
    with pytest.raises(ValueError, match="smaller than 32"):
        fit_to_multiple(img[:, :10], 32, "center_crop")
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_to_multiple(img, 32, "stretch")
