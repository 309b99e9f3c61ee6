"""Ablation table on the held-out procedural set: every row generates the same held-out videos
(identities and speech never seen in training, 60 s each) and is scored with all metrics.

    python3 scripts/bootstrap.py run python benchmarks/ablation.py \\
        --heldout outputs/demo-build/heldout \\
        --row "demo model=letstalk_core/models/letstalk-demo.safetensors" \\
        --row "demo model, memory off=letstalk_core/models/letstalk-demo.safetensors:nomem" \\
        --out outputs/ablation --workers 2

A row is ``NAME=CHECKPOINT`` with options ``:nomem`` (memory bank off at inference: every clip
starts from the portrait), ``:mem=S`` (memory guidance scale S) and ``:overlap=M`` (consecutive
clips share M crossfaded frames; seams are scored over the whole crossfade). Each (row, video) result is kept in the output folder and re-used while
the checkpoint and settings are unchanged, so a table can be computed in parts. Metrics per video (``letstalk_core.eval``): lip-sync correlation and best
lag of the mouth opening measured in the frames against the ground truth; CIEDE2000 colour drift of
face and hair against the portrait per 10 s window (max and slope); clip-boundary jump (frame change
across clip seams / within clips); flicker. A row's figure is the mean over the videos, except the
ΔE maxima and |lag|, which are the worst video. Also the ground-truth videos themselves, for scale.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

COLUMNS = ["lipsync_corr", "lipsync_best_lag", "face_de_max", "face_de_slope_per_min", "hair_de_max",
           "hair_de_slope_per_min", "pixel_mae_max", "pixel_mae_slope_per_min", "boundary_jump_ratio", "flicker", "flicker_ratio", "ms_per_frame"]
WORST = {"face_de_max": max, "hair_de_max": max, "pixel_mae_max": max, "lipsync_best_lag": lambda v: max(v, key=abs)}


def _score(video: Path, truth_json: Path, clip_frames: int, overlap: int = 0) -> dict:
    from letstalk_core.data.procedural import measure_mouth_opening
    from letstalk_core.eval.report import evaluate_video, load_eval_truth

    truth = load_eval_truth(truth_json)
    return evaluate_video(video, clip_frames=clip_frames, overlap=overlap, portrait=truth["portrait"], masks=truth["masks"],
                          truth_mouth=truth["mouth"], measure_mouth=measure_mouth_opening)


def _job(args) -> dict:
    name, ckpt, nomem, mem, overlap, anchor, truth_json, out_dir, steps, audio_scale, threads = args
    cached = Path(out_dir) / f"{Path(truth_json).stem}.json"
    key = {"checkpoint": str(Path(ckpt).resolve()), "mtime": Path(ckpt).stat().st_mtime, "steps": steps, "nomem": nomem,
           "audio_scale": audio_scale, **({"memory_scale": mem} if mem != 1.0 else {}),
           **({"overlap": overlap} if overlap else {}), **({"memory_anchor": anchor} if anchor else {})}
    if cached.is_file():  # rows are re-used across invocations (run the table in parts)
        old = json.loads(cached.read_text())
        video = Path(out_dir) / f"{Path(truth_json).stem}.mp4"
        if old.get("key") == key:
            result = old["result"]
            if any(c not in result for c in COLUMNS) and video.is_file():  # a metric added since: score again
                result = {**result, **_score(video, Path(truth_json), result.get("clip_frames", 16), overlap)}
                cached.write_text(json.dumps({"key": key, "result": result}))
            return {**result, "row": name}  # the same run under this table's row name
    import torch

    torch.set_num_threads(threads)
    from letstalk_core.diffusion.guidance import GuidanceScales
    from letstalk_core.families.letstalk.generator import write_video
    from letstalk_core.families.letstalk.loading import load_generator
    from letstalk_core.io.audio_file import load_audio
    from letstalk_core.io.image import load_image
    from letstalk_core.loop import GenerationSettings

    truth = json.loads(Path(truth_json).read_text())
    folder = Path(truth_json).parent
    video = Path(out_dir) / f"{Path(truth_json).stem}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    gen = load_generator(ckpt, device="cpu", dtype="fp32")
    image = load_image(folder / truth["files"]["portrait"])
    wave, rate = load_audio(folder / truth["files"]["audio"])
    t0 = time.perf_counter()
    settings = GenerationSettings(steps=steps, seed=0, use_memory=not nomem, guidance=GuidanceScales(audio=audio_scale, memory=mem),
                                  overlap=overlap, memory_anchor=anchor)
    prepared = write_video(gen, image, wave, rate, video, settings)
    ms = 1000 * (time.perf_counter() - t0) / prepared.num_frames
    result = _score(video, Path(truth_json), gen.config.video.clip_frames, overlap)
    result["ms_per_frame"] = ms
    result = {"row": name, "video": str(video), **result}
    cached.write_text(json.dumps({"key": key, "result": result}))
    return result


def _aggregate(results: list[dict]) -> dict:
    agg = {}
    for key in COLUMNS:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            agg[key] = WORST[key](values) if key in WORST else float(np.mean(values))
    return agg


def parse_row(text: str) -> tuple[str, str, bool, float, int]:
    """``NAME=CHECKPOINT[:nomem][:mem=S][:overlap=M]``: memory bank off, memory guidance scale S,
    M frames shared and crossfaded by consecutive clips."""
    name, sep, spec = text.partition("=")
    if not sep:
        raise SystemExit(f"--row {text!r}: expected NAME=CHECKPOINT[:nomem][:mem=S][:overlap=M]")
    ckpt, *opts = spec.split(":")
    nomem, mem, overlap, anchor = False, 1.0, 0, 0.0
    for opt in opts:
        if opt == "nomem":
            nomem = True
        elif opt.startswith("mem="):
            mem = float(opt[4:])
        elif opt.startswith("overlap="):
            overlap = int(opt[8:])
        elif opt.startswith("anchor="):
            anchor = float(opt[7:])
        else:
            raise SystemExit(f"--row {text!r}: unknown option {opt!r} (nomem, mem=S, overlap=M)")
    if not Path(ckpt).is_file():
        raise SystemExit(f"--row {text!r}: checkpoint '{ckpt}' does not exist")
    return name.strip(), ckpt, nomem, mem, overlap, anchor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", required=True, help="folder of procedural samples (letstalk synth)")
    ap.add_argument("--row", action="append", required=True, help="NAME=CHECKPOINT[:nomem][:mem=S][:overlap=M]")
    ap.add_argument("--out", default="outputs/ablation")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps per clip (Euler for flow models, DDIM for DDPM)")
    ap.add_argument("--audio-scale", type=float, default=1.0, help="audio guidance scale (1 = off)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N held-out samples")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clip-frames", type=int, default=16, help="for scoring the ground-truth videos")
    a = ap.parse_args()
    truths = sorted(Path(a.heldout).glob("*.json"))
    truths = [t for t in truths if t.name != "manifest.json"]
    if a.limit:
        truths = truths[: a.limit]
    if not truths:
        raise SystemExit(f"no ground-truth JSONs in {a.heldout}")
    rows = [parse_row(r) for r in a.row]
    out = Path(a.out)
    jobs = [(name, ckpt, nomem, mem, overlap, anchor, str(t), str(out / name.replace(" ", "_").replace(",", "").replace("@", "at")), a.steps,
             a.audio_scale, 1 if a.workers > 1 else 2)
            for name, ckpt, nomem, mem, overlap, anchor in rows for t in truths]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as pool:
        results = list(pool.map(_job, jobs))
    gt = []
    for t in truths:
        truth = json.loads(t.read_text())
        gt.append(_score(t.parent / truth["files"]["video"], t, a.clip_frames))
    table_rows = [("ground truth (rendered)", _aggregate(gt))]
    table_rows += [(name, _aggregate([r for r in results if r["row"] == name])) for name, *_ in rows]
    from letstalk_core.eval.report import format_table

    table = format_table(table_rows, columns=COLUMNS, first="model / setting")
    print(f"{len(truths)} held-out videos of {json.loads(truths[0].read_text())['seconds']:g} s, "
          f"{a.steps} sampling steps, audio guidance {a.audio_scale:g}; {time.perf_counter() - t0:.0f} s\n")
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"rows": table_rows, "videos": results, "ground_truth": gt}, indent=1))
    (out / "ablation.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
