"""MEMO's full-size structure and the Reference Net against diffusers.

* ``tests/fixtures/memo/manifest.json`` lists every tensor name and shape of the published parts, taken
  from the authors' classes at the published configs (``scripts/make_memo_manifest.py``); ours, built
  from the same ``config.json`` files on the meta device, must match it name for name, shape for shape.
* The Reference Net is an SD1.5 UNet: on the same random weights its features must equal the
  corresponding activations of ``diffusers.UNet2DConditionModel`` (test dependency only).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from letstalk_core.families.memo.loading import PARTS, WEIGHTS, open_memo_folder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "memo"
PUBLISHED_PARAMETERS = {"reference_net": 0.86e9, "diffusion_net": 1.68e9}


@pytest.fixture(scope="module")
def full_size_folder(tmp_path_factory):
    """The published configs with empty-but-valid safetensors headers of the manifest's shapes."""
    import struct
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("memo_full")
    for name, (sub, _) in PARTS.items():
        d = root / sub
        d.mkdir(parents=True)
        (d / "config.json").write_text((FIXTURES / "configs" / name / "config.json").read_text())
        # a header-only safetensors file: zero-byte tensors cannot hold 10 GB, so write a header whose
        # data section is sparse (the loader only reads headers when it checks a folder)
        header, offset = {}, 0
        for key, shape in manifest["parts"][name]["tensors"].items():
            n = 1
            for s in shape:
                n *= s
            header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
            offset += 2 * n
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(d / WEIGHTS, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            f.truncate(8 + len(blob) + offset)  # sparse: no disk used
    return root, manifest


def test_full_size_structure_matches_reference_manifest(full_size_folder):
    root, manifest = full_size_folder
    folder = open_memo_folder(root)  # parses the published configs and checks every header against ours
    total = 0
    for name in PARTS:
        with torch.device("meta"):
            ours = folder.parts[name].build()
        shapes = {k: list(v.shape) for k, v in ours.state_dict().items()}
        want = manifest["parts"][name]["tensors"]
        assert shapes == want, f"{name}: {set(shapes) ^ set(want)}"
        params = sum(p.numel() for p in ours.parameters())
        assert params == manifest["parts"][name]["parameters"]
        total += len(shapes)
        if name in PUBLISHED_PARAMETERS:
            print(f"{name}: {params / 1e9:.3f} B parameters (published ≈ {PUBLISHED_PARAMETERS[name] / 1e9:.2f} B)")
            assert abs(params - PUBLISHED_PARAMETERS[name]) / PUBLISHED_PARAMETERS[name] < 0.01
    assert total == sum(len(p["tensors"]) for p in manifest["parts"].values()) == 2798


def test_published_diffusion_config(full_size_folder):
    root, _ = full_size_folder
    c = open_memo_folder(root).diffusion_config
    assert c.block_out_channels == (320, 640, 1280, 1280) and c.cross_attention_dim == c.audio_attention_dim == 768
    assert c.motion.num_attention_heads == 8 and c.motion.temporal_position_encoding_max_len == 32
    assert c.emo_drop_rate == 0.05 and c.in_channels == 4


@torch.no_grad()
def test_reference_net_equals_diffusers_unet(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from letstalk_core.families.memo.config import parse_unet_config
    from letstalk_core.families.memo.reference_net import ReferenceNet

    torch.manual_seed(0)
    kw = dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=2, norm_num_groups=8,
              cross_attention_dim=8, in_channels=4, out_channels=4, sample_size=16,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    ref = diffusers.UNet2DConditionModel(**kw).eval()
    for p in ref.parameters():  # nothing left at its zero/one initialisation
        p.add_(0.05 * torch.randn_like(p))
    ours = ReferenceNet(parse_unet_config(dict(kw), "reference"))
    state = {k: v for k, v in ref.state_dict().items() if k in ours.state_dict()}
    ours.load_state_dict(state, strict=True)
    captured = {}

    def hook(key):
        def f(_m, _i, out):
            captured[key] = out
        return f

    for i, block in enumerate(ref.down_blocks):
        for j, resnet in enumerate(block.resnets):
            if hasattr(block, "attentions"):
                block.attentions[j].transformer_blocks[0].norm1.register_forward_hook(hook(f"down.{i}.{j}"))
            else:
                resnet.register_forward_hook(hook(f"down.{i}.{j}"))
    ref.mid_block.attentions[0].transformer_blocks[0].norm1.register_forward_hook(hook("mid.0.0"))
    for i, block in enumerate(ref.up_blocks):
        for j, resnet in enumerate(block.resnets):
            if hasattr(block, "attentions"):
                block.attentions[j].transformer_blocks[0].norm1.register_forward_hook(hook(f"up.{i}.{j}"))
            else:
                resnet.register_forward_hook(hook(f"up.{i}.{j}"))
    latents, context = torch.randn(6, 4, 16, 16), torch.randn(6, 3, 8)
    ref(latents, 0, encoder_hidden_states=context)
    feats = ours(latents, context, 0)
    assert sorted(feats) == sorted(captured)
    err = max((feats[k] - captured[k]).abs().max().item() for k in feats)
    assert err < 1e-4, err


def test_reference_keys_projected_once_equal_the_reference_concatenation():
    """``ReferenceAttentionBlock`` projects the reference tokens' keys/values once per reference row; it must
    equal the reference's formulation, self-attention over ``[own; repeat(reference)]`` for every frame,
    with and without guidance rows (which see their own tokens only)."""
    import torch

    from letstalk_core.families.memo.spatial import ReferenceAttentionBlock, tile_context

    torch.manual_seed(0)
    block = ReferenceAttentionBlock(32, 4, 16).eval()
    x, reference, context = torch.randn(6, 10, 32), torch.randn(2, 7, 32), torch.randn(6, 3, 16)

    def expected(uncond):
        normed = block.norm1(x)
        full = block.attn1(normed, torch.cat([normed, tile_context(reference, 6)], dim=1))
        if uncond is not None:
            full = torch.where(uncond[:, None, None], block.attn1(normed), full)
        h = x + full
        h = h + block.attn2(block.norm2(h), context)
        return h + block.ff(block.norm3(h))

    with torch.no_grad():
        for uncond in (None, torch.tensor([True] * 3 + [False] * 3)):
            assert (block(x, reference, context, uncond) - expected(uncond)).abs().max() < 1e-5
