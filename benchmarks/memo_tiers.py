"""MEMO per memory tier on a GPU: seconds per frame and peak memory at MEMO's recipe, ours against the
authors' pipeline, on the same random full-width weights. One command:

    python benchmarks/memo_tiers.py                      # ours, every tier: 512², bf16, 2 clips, 20 steps
    python benchmarks/memo_tiers.py --memo <memo checkout> --python-ref <its venv>/bin/python   # + the authors'

For each tier (``letstalk_core.families.memo.memory_plan.TIERS``) our loop runs in a fresh process (its own CUDA
context and peak), on the random MEMO installation of ``scripts/make_memo_random.py`` (written under
``--work`` if absent; the weight files in fp32, as published), with the same inputs (portrait, wav2vec2
features, face embedding, emotion, per-clip noise). Measured: seconds per generated frame from the first
clip to the last decoded frame (loading excluded), ``torch.cuda.max_memory_allocated`` (on a CPU: the
process's peak ``RssAnon`` growth over the run), and the memory plan's prediction for the same run. With
``--memo``, the authors' ``VideoPipeline`` driven clip by clip as their ``inference.py`` does
(``benchmarks/memo_pipeline.py``'s reference side) on the same weights and inputs, all on the device in
``--dtype``: its time and peak, and the largest difference of the decoded frames from ours.

Prints a Markdown table (the README's "MEMO on a GPU" table). On a CPU it runs too (``--size 64
--steps 1`` in the test suite), to keep the script working where no GPU is.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 16
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _anon_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def make_inputs(work: Path, size: int, clips: int) -> None:
    """The portrait, per-frame wav2vec2 features (the folder's audio projector's layers × channels) and
    the face embedding, the same for every run."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from letstalk_core.families.memo.loading import open_memo_folder

    path = work / f"inputs_{size}_{clips}.safetensors"
    if path.exists():
        return
    folder = open_memo_folder(work / "memo")
    audio = folder.parts["audio_proj"].config
    emb = folder.parts["image_proj"].config["embedding_dim"]
    g = torch.Generator().manual_seed(1)
    save_file({"image": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
               "features": torch.randn(FRAMES * clips, audio.layers, audio.channels, generator=g),
               "face": torch.randn(1, emb, generator=g)}, str(path))


