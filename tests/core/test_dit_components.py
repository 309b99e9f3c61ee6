"""The DiT's borrowed components equal their reference implementations (diffusers) on the same
random weights: ReLU linear attention (Sana LiteLA), Mix-FFN (GLUMBConv), 2-D sin-cos positions,
timestep embedding."""
import pytest
import torch

from letstalk_core.families.letstalk.embeddings import TimestepEmbedder, sincos_1d, sincos_2d
from letstalk_core.families.letstalk.modules import GLUMBConv, LiteLinearAttention
from letstalk_core.layers.linear_attention import relu_linear_attention, softmax_attention

diffusers = pytest.importorskip("diffusers")


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module


def test_relu_linear_attention_equals_quadratic_form():
    q, k, v = (torch.randn(2, 3, 50, 32, dtype=torch.float64) for _ in range(3))
    out = relu_linear_attention(q, k, v, eps=0.0)
    a = torch.relu(q) @ torch.relu(k).transpose(-1, -2)  # [B,H,Nq,Nk] un-normalised kernel
    ref = (a @ v) / a.sum(-1, keepdim=True)
    assert (out - ref).abs().max() < 1e-10


def test_liteLA_equals_diffusers_sana_linear_attention():
    from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0

    d, heads = 128, 4
    ref = _randomize(Attention(query_dim=d, heads=heads, dim_head=32, bias=False, out_bias=True,
                               processor=SanaLinearAttnProcessor2_0())).eval()
    ours = LiteLinearAttention(d, 32)
    with torch.no_grad():
        ours.qkv.weight.copy_(torch.cat([ref.to_q.weight, ref.to_k.weight, ref.to_v.weight]))
        ours.proj.weight.copy_(ref.to_out[0].weight)
        ours.proj.bias.copy_(ref.to_out[0].bias)
    x = torch.randn(3, 64, d)
    diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_linear_attention_accumulates_in_fp32_under_autocast():
    q, k, v = (torch.randn(1, 2, 4096, 32) for _ in range(3))
    ref = relu_linear_attention(q.double(), k.double(), v.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    # inputs rounded to bf16 (rel. 4e-3) dominate; a bf16 accumulation over 4096 tokens would be far worse
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, rel


def test_glumbconv_equals_diffusers():
    from diffusers.models.transformers.sana_transformer import GLUMBConv as RefGLUMBConv

    d = 32
    ref = _randomize(RefGLUMBConv(d, d, expand_ratio=4, residual_connection=False))
    ours = GLUMBConv(d, 4 * d)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6 * 5, d)
    out = ours(x, (6, 5))
    expected = ref(x.transpose(1, 2).reshape(2, d, 6, 5)).flatten(2).transpose(1, 2)
    assert (out - expected).abs().max() < 1e-5


def test_sincos_positions_equal_diffusers():
    from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed

    ref2d = get_2d_sincos_pos_embed(64, (6, 6), base_size=6, interpolation_scale=1.0, output_type="pt")
    assert torch.allclose(sincos_2d(64, 6, 6), ref2d.float(), atol=1e-6)
    pos = torch.arange(18)
    ref1d = get_1d_sincos_pos_embed_from_grid(64, pos, output_type="pt")
    assert torch.allclose(sincos_1d(64, pos), ref1d.float(), atol=1e-6)


def test_timestep_embedder_equals_diffusers():
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    ref = _randomize(TimestepEmbedding(256, 96))
    ours = TimestepEmbedder(96)
    with torch.no_grad():
        ours.mlp[0].weight.copy_(ref.linear_1.weight), ours.mlp[0].bias.copy_(ref.linear_1.bias)
        ours.mlp[2].weight.copy_(ref.linear_2.weight), ours.mlp[2].bias.copy_(ref.linear_2.bias)
    t = torch.tensor([0.0, 1.0, 49.0, 999.0])
    assert (ours(t) - ref(proj(t))).abs().max() < 1e-5


def test_softmax_attention_matches_formula():
    q, k, v = (torch.randn(2, 2, 18, 16) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    assert (softmax_attention(q, k, v) - ref).abs().max() < 1e-5
