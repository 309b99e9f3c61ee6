"""How close each big piece runs to this machine's limit (issue 14, item 1: the measurement).

    python benchmarks/limits.py [--quick] [--size 512] [--memo-size 128] [--repeats 2] [--json out.json]

1. **Peak.** The machine's own matmul (a 4096² GEMM) and convolution (3×3, 256 → 256 channels,
   channels-last) throughput in fp32 and bf16, best of ``--repeats`` (CUDA instead where present).
2. **Pieces.** Each big piece's FLOPs, counted with ``torch.utils.flop_counter.FlopCounterMode``
   (matmuls, convolutions, attention; element-wise work is not counted), its time (best of
   ``--repeats`` after a warm-up) in fp32 and bf16, and the achieved FLOP/s as a share of that dtype's
   peak: LetsTalk-B's guided DiT step per clip (3 branches: full, no audio, no portrait; 16 frames with the
   memory) and the DC-AE f32c32 encode and decode per frame at ``--size``; MEMO's Diffusion Net step per
   clip (batch 2, 16 frames, 16 past frames in its memory), its Reference Net per clip (2 × 16 past frames)
   and the SD VAE encode and decode per frame at ``--memo-size`` (full width; 512² costs minutes per step
   here). Random weights throughout.
3. **End to end.** Seconds per generated frame from the pieces, in the faster dtype of each piece:
   LetsTalk-B with 25 guided steps per 16-frame clip plus the decode; MEMO with 20 steps, its Reference Net
   and 16 VAE encodes per clip (the memory) plus the decode; and the lower bound the bf16 peak implies (the
   same FLOPs at 100 % of the peak).

``--layouts`` adds the DC-AE in the NCHW layout (what ran before ``DCAE.use_channels_last``) and
``--compile`` the DiT step under ``torch.compile``, each beside the default in the same run, for the
before/after ratios. ``--quick``: small sizes and one repeat, to check the script.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_time(fn, repeats: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.no_grad():
        fn()  # warm-up
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _gemm_rate(n: int, dtype, device, repeats: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats)


def peaks(device, repeats: int, quick: bool) -> dict[str, float]:
    """The best of a large GEMM's and a large convolution's FLOP/s, per dtype. A dtype whose small probe
    (512² GEMM) runs at under a tenth of fp32's is not measured at full size (bf16 without hardware
    support: a 4096² GEMM would take minutes); its probe rate is its peak."""
    out = {}
    n = 1024 if quick else 4096
    probe = {name: _gemm_rate(512, dtype, device, 1) for name, dtype in DTYPES.items()}
    for name, dtype in DTYPES.items():
        if probe[name] < probe["fp32"] / 10:
            out[name] = probe[name]
            print(f"peak {name}: a 512² GEMM runs at {probe[name] / 1e9:.1f} GFLOP/s (fp32: "
                  f"{probe['fp32'] / 1e9:.1f}): no hardware support, not measured further", flush=True)
            continue
        mm = _gemm_rate(n, dtype, device, repeats)
        conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype).to(memory_format=torch.channels_last)
        x = torch.randn(2 if quick else 8, 256, 64, 64, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        cv = count_flops(lambda: conv(x)) / best_time(lambda: conv(x), repeats)
        out[name] = max(mm, cv)
        print(f"peak {name}: matmul {mm / 1e9:8.1f} GFLOP/s, conv {cv / 1e9:8.1f} GFLOP/s", flush=True)
    return out


# --- the pieces: each a builder (dtype) -> callable ------------------------------------------------------
STEP, ENCODE, DECODE = ("LetsTalk-B DiT step / clip (3 branches)", "DC-AE f32c32 encode / frame",
                        "DC-AE f32c32 decode / frame")
MEMO_STEP, MEMO_REF, VAE_ENC, VAE_DEC = ("MEMO Diffusion Net step / clip (batch 2)", "MEMO Reference Net / clip (2×16 frames)",
                                        "SD VAE encode / frame", "SD VAE decode / frame")


def letstalk_pieces(size: int, device, *, layouts: bool = False, compiled: bool = False) -> dict:
    from letstalk_core.autoencoder.config import get_dcae_config
    from letstalk_core.autoencoder.dc_ae import DCAE
    from letstalk_core.diffusion.guidance import GuidanceScales
    from letstalk_core.families.letstalk.config import get_preset
    from letstalk_core.families.letstalk.guidance import guided_model_fn
    from letstalk_core.families.letstalk.transformer import LetsTalkTransformer

    cfg = get_preset("letstalk-b")
    torch.manual_seed(0)
    dit32 = LetsTalkTransformer(cfg).to(device).eval().requires_grad_(False)
    dcae32 = DCAE(get_dcae_config("dc-ae-f32c32-sana-1.1")).to(device).eval().requires_grad_(False)
    dcae32.use_channels_last()  # the layout load_dcae returns
    side, f, c = size // 32, cfg.video.clip_frames, cfg.dit.in_channels
    ap = cfg.dit
    x = torch.randn(1, c, f, side, side, device=device)
    portrait = torch.randn(1, c, side, side, device=device)
    memory = torch.randn(1, c, cfg.memory.frames, side, side, device=device)
    windows = torch.randn(1, f, 2 * cfg.audio_window + 1, cfg.speech_encoder.layers, cfg.speech_encoder.channels,
                          device=device)
    t = torch.full((1,), 500.0, device=device)
    frame = torch.rand(1, 3, size, size, device=device) * 2 - 1
    z = torch.randn(1, dcae32.config.latent_channels, side, side, device=device)
    del ap

    def step(dtype):
        dit = dit32.to(dtype)
        tokens = dit.project_audio(windows.to(dtype))
        fn = guided_model_fn(dit, portrait=portrait, audio_tokens=tokens, memory=memory,
                             scales=GuidanceScales(portrait=2.0, audio=2.0), eps_channels=c)
        return lambda: fn(x, t)

    def compiled_step(dtype):
        from letstalk_core.runtime import compile_forward

        compile_forward(dit32)
        fn = step(dtype)
        fn()  # compiles (minutes), outside the timing
        return fn

    def encode(dtype, channels_last=True):
        dcae = dcae32.to(dtype).use_channels_last(channels_last)
        return lambda: dcae.encode(frame.to(dtype))

    def decode(dtype, channels_last=True):
        dcae = dcae32.to(dtype).use_channels_last(channels_last)
        return lambda: dcae.decode(z.to(dtype))

    pieces = {STEP: step, ENCODE: encode, DECODE: decode}
    if layouts:
        pieces[ENCODE + ", NCHW (before)"] = lambda dtype: encode(dtype, False)
        pieces[DECODE + ", NCHW (before)"] = lambda dtype: decode(dtype, False)
    if compiled:
        pieces[STEP + ", torch.compile"] = compiled_step
    return pieces


def memo_pieces(size: int, device) -> dict:
    from letstalk_core.autoencoder.sd_vae import SDVAE, SDVAEConfig
    from letstalk_core.families.memo.config import parse_unet_config
    from letstalk_core.families.memo.diffusion_net import DiffusionNet, split_reference_features
    from letstalk_core.families.memo.reference_net import ReferenceNet
    from letstalk_core.memory.linear_state import LinearAttentionMemory

    configs = ROOT / "tests" / "fixtures" / "memo" / "configs"
    read = lambda part, kind: parse_unet_config(json.loads((configs / part / "config.json").read_text()), kind,  # noqa: E731
                                                str(configs / part / "config.json"))
    torch.manual_seed(0)
    ref32 = ReferenceNet(read("reference_net", "reference")).to(device).eval().requires_grad_(False)
    dn32 = DiffusionNet(read("diffusion_net", "diffusion")).to(device).eval().requires_grad_(False)
    vae32 = SDVAE(SDVAEConfig()).to(device).eval().requires_grad_(False)
    side, f, p = size // 8, 16, 16
    face = torch.randn(2, 4, 768, device=device)
    past_latents = torch.randn(2 * (1 + p), 4, side, side, device=device)
    x = torch.randn(2, 4, f, side, side, device=device)
    audio = torch.randn(2, f, 32, 768, device=device)
    frame = torch.rand(1, 3, size, size, device=device) * 2 - 1
    z = torch.randn(1, 4, side, side, device=device)
    with torch.no_grad():
        feats = ref32(past_latents, face, 0)
    tokens, past, _ = split_reference_features(feats, 2)

    def refnet(dtype):
        net = ref32.to(dtype)
        return lambda: net(past_latents[: 2 * p].to(dtype), face.to(dtype), 0)  # the 2 × 16 past frames of a clip

    def step(dtype):
        net = dn32.to(dtype)
        memory = LinearAttentionMemory()
        with torch.no_grad():
            net.update_memory(memory, {k: v.to(dtype) for k, v in past.items()}, p, new_video=True)
        kw = dict(reference_tokens={k: v.to(dtype) for k, v in tokens.items()}, face_tokens=face.to(dtype),
                  audio_tokens=audio.to(dtype), emotion=torch.tensor([9, 3], device=device), memory=memory,
                  uncond=torch.tensor([True, False], device=device))
        return lambda: net(x.to(dtype), 500.0, **kw)

    def encode(dtype):
        vae = vae32.to(dtype)
        return lambda: vae.encode(frame.to(dtype), chunk_size=1)

    def decode(dtype):
        vae = vae32.to(dtype)
        return lambda: vae.decode(z.to(dtype), chunk_size=1)

    return {MEMO_STEP: step, MEMO_REF: refnet, VAE_ENC: encode, VAE_DEC: decode}


def usable(peak: dict[str, float]) -> list[str]:
    """The dtypes worth timing: within 4× of the best peak (bf16 without hardware support runs at a few
    GFLOP/s on CPUs and would take hours on the big pieces)."""
    top = max(peak.values())
    return [d for d in DTYPES if peak[d] >= top / 4]


def measure(pieces: dict, peak: dict[str, float], repeats: int) -> dict:
    rows = {}
    for name, build in pieces.items():
        row = {}
        for dname in usable(peak):
            dtype = DTYPES[dname]
            fn = build(dtype)
            flops = count_flops(fn)
            seconds = best_time(fn, repeats)
            row[dname] = {"flops": flops, "seconds": seconds, "share": flops / seconds / peak[dname]}
            print(f"  {name:56} {dname}: {flops / 1e12:7.3f} TFLOP in {seconds:8.2f} s = "
                  f"{flops / seconds / 1e9:7.1f} GFLOP/s, {100 * row[dname]['share']:5.1f} % of peak", flush=True)
        rows[name] = row
    return rows


def best(row: dict) -> tuple[str, float, int]:
    name = min(row, key=lambda d: row[d]["seconds"])
    return name, row[name]["seconds"], row[name]["flops"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=512, help="LetsTalk frame side (a multiple of 32)")
    ap.add_argument("--memo-size", type=int, default=128, help="MEMO frame side (a multiple of 64)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--layouts", action="store_true",
                    help="also time the DC-AE in the NCHW layout (before channels-last), for the ratio")
    ap.add_argument("--compile", action="store_true",
                    help="also time the DiT step under torch.compile (the compile itself is not timed)")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 1 if a.quick else a.repeats
    size, memo_size = (128, 64) if a.quick else (a.size, a.memo_size)
    print(f"device {device}, {torch.get_num_threads()} threads; LetsTalk at {size}², MEMO at {memo_size}²", flush=True)
    peak = peaks(device, repeats, a.quick)
    rows = measure(letstalk_pieces(size, device, layouts=a.layouts, compiled=a.compile), peak, repeats)
    rows.update(measure(memo_pieces(memo_size, device), peak, repeats))

    skipped = [d for d in DTYPES if d not in usable(peak)]
    if skipped:
        print(f"\nnot timed: {', '.join(skipped)} (peak {', '.join(f'{peak[d] / 1e9:.1f}' for d in skipped)} GFLOP/s "
              f"against {max(peak.values()) / 1e9:.0f} for the best dtype: no hardware support here)")
    print(f"\n{'piece':58}{'TFLOP':>8}" + "".join(f"{d + ' s':>9}{'% peak':>8}" for d in usable(peak)))
    for name, row in rows.items():
        cells = "".join(f"{row[d]['seconds']:9.2f}{100 * row[d]['share']:7.1f}%" for d in usable(peak))
        print(f"{name:58}{next(iter(row.values()))['flops'] / 1e12:8.3f}{cells}")

    step, dec = best(rows[STEP]), best(rows[DECODE])
    lt_s = 25 * step[1] / 16 + dec[1]
    lt_flops = 25 * step[2] / 16 + dec[2]
    dn, rn, venc, vdec = (best(rows[k]) for k in (MEMO_STEP, MEMO_REF, VAE_ENC, VAE_DEC))
    memo_s = (20 * dn[1] + rn[1] + 16 * venc[1]) / 16 + vdec[1]
    memo_flops = (20 * dn[2] + rn[2] + 16 * venc[2]) / 16 + vdec[2]
    top = max(peak.values())  # the bound: every FLOP at the best dtype's measured peak
    print(f"\nend to end, s per generated frame (each piece in its faster dtype) vs the bound at {top / 1e9:.0f} GFLOP/s:")
    print(f"  LetsTalk-B {size}² (25 guided steps / 16 frames + decode): {lt_s:8.2f} s, bound {lt_flops / top:7.2f} s, "
          f"{lt_s / (lt_flops / top):5.2f}× the bound")
    print(f"  MEMO {memo_size}² (20 steps + Reference Net + 16 encodes / 16 frames + decode): {memo_s:8.2f} s, "
          f"bound {memo_flops / top:7.2f} s, {memo_s / (memo_flops / top):5.2f}× the bound")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "peak": peak, "pieces": rows,
                                            "letstalk_s_per_frame": lt_s, "letstalk_bound": lt_flops / top,
                                            "memo_s_per_frame": memo_s, "memo_bound": memo_flops / top}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
