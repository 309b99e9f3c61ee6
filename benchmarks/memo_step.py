"""One MEMO Diffusion Net step with its memory, at full width: ours against the authors' code.

Both run the published Diffusion Net structure (``tests/fixtures/memo/configs/diffusion_net/config.json``)
on the **same** random weights and inputs, on the CPU, in fp32, batch 2 (the guided forward: uncond +
cond), 16 frames, 16 past frames, at a reduced resolution (256² by default: 32×32 latents) to keep it
feasible here. Timed, each in its own process so peak memory is its own:

* ``update``: the first step of a clip (the memory decayed and updated from the past frames, then the
  denoising forward) — reference: ``diffusion_net(..., update_past_memory=True)``;
* ``step``: a later step (the memory only read).

Peak memory is the resident set's peak above the level before the first step (weights and inputs
excluded), sampled every 5 ms. The reference needs xFormers; ``scripts/memo_reference.py`` stands in an
exact softmax kernel (torch SDPA) for it, so its attention is as fast as ours.

    <reference venv>/bin/python benchmarks/memo_step.py --memo <memo checkout> --python-ours .venv/bin/python

(the script runs in the reference's venv, set up as ``scripts/memo_reference.py`` says; ``--python-ours`` is
the interpreter with ``letstalk_core``). The weights (6.7 GB) and inputs go to ``outputs/memo_bench/``.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from two_sides import run_side, side_parser  # beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "fixtures" / "memo" / "configs" / "diffusion_net" / "config.json"


class PeakRSS:
    """Peak resident memory above the level at ``start`` (``/proc/self/statm``, sampled every 5 ms)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gib(self):
        return (self.peak - self.base) / 2**30


def feature_shapes(cfg: dict, side: int, images: int) -> dict[str, tuple]:
    """Reference-Net feature shapes per Diffusion Net layer (``down.i.j``, ``mid.0.0``, ``up.i.j``)."""
    boc, n, lpb = cfg["block_out_channels"], len(cfg["block_out_channels"]), cfg["layers_per_block"]
    shapes = {}
    for i in range(n):
        s = side >> i
        for j in range(lpb):
            attn = cfg["down_block_types"][i].startswith("CrossAttn")
            shapes[f"down.{i}.{j}"] = (images, s * s, boc[i]) if attn else (images, boc[i], s, s)
    s = side >> (n - 1)
    shapes["mid.0.0"] = (images, s * s, boc[-1])
    for i in range(n):
        s = side >> (n - 1 - i)
        c = boc[n - 1 - i]
        for j in range(lpb + 1):
            attn = cfg["up_block_types"][i].startswith("CrossAttn")
            shapes[f"up.{i}.{j}"] = (images, s * s, c) if attn else (images, c, s, s)
    return shapes


