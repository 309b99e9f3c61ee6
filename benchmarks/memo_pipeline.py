"""MEMO's whole long-video loop at full width: ours (``MemoGenerator`` in the shared loop) against the
authors' pipeline (``memo/pipelines/video_pipeline.py`` driven clip by clip as ``inference.py`` does),
on the same random weights and inputs, on the CPU, side by side in one run.

Both sides build the published structures (``tests/fixtures/memo/configs/*``, diffusers' SD VAE
``AutoencoderKL`` with sd-vae-ft-mse's config) with the same random weights (written once as a MEMO
folder in the published layout, which our loader reads), the same reference image, per-frame wav2vec2
features, face embedding and emotion, and the same noise per clip (our per-clip generators, handed to
the reference's ``generator=``). Each side runs ``--clips`` clips of 16 frames with ``--steps`` Euler
steps and guidance 3.5, in its own process, timed from the first clip to the last decoded frame (model
loading excluded). Printed: seconds per generated frame, the ratio, and the largest difference of the
decoded frames (in [-1, 1]) between the two sides.

    <reference venv>/bin/python benchmarks/memo_pipeline.py --memo <memo checkout> --python-ours .venv/bin/python

(the reference venv and checkout as ``scripts/memo_reference.py`` says). Weights (~11 GB fp32) go to
``outputs/memo_pipeline_bench/``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from two_sides import run_side, side_parser  # beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "fixtures" / "memo" / "configs"
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", sample_size=512, scaling_factor=0.18215)
PAST = 16
FRAMES = 16


def make_folder(args) -> None:
    """The random full-width MEMO folder, the SD VAE and the inputs (reference venv: its classes)."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from memo_reference import import_reference

    ref = import_reference(args.memo)
    work = Path(args.work)
    memo = work / "memo"
    classifier = memo / "misc" / "audio_emotion_classifier"
    if not classifier.is_dir():  # part of the published folder (used for emotion "auto", not timed here)
        classifier.mkdir(parents=True)
        model = ref.emotion_classifier.AudioEmotionClassifierModel()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  classifier / "diffusion_pytorch_model.safetensors")
        (classifier / "config.json").write_text(
            (CONFIGS / "audio_emotion_classifier" / "config.json").read_text())
    if (work / "inputs.safetensors").exists():
        return
    torch.manual_seed(0)
    parts = {
        "reference_net": lambda: ref.unet_2d_condition.UNet2DConditionModel.from_config(
            json.loads((CONFIGS / "reference_net" / "config.json").read_text())),
        "diffusion_net": lambda: ref.unet_3d.UNet3DConditionModel.from_config(
            json.loads((CONFIGS / "diffusion_net" / "config.json").read_text())),
        "image_proj": lambda: ref.image_proj.ImageProjModel(),
        "audio_proj": lambda: ref.audio_proj.AudioProjModel(),
    }
    for i, (name, build) in enumerate(parts.items()):
        (memo / name).mkdir(parents=True, exist_ok=True)
        model = build().eval()
        with torch.no_grad():
            for p in model.parameters():  # zero-initialised layers too, so every path computes
                if not p.any():
                    p.normal_(0, 0.02)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  memo / name / "diffusion_pytorch_model.safetensors")
        cfg = json.loads((CONFIGS / name / "config.json").read_text())
        (memo / name / "config.json").write_text(json.dumps(cfg))
        del model
    vae = AutoencoderKL(**SD_VAE).eval()
    (work / "vae").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, work / "vae" / "diffusion_pytorch_model.safetensors")
    (work / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **SD_VAE}))
    g = torch.Generator().manual_seed(1)
    side = args.size
    n = FRAMES * args.clips
    save_file({"image": (torch.rand(1, 3, side, side, generator=g) * 2 - 1),
               "features": torch.randn(n, 12, 768, generator=g),
               "face": torch.randn(1, 512, generator=g)}, work / "inputs.safetensors")