def run_ours(a) -> dict:
    """One tier of our loop (in its own process)."""
    import threading

    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from letstalk_core.autoencoder.sd_vae import load_sd_vae
    from letstalk_core.families.memo.conditions import reference_features
    from letstalk_core.families.memo.generator import MemoConfig, MemoGenerator, MemoPrepared, MemoVideo
    from letstalk_core.families.memo.loading import load_memo
    from letstalk_core.families.memo.memory_plan import TIERS, plan_memo
    from letstalk_core.loop import GenerationSettings, plan_clips

    work, device = Path(a.work), torch.device(a.device)
    dtype = getattr(torch, DTYPES[a.dtype])
    options = TIERS[a.tier]
    plan = plan_memo(load_memo(work / "memo").folder, size=a.size, dtype=dtype, device=device.type, options=options,
                     decode_chunk=4)
    models = load_memo(work / "memo", device=device, dtype=dtype)
    vae = load_sd_vae(work / "sd-vae", device=device, dtype=dtype)
    gen = MemoGenerator(models, vae, None, config=MemoConfig(video=MemoVideo(width=a.size, height=a.size)),
                        device=device, dtype=dtype, options=options)
    t = load_file(str(work / f"inputs_{a.size}_{a.clips}.safetensors"))
    n = t["features"].shape[0]
    settings = GenerationSettings(sampler="euler", steps=a.steps, seed=0, overlap=0, decode_chunk=4)
    for part in ("reference_net", "diffusion_net", "image_proj", "audio_proj"):
        getattr(models, part)  # loaded now: loading is not timed
    peak = {"anon": _anon_kib()}
    start_anon = peak["anon"]
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _anon_kib())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        latent = vae.encode(t["image"].to(device), chunk_size=1).float()
        face = models.image_proj(t["face"].to(device, dtype))
        uncond = models.image_proj(torch.zeros_like(t["face"]).to(device, dtype))
        ref = reference_features(models.reference_net, latent.to(dtype), face, uncond)
        prepared = MemoPrepared(latent, face, uncond, ref, t["features"], torch.full((n,), 3, dtype=torch.long), n,
                                plan_clips(n, FRAMES), n / 30, "bench")
        frames = []
        for clip, latents, _ in gen.iter_clips(prepared, settings):
            frames += [f.cpu() for f in gen.decode_clip(latents, clip, settings.decode_chunk)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    stop.set()
    sampler.join()
    frames = torch.cat(frames)
    save_file({"frames": frames.float().contiguous()}, str(work / f"frames_ours_{a.tier}_{a.size}.safetensors"))
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated(device)
        what = "max_memory_allocated"
    else:
        measured, base = (peak["anon"] - start_anon) * 1024, 0
        what = "RssAnon growth"
    weights_on_device = sum(v for k, v in plan.resident.items() if "weights" in k)
    return {"seconds": took, "frames": int(frames.shape[0]), "peak_bytes": int(measured), "measured": what,
            "weights_loaded_bytes": int(base), "plan_peak_bytes": int(plan.peak),
            "plan_without_overhead": int(plan.peak - plan.overhead), "plan_weights": int(weights_on_device)}


def run_reference(a) -> dict:
    """The authors' pipeline on the same weights and inputs, on the device (in the reference's venv)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memo_pipeline

    ns = argparse.Namespace(memo=a.memo, work=a.work, size=a.size, clips=a.clips, steps=a.steps, seed=0,
                            device=a.device, dtype=DTYPES[a.dtype], vae_dir="sd-vae",
                            inputs=f"inputs_{a.size}_{a.clips}.safetensors")
    return memo_pipeline.run_reference(ns)


def _side(a, side: str, tier: str = "") -> dict:
    python = a.python_ref if side == "reference" else sys.executable
    cmd = [python, __file__, "--side", side, "--work", a.work, "--size", str(a.size), "--clips", str(a.clips),
           "--steps", str(a.steps), "--dtype", a.dtype, "--device", a.device]
    if tier:
        cmd += ["--tier", tier]
    if a.memo:
        cmd += ["--memo", a.memo]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "outputs" / "memo_tiers"))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--tiers", default="24gb,16gb,12gb")
    p.add_argument("--memo", help="checkout of github.com/memoavatar/memo: also run the authors' pipeline")
    p.add_argument("--python-ref", default=sys.executable, help="the interpreter of the reference's venv")
    p.add_argument("--no-build", action="store_true",
                   help="use the MEMO installation already in --work (memo/, sd-vae/) as it is")
    p.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--tier", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.side:
        print(json.dumps(run_ours(a) if a.side == "ours" else run_reference(a)))
        return 0
    work = Path(a.work)
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    import torch
    from make_memo_random import build_installation
    if not a.no_build:
        build_installation(work, dtype=torch.float32, size=a.size, seconds=1.0)
    make_inputs(work, a.size, a.clips)
    rows = {t: _side(a, "ours", t) for t in a.tiers.split(",")}
    if a.memo:
        rows["authors' pipeline"] = _side(a, "reference")
    gib = 2 ** 30
    print(f"MEMO, full width (random weights, fp32 files), {a.size}², {a.clips} clips of {FRAMES} frames, {a.steps} "
          f"Euler steps, CFG 3.5, {a.dtype}, {a.device}")
    print("| run | s/frame | peak GiB (measured) | plan GiB (tensors) | plan GiB (+CUDA context, slack) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | | | |")
            continue
        plan = (f"{r['plan_without_overhead'] / gib:.2f} | {r['plan_peak_bytes'] / gib:.2f}" if "plan_peak_bytes" in r
                else " | ")
        print(f"| {name} | {r['seconds'] / r['frames']:.3f} | {r['peak_bytes'] / gib:.2f} | {plan} |")
    if a.memo and "error" not in rows["authors' pipeline"]:
        from safetensors.torch import load_file
        ref = load_file(str(work / "frames_reference.safetensors"))["frames"]
        for t in a.tiers.split(","):
            f = work / f"frames_ours_{t}_{a.size}.safetensors"
            if f.exists():
                print(f"max |Δ| decoded frames, {t} vs the authors': "
                      f"{(load_file(str(f))['frames'] - ref).abs().max().item():.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
