"""Regenerate the MEMO golden fixtures (``tests/fixtures/memo/golden/``) from the authors' code.

The fixtures hold a tiny MEMO model with random weights **in the published folder layout** (each part a
``config.json`` + ``diffusion_pytorch_model.safetensors`` written by the reference classes' own
``save_pretrained``; the weights are stored in fp16, and the reference runs on exactly those values), the
inputs, and what the reference code computes from them:

* the Reference Net's features for ``2 × (1 + P)`` latents (reference image + P past frames, the two
  guidance branches with the face tokens spread over them the way ``video_pipeline.py`` does);
* two consecutive clips of two denoising steps each, exactly as ``VideoPipeline.__call__`` runs them:
  clip 0 with ``is_new_audio=True`` (memory reset and filled from the past frames at every step),
  clip 1 with ``is_new_audio=False`` and ``update_past_memory = step == 0``; for every step the raw
  Diffusion Net output (both branches), the guided velocity (CFG 3.5) and the latents after the
  ``FlowMatchEulerDiscreteScheduler`` step;
* the same first step with ``use_inflated_groupnorm`` flipped (both GroupNorm variants are covered);
* ImageProj, AudioProj and the emotion classifier on random inputs, and the scheduler's 20-step grid.

How (the reference needs diffusers 0.31; see ``scripts/memo_reference.py`` for the venv)::

    git clone https://github.com/memoavatar/memo <memo checkout>     # tested at a5aee30
    <reference venv>/bin/python scripts/make_memo_fixtures.py --memo <memo checkout>

Deterministic for a given torch build (seed 0). ``tests/core/test_memo_golden.py`` holds ours to it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memo_reference import enable_reference_xformers, import_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "memo" / "golden"

CHANNELS = [32, 64, 64]  # multiples of 32: the temporal module's GroupNorm has 32 groups, hard-coded
HEADS = 2
CONTEXT = 8  # face-token and audio-token width (768 in the published model)
FACE_EMB = 32  # ArcFace embedding width (512)
LATENT = 16  # latent side (64 at 512²)
FRAMES = 4  # frames per clip (16)
PAST = 4  # past frames (16)
STEPS = 2  # denoising steps per clip (20)
CFG = 3.5
EMOTION_LAYERS, EMOTION_WIDTH = 5, 16  # classifier depth (5, as published) and width (2048)
AUDIO = dict(seq_len=5, blocks=3, channels=8, intermediate_dim=16, output_dim=CONTEXT, context_tokens=4)


def unet_configs(inflated: bool = True) -> tuple[dict, dict]:
    n = len(CHANNELS)
    common = dict(block_out_channels=CHANNELS, layers_per_block=1, attention_head_dim=HEADS, norm_num_groups=8,
                  cross_attention_dim=CONTEXT, in_channels=4, sample_size=LATENT)
    ref = dict(common, down_block_types=["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1))
    diff = dict(common, out_channels=4, audio_attention_dim=CONTEXT, emo_drop_rate=0.05,
                use_inflated_groupnorm=inflated, motion_module_resolutions=[1, 2, 4, 8],
                down_block_types=["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"],
                up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (n - 1),
                motion_module_kwargs=dict(num_attention_heads=HEADS, num_transformer_block=1,
                                          attention_block_types=["Temporal_Self", "Temporal_Self"],
                                          temporal_position_encoding=True, temporal_position_encoding_max_len=32,
                                          temporal_attention_dim_div=1))
    return ref, diff


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere (the reference zero-initialises some layers), rounded to fp16."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and ("norm" in name and name.endswith("weight")):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        p.copy_(p.half().float())


def save_part(model, name: str) -> None:
    """``save_pretrained`` (the published layout), then the weights rewritten in fp16."""
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    f = d / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    save_file({k: v.half() if v.is_floating_point() and not k.endswith(".pe") else v.contiguous()
               for k, v in state.items()}, f, metadata={"format": "pt"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memo", required=True, help="checkout of github.com/memoavatar/memo")
    args = ap.parse_args()
    ref = import_reference(args.memo)
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    ref_cfg, diff_cfg = unet_configs()
    reference_net = ref.unet_2d_condition.UNet2DConditionModel(**ref_cfg)
    diffusion_net = ref.unet_3d.UNet3DConditionModel(**diff_cfg)
    for net in (reference_net, diffusion_net):  # read by their forward, absent from their __init__
        if "center_input_sample" not in net.config:
            net.register_to_config(center_input_sample=False)
    image_proj = ref.image_proj.ImageProjModel(cross_attention_dim=CONTEXT, clip_embeddings_dim=FACE_EMB,
                                               clip_extra_context_tokens=4)
    audio_proj = ref.audio_proj.AudioProjModel(**AUDIO)
    classifier = ref.emotion_classifier.AudioEmotionClassifierModel(EMOTION_LAYERS, EMOTION_WIDTH)
    for m in (reference_net, diffusion_net, image_proj, audio_proj, classifier):
        randomise(m, gen)
        m.eval()
    enable_reference_xformers(reference_net, diffusion_net)  # as inference.py does
    # AudioProjModel saves no constructor arguments (the published config.json is empty: its defaults
    # are the published widths); the tiny one's widths are written into its config.json.
    for m, name in ((reference_net, "reference_net"), (diffusion_net, "diffusion_net"), (image_proj, "image_proj"),
                    (audio_proj, "audio_proj"), (classifier, "misc/audio_emotion_classifier")):
        save_part(m, name)
    cfg_path = OUT / "audio_proj" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **AUDIO}, indent=2, sort_keys=True) + "\n")

    t: dict[str, torch.Tensor] = {}
    # conditions, as VideoPipeline.__call__ builds them
    face_emb = torch.randn(1, FACE_EMB, generator=gen)
    face = image_proj(face_emb)
    face_uncond = image_proj(torch.zeros_like(face_emb))
    context = torch.cat([face_uncond, face])  # [2, 4, CONTEXT]: uncond first
    t["image_proj.in"], t["image_proj.out"], t["image_proj.out_uncond"] = face_emb, face, face_uncond
    audio_in = torch.randn(1, 2 * FRAMES, AUDIO["seq_len"], AUDIO["blocks"], AUDIO["channels"], generator=gen)
    audio_tokens = audio_proj(audio_in)  # [1, 2F, tokens, CONTEXT]
    t["audio_proj.in"], t["audio_proj.out"] = audio_in, audio_tokens
    emo_in = torch.randn(3, 1024, generator=gen)
    t["emotion.in"], t["emotion.out"] = emo_in, classifier(emo_in)

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(20)
    t["scheduler.timesteps20"], t["scheduler.sigmas20"] = scheduler.timesteps.clone(), scheduler.sigmas.clone()

    noise = torch.randn(1, 4, 2 * FRAMES, LATENT, LATENT, generator=gen)
    t["noise"] = noise
    emotions = torch.tensor([3, 6])  # the per-clip label (mode over the clip's frames), per clip
    for clip in range(2):
        # [reference image; P past frames] latents: clip 0 has P copies of the reference, clip 1 new frames
        if clip == 0:
            ref_latent = torch.randn(1, 4, LATENT, LATENT, generator=gen)
            latents_in = torch.cat([ref_latent] * (1 + PAST))
        else:
            latents_in = torch.cat([ref_latent, torch.randn(PAST, 4, LATENT, LATENT, generator=gen)])
        t[f"clip{clip}.ref_latents"] = latents_in
        scheduler.set_timesteps(STEPS)
        latents = noise[:, :, clip * FRAMES:(clip + 1) * FRAMES].clone()
        audio = audio_tokens[:, clip * FRAMES:(clip + 1) * FRAMES]
        audio = torch.cat([torch.zeros_like(audio), audio])
        emotion = torch.tensor([9, int(emotions[clip])])
        for i, ts in enumerate(scheduler.timesteps):
            if i == 0:
                features = reference_net(latents_in.repeat(2, 1, 1, 1), torch.zeros_like(ts),
                                         encoder_hidden_states=context, return_dict=False)
                if clip == 0:
                    for part in ("down", "mid", "up"):
                        for bi, blk in enumerate(features[part]):
                            for li, f in enumerate(blk):
                                t[f"refnet.{part}.{bi}.{li}"] = f[0] if isinstance(f, list) else f
            model_in = torch.cat([latents] * 2)
            uc_mask = torch.tensor([1] * 16 + [0] * 16).bool()  # as the pipeline builds it
            pred = diffusion_net(model_in, features, ts, encoder_hidden_states=context, audio_embedding=audio,
                                 audio_emotion=emotion, uc_mask=uc_mask, is_new_audio=clip == 0,
                                 update_past_memory=i == 0).sample
            u, c = pred.chunk(2)
            guided = u + CFG * (c - u)
            latents = scheduler.step(guided, ts, latents, return_dict=False)[0]
            t[f"clip{clip}.step{i}.timestep"] = ts.reshape(1).float()
            t[f"clip{clip}.step{i}.pred"] = pred
            t[f"clip{clip}.step{i}.latents"] = latents
    # the other GroupNorm variant, first step of clip 0
    _, diff_cfg2 = unet_configs(inflated=False)
    other = ref.unet_3d.UNet3DConditionModel(**diff_cfg2)
    other.register_to_config(center_input_sample=False)
    other.load_state_dict(diffusion_net.state_dict())
    other.eval()
    enable_reference_xformers(other)
    scheduler.set_timesteps(STEPS)
    ts = scheduler.timesteps[0]
    feats = reference_net(t["clip0.ref_latents"].repeat(2, 1, 1, 1), torch.zeros_like(ts),
                          encoder_hidden_states=context, return_dict=False)
    audio = audio_tokens[:, :FRAMES]
    t["clip0.step0.pred_not_inflated"] = other(
        torch.cat([noise[:, :, :FRAMES]] * 2), feats, ts, encoder_hidden_states=context,
        audio_embedding=torch.cat([torch.zeros_like(audio), audio]), audio_emotion=torch.tensor([9, 3]),
        uc_mask=torch.tensor([1] * 16 + [0] * 16).bool(), is_new_audio=True, update_past_memory=True).sample
    t["emotions"] = emotions
    save_file({k: v.detach().contiguous() for k, v in t.items()}, OUT / "io.safetensors",
              metadata={"cfg": str(CFG), "frames": str(FRAMES), "past": str(PAST), "steps": str(STEPS),
                        "audio_proj": json.dumps(AUDIO), "memo_commit": "a5aee30"})
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