def run_reference(args) -> dict:
    """``inference.py``'s clip loop over ``VideoPipeline``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    from memo_reference import enable_reference_xformers, import_reference

    ref = import_reference(args.memo)
    from memo.pipelines.video_pipeline import VideoPipeline

    from letstalk_core.loop import clip_seed

    work = Path(args.work)
    memo = work / "memo"
    reference_net = ref.unet_2d_condition.UNet2DConditionModel.from_pretrained(memo, subfolder="reference_net")
    diffusion_net = ref.unet_3d.UNet3DConditionModel.from_pretrained(memo, subfolder="diffusion_net")
    image_proj = ref.image_proj.ImageProjModel.from_pretrained(memo, subfolder="image_proj")
    audio_proj = ref.audio_proj.AudioProjModel.from_pretrained(memo, subfolder="audio_proj")
    vae = AutoencoderKL.from_pretrained(work / getattr(args, "vae_dir", "vae"))
    device = torch.device(getattr(args, "device", "cpu"))
    dtype = getattr(torch, getattr(args, "dtype", "float32"))
    for m in (reference_net, diffusion_net, image_proj, audio_proj, vae):
        m.requires_grad_(False).eval().to(device, dtype)
    enable_reference_xformers(reference_net, diffusion_net)
    pipe = VideoPipeline(vae=vae, reference_net=reference_net, diffusion_net=diffusion_net,
                         scheduler=FlowMatchEulerDiscreteScheduler(), image_proj=image_proj)
    pipe.set_progress_bar_config(disable=True)
    t = load_file(work / getattr(args, "inputs", "inputs.safetensors"))
    feats = t["features"]
    n = feats.shape[0]
    audio_emb = torch.stack([torch.stack([feats[max(min(i + j, n - 1), 0)] for j in range(-2, 3)]) for i in range(n)])
    emotion = torch.full((n,), 3, dtype=torch.int32)
    pixel_values = t["image"].to(device, dtype)
    audio_emb = audio_emb.to(device, dtype)
    face = t["face"].to(device, dtype)
    video_frames = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for k in range(args.clips):
        if not video_frames:
            past = pixel_values.repeat(PAST, 1, 1, 1)
        else:
            past = video_frames[-1][0].permute(1, 0, 2, 3)[-PAST:] * 2.0 - 1.0
        ref_img = torch.cat([pixel_values, past], dim=0).unsqueeze(0)
        audio = audio_proj(audio_emb[k * FRAMES:(k + 1) * FRAMES].unsqueeze(0))
        out = pipe(ref_image=ref_img, audio_tensor=audio, audio_emotion=emotion[k * FRAMES:(k + 1) * FRAMES],
                   emotion_class_num=9, face_emb=face, width=args.size, height=args.size, video_length=FRAMES,
                   num_inference_steps=args.steps, guidance_scale=3.5,
                   generator=torch.Generator().manual_seed(clip_seed(args.seed, k)), is_new_audio=k == 0)
        video_frames.append(out.videos)
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    frames = torch.cat(video_frames, dim=2)[0].permute(1, 0, 2, 3).float().cpu() * 2 - 1  # [n, 3, H, W] in [-1, 1]
    save_file({"frames": frames.contiguous()}, work / "frames_reference.safetensors")
    out = {"seconds": took, "frames": int(frames.shape[0])}
    if device.type == "cuda":
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def run_ours(args) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from letstalk_core.autoencoder.sd_vae import load_sd_vae
    from letstalk_core.families.memo.conditions import reference_features
    from letstalk_core.families.memo.generator import MemoConfig, MemoGenerator, MemoPrepared, MemoVideo
    from letstalk_core.families.memo.loading import load_memo
    from letstalk_core.loop import GenerationSettings, plan_clips

    work = Path(args.work)
    models = load_memo(work / "memo")
    vae = load_sd_vae(work / "vae")
    cfg = MemoConfig(video=MemoVideo(width=args.size, height=args.size))
    gen = MemoGenerator(models, vae, None, config=cfg)
    t = load_file(work / "inputs.safetensors")
    n = t["features"].shape[0]
    settings = GenerationSettings(sampler="euler", steps=args.steps, seed=args.seed, overlap=0, decode_chunk=4)
    t0 = time.perf_counter()
    with torch.no_grad():  # MemoGenerator.prepare without the speech encoder and face analysis: the same inputs
        latent = vae.encode(t["image"], chunk_size=1).float()
        face = models.image_proj(t["face"])
        uncond = models.image_proj(torch.zeros_like(t["face"]))
        ref = reference_features(models.reference_net, latent, face, uncond)
    prepared = MemoPrepared(latent, face, uncond, ref, t["features"], torch.full((n,), 3, dtype=torch.long), n,
                            plan_clips(n, FRAMES), n / 30, "bench")
    frames = []
    for clip, latents, _ in gen.iter_clips(prepared, settings):
        frames += list(gen.decode_clip(latents, clip, settings.decode_chunk))
    took = time.perf_counter() - t0
    frames = torch.cat(frames)
    save_file({"frames": frames.contiguous()}, work / "frames_ours.safetensors")
    return {"seconds": took, "frames": int(frames.shape[0]), "state_gib": 0.0}


def main() -> None:
    ap = side_parser(__doc__.split("\n")[0], ROOT / "outputs" / "memo_pipeline_bench", 128,
                     "frame side in pixels (MEMO's is 512)")
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="Euler steps per clip (MEMO's recipe: 20)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.side != "both":
        print(json.dumps((run_reference if args.side == "reference" else run_ours)(args)))
        return
    if not args.memo:
        ap.error("--memo is required")
    make_folder(args)
    results = {}
    for side in ("reference", "ours"):
        cached = Path(args.work) / f"result_{side}_{args.size}_{args.clips}_{args.steps}.json"
        if cached.exists():  # a side already measured with these settings (delete the file to measure again)
            results[side] = json.loads(cached.read_text())
            continue
        results[side] = run_side(__file__, side, args, ["--clips", str(args.clips), "--steps", str(args.steps),
                                                        "--seed", str(args.seed)])
        cached.write_text(json.dumps(results[side]))
    import torch
    from safetensors.torch import load_file

    a = load_file(Path(args.work) / "frames_reference.safetensors")["frames"]
    b = load_file(Path(args.work) / "frames_ours.safetensors")["frames"]
    r, o = results["reference"], results["ours"]
    print(f"MEMO long-video loop, full width, {args.size}² ({args.size // 8}² latents), {args.clips} clips of 16 frames, "
          f"{args.steps} Euler steps, CFG 3.5 (batch 2), fp32, CPU threads {torch.get_num_threads()}")
    print(f"{'':24}{'reference':>12}{'ours':>12}{'ratio':>10}")
    rs, os_ = r["seconds"] / r["frames"], o["seconds"] / o["frames"]
    print(f"{'seconds per frame':24}{rs:12.2f}{os_:12.2f}{rs / os_:9.2f}×")
    print(f"{'total seconds':24}{r['seconds']:12.1f}{o['seconds']:12.1f}")
    print(f"frames {a.shape[0]} / {b.shape[0]}; max |Δ| of the decoded frames: {(a - b).abs().max().item():.2e} "
          f"(mean {(a - b).abs().mean().item():.2e})")


if __name__ == "__main__":
    main()