def make_inputs(work: Path, side: int, frames: int, past: int, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    cfg = json.loads(CONFIG.read_text())
    g = torch.Generator().manual_seed(seed)
    t = {f"feat.{k}": torch.randn(s, generator=g) for k, s in feature_shapes(cfg, side, 2 * (1 + past)).items()}
    t["sample"] = torch.randn(2, 4, frames, side, side, generator=g)
    t["face"] = torch.randn(2, 4, 768, generator=g)
    t["audio"] = torch.randn(2, frames, 32, 768, generator=g)
    save_file(t, work / "inputs.safetensors")


def run_reference(args) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from memo_reference import enable_reference_xformers, import_reference

    ref = import_reference(args.memo)
    torch.manual_seed(0)
    cfg = json.loads(CONFIG.read_text())
    net = ref.unet_3d.UNet3DConditionModel.from_config(cfg).eval().requires_grad_(False)
    if "center_input_sample" not in net.config:
        net.register_to_config(center_input_sample=False)
    for p in net.parameters():  # the zero-initialised layers too, so every path computes
        if not p.any():
            p.normal_(0, 0.02)
    enable_reference_xformers(net)
    weights = Path(args.work) / "diffusion_net.safetensors"
    if not weights.exists():
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    t = load_file(Path(args.work) / "inputs.safetensors")
    nested = {"down": [], "mid": [], "up": []}
    for key in sorted(k for k in t if k.startswith("feat.")):
        _, part, i, j = key.split(".")
        lst = nested[part]
        while len(lst) <= int(i):
            lst.append([])
        f = t[key]
        lst[int(i)].append([f] if f.ndim == 3 else f)
    kw = dict(encoder_hidden_states=t["face"], audio_embedding=t["audio"], audio_emotion=torch.tensor([9, 3]),
              uc_mask=torch.tensor([1] * 16 + [0] * 16).bool())
    with torch.no_grad():
        net(t["sample"], nested, 500.0, is_new_audio=True, update_past_memory=True, **kw)  # clip 0: warm-up
        with PeakRSS() as m1:
            t0 = time.perf_counter()
            out = net(t["sample"], nested, 500.0, is_new_audio=False, update_past_memory=True, **kw).sample
            t1 = time.perf_counter()
        with PeakRSS() as m2:
            out2 = net(t["sample"], nested, 450.0, is_new_audio=False, update_past_memory=False, **kw).sample
            t2 = time.perf_counter()
    save_file({"update": out.contiguous(), "step": out2.contiguous()}, Path(args.work) / "out_reference.safetensors")
    return {"update_s": t1 - t0, "step_s": t2 - t1, "update_gib": m1.gib, "step_gib": m2.gib}


def run_ours(args) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from letstalk_core.families.memo.config import parse_unet_config
    from letstalk_core.families.memo.diffusion_net import DiffusionNet, split_reference_features
    from letstalk_core.memory.linear_state import LinearAttentionMemory

    cfg = parse_unet_config(json.loads(CONFIG.read_text()), "diffusion", str(CONFIG))
    with torch.device("meta"):
        net = DiffusionNet(cfg)
    with safe_open(str(Path(args.work) / "diffusion_net.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict(state, assign=True)
    net.eval().requires_grad_(False)
    t = load_file(Path(args.work) / "inputs.safetensors")
    feats = {k[len("feat."):]: v for k, v in t.items() if k.startswith("feat.")}
    tokens, past, p = split_reference_features(feats, 2)
    kw = dict(reference_tokens=tokens, face_tokens=t["face"], audio_tokens=t["audio"],
              emotion=torch.tensor([9, 3]), uncond=torch.tensor([True, False]))
    memory = LinearAttentionMemory()
    with torch.no_grad():
        net.update_memory(memory, past, p, new_video=True)  # clip 0
        net(t["sample"], 500.0, memory=memory, **kw)  # warm-up
        with PeakRSS() as m1:
            t0 = time.perf_counter()
            net.update_memory(memory, past, p, new_video=False)
            out = net(t["sample"], 500.0, memory=memory, **kw)
            t1 = time.perf_counter()
        with PeakRSS() as m2:
            out2 = net(t["sample"], 450.0, memory=memory, **kw)
            t2 = time.perf_counter()
    save_file({"update": out.contiguous(), "step": out2.contiguous()}, Path(args.work) / "out_ours.safetensors")
    return {"update_s": t1 - t0, "step_s": t2 - t1, "update_gib": m1.gib, "step_gib": m2.gib,
            "memory_state_gib": memory.nbytes() / 2**30}


def main() -> None:
    ap = side_parser(__doc__.split("\n")[0], ROOT / "outputs" / "memo_bench", 256,
                     "frame side in pixels (latents are /8)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.side == "reference":
        print(json.dumps(run_reference(args)))
        return
    if args.side == "ours":
        print(json.dumps(run_ours(args)))
        return
    if not args.memo:
        ap.error("--memo is required")
    make_inputs(work, args.size // 8, 16, 16)
    results = {side: run_side(__file__, side, args, []) for side in ("reference", "ours")}
    import torch
    from safetensors.torch import load_file
    a, b = load_file(work / "out_reference.safetensors"), load_file(work / "out_ours.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    r, o = results["reference"], results["ours"]
    print(f"MEMO Diffusion Net, full width, {args.size}² ({args.size // 8}² latents), batch 2 (CFG), 16 frames, "
          f"16 past frames, fp32, CPU threads {torch.get_num_threads()}")
    print(f"{'':28}{'reference':>12}{'ours':>12}{'ratio':>10}")
    for key, label in (("update_s", "first step (memory update) s"), ("step_s", "later step s"),
                       ("update_gib", "peak extra memory, 1st GiB"), ("step_gib", "peak extra memory GiB")):
        print(f"{label:28}{r[key]:12.2f}{o[key]:12.2f}{r[key] / max(o[key], 1e-9):9.2f}×")
    print(f"memory state (ours, fp32): {o['memory_state_gib']:.2f} GiB; max |Δ| of the outputs: {diff:.2e}")


if __name__ == "__main__":
    main()
