"""fp32 against bf16 on this CPU, for what ``--dtype auto`` picks (``letstalk_core.devices.pick_dtype``).

A CPU with AVX512-BF16 or AMX runs bf16 matrix products in hardware, but a small model gains nothing
from them: its time goes to many small operators, and every bf16 tensor is converted on the way in and
out. Timed here, each piece in both dtypes on the same weights, one after the other in one process:

* the shipped demo model (LetsTalk, 2.3 M parameters): ``letstalk generate`` of 4 s of demo speech;
* MEMO's pieces at full width (random weights), 128² (16² latents): one guided Diffusion Net step of a
  16-frame clip with its memory, the Reference Net over the 16 past frames of both guidance rows, the SD
  VAE decoding 8 frames.

    python benchmarks/dtype_cpu.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def demo_model(dtype: torch.dtype, work: Path, repeats: int) -> float:
    from letstalk_core.data.procedural import load_truth, make_sample
    from letstalk_core.demo import demo_model_path
    from letstalk_core.families.letstalk.loading import load_generator
    from letstalk_core.io.audio_file import load_audio
    from letstalk_core.io.image import load_image
    from letstalk_core.loop import GenerationSettings, ListSink

    gen = load_generator(demo_model_path(), device="cpu", dtype=dtype)
    truth = load_truth(make_sample(9001, 4.0, work, size=gen.config.video.height, fps=gen.config.video.fps,
                                   stem="bench"))
    image, (wave, rate) = load_image(truth.portrait_path), load_audio(truth.audio)
    settings = GenerationSettings(sampler=gen.recipe.sampler, steps=gen.recipe.steps, seed=0)
    frames = {}

    def run():
        sink = ListSink()
        gen.generate(image, wave, rate, sink, settings)
        frames["n"] = sink.frames().shape[0]

    took = best_of(run, repeats)
    return took / frames["n"]


def memo_pieces(dtype: torch.dtype, repeats: int, size: int = 128) -> dict[str, float]:
    from letstalk_core.autoencoder.sd_vae import SDVAE, SDVAEConfig
    from letstalk_core.families.memo.conditions import (
        initial_past_features,
        past_features,
        reference_features,
        reference_tokens,
    )
    from letstalk_core.families.memo.memory_plan import ConfigFolder
    from letstalk_core.families.memo.sampling import guided_conditions, guided_velocity
    from letstalk_core.memory.linear_state import LinearAttentionMemory

    parts = ConfigFolder.read(ROOT / "tests" / "fixtures" / "memo" / "configs").parts
    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        ref = parts["reference_net"].build().eval().to(dtype)
        net = parts["diffusion_net"].build().eval().to(dtype)
        h = size // 8
        face = torch.randn(1, 4, 768).to(dtype)
        latent = torch.randn(1, 4, h, h).to(dtype)
        feats = reference_features(ref, latent, face, face)
        memory = LinearAttentionMemory(dtype=dtype)
        net.update_memory(memory, initial_past_features(feats, 16), 16, new_video=True)
        cond = guided_conditions(reference_tokens=reference_tokens(feats), face_tokens=face, uncond_face_tokens=face,
                                 audio_tokens=torch.randn(1, 16, 32, 768).to(dtype), emotion=3)
        fn = guided_velocity(net, cond, memory)
        x = torch.randn(1, 4, 16, h, h).to(dtype)
        t = torch.tensor([500.0])
        out["Diffusion Net step (batch 2, 16 frames)"] = best_of(lambda: fn(x, t), repeats)
        past = torch.randn(16, 4, h, h).to(dtype)
        out["Reference Net, 2 × 16 past frames"] = best_of(lambda: past_features(ref, past, face, face), repeats)
        del ref, net, memory, feats
        vae = SDVAE(SDVAEConfig()).eval().to(dtype)
        z = torch.randn(8, 4, h, h)
        out["SD VAE decode, 8 frames"] = best_of(lambda: vae.decode(z, chunk_size=8), repeats)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="MEMO's frame side for its pieces")
    a = p.parse_args(argv)
    from letstalk_core.devices import native_bf16

    ok, why = native_bf16(torch.device("cpu"))
    print(f"CPU: {why}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not ok:
        print("no native bf16 here: bf16 would be emulated (tens of times slower); nothing to compare")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f32, b16 = demo_model(torch.float32, Path(tmp), a.repeats), demo_model(torch.bfloat16, Path(tmp), a.repeats)
        rows.append(("demo model (LetsTalk, 2.3 M), s per frame", f32, b16))
    m32, m16 = memo_pieces(torch.float32, a.repeats, a.size), memo_pieces(torch.bfloat16, a.repeats, a.size)
    rows += [(f"MEMO {k} at {a.size}², s", m32[k], m16[k]) for k in m32]
    print("| piece | fp32 | bf16 | bf16 speed-up |")
    print("|---|---:|---:|---:|")
    for name, x, y in rows:
        print(f"| {name} | {x:.3f} | {y:.3f} | {x / y:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
