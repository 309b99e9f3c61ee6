"""The shipped demo: the demo model, a demo portrait and demo speech (both procedural, from seeds
never used in training), and the ``letstalk demo`` command that turns them into a talking video.

The demo model is trained by ``scripts/train_demo.py`` with the project's own commands; the
commands, the data seeds and the training config are in its metadata (``letstalk_training``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

#: Package data (pyproject ``[tool.setuptools.package-data]``): a wheel or ``pip install .`` carries it too.
DEMO_MODEL = Path(__file__).resolve().parent / "models" / "letstalk-demo.safetensors"
DEMO_SEED = 777_001  # the demo person and speech; training data uses dataset seed 1000, held-out 9000
TRAINING_KEY = "letstalk_training"


def stamp_provenance(src, dst, recipe: dict, inference: dict | None = None) -> Path:
    """Copy a trained export to ``dst`` with ``recipe`` (commands, data seeds) added to its
    ``letstalk_training`` metadata and, if given, the sampling recipe (``letstalk_inference``:
    ``{"sampler", "steps"}``) the model is meant to be run with."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    training = json.loads(meta.get(TRAINING_KEY, "{}"))
    training["provenance"] = recipe
    meta[TRAINING_KEY] = json.dumps(training)
    if inference is not None:
        from .families.letstalk.checkpoint import INFERENCE_KEY

        meta[INFERENCE_KEY] = json.dumps(inference)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(dst)
    return dst


def demo_model_path() -> Path:
    if not DEMO_MODEL.is_file():
        raise ValueError(f"the demo model is missing at '{DEMO_MODEL}': this installation of letstalk is incomplete. "
                         "Reinstall the package (`pip install --force-reinstall letstalk-talking-portrait`, or "
                         "`pip install .` in a clone), or give a model with --checkpoint.")
    return DEMO_MODEL


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="make a talking video from the demo model, a demo portrait and demo speech")
    p.add_argument("--out", default="outputs/demo/demo.mp4",
                   help="the video file (as in every command); the demo portrait and speech go beside it, as <name>_input.*")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the demo speech")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="demo person and speech (procedural)")
    p.add_argument("--checkpoint", default=None, help="another model instead of the shipped demo model")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps per clip; default: the model's recorded recipe (10 Euler steps for the demo model)")
    p.add_argument("--audio-scale", type=float, default=1.0, help="audio guidance scale (1 = off)")
    p.add_argument("--portrait-scale", type=float, default=1.0, help="portrait guidance scale (1 = off)")
    p.add_argument("--no-memory", action="store_true", help="generate every clip from the portrait only (ablation)")
    p.add_argument("--overlap", type=int, default=None,
                   help="frames consecutive clips share and crossfade (0 = the paper's side-by-side clips; default 4 of 16)")
    p.add_argument("--memory-anchor", type=float, default=None,
                   help="share of the portrait mixed into each clip's memory (0 = the paper's memory; default 0.2)")
    from .runtime import add_threads_option

    add_threads_option(p)
    p.set_defaults(func=run_demo_command)


def run_demo_command(a) -> int:
    import numpy as np
    from tqdm import tqdm

    from .audio.waveform import frame_count
    from .data.procedural import load_truth, make_sample, measure_mouth_opening
    from .diffusion.guidance import GuidanceScales
    from .eval.report import evaluate_video
    from .families.letstalk.generator import RECOMMENDED_MEMORY_ANCHOR, write_video
    from .families.letstalk.loading import load_generator
    from .io.audio_file import load_audio
    from .io.image import load_image
    from .loop import GenerationSettings, plan_clips, recommended_overlap
    from .runtime import CoreShare
    from .validation import require_video_out

    video = require_video_out(a.out, "demo video")
    out = video.parent
    ckpt = Path(a.checkpoint) if a.checkpoint else demo_model_path()
    gen = load_generator(ckpt, device="auto", dtype="auto")
    cfg = gen.config
    print(f"demo inputs: procedural person and speech, seed {a.seed}, {a.seconds:g} s")
    truth_json = make_sample(a.seed, a.seconds, out, size=cfg.video.height, fps=cfg.video.fps, stem=f"{video.stem}_input")
    truth = load_truth(truth_json)
    image = load_image(truth.portrait_path)
    wave, rate = load_audio(truth.audio)
    settings = GenerationSettings(sampler=gen.recipe.sampler, steps=gen.recipe.steps if a.steps is None else a.steps, seed=0, use_memory=not a.no_memory,
                                  guidance=GuidanceScales(portrait=a.portrait_scale, audio=a.audio_scale),
                                  overlap=recommended_overlap(cfg.video.clip_frames) if a.overlap is None else a.overlap,
                                  memory_anchor=RECOMMENDED_MEMORY_ANCHOR if a.memory_anchor is None else a.memory_anchor)
    t0 = time.perf_counter()
    plan = plan_clips(frame_count(int(wave.shape[-1]), rate, cfg.video.fps), cfg.video.clip_frames, settings.overlap)
    share = CoreShare() if a.share_cores else None  # by default the pool is fixed: the result is exact

    def on_clip(clip) -> None:
        bar.update(1)
        if share:
            share.update()

    with tqdm(total=len(plan), desc="clips", unit="clip", dynamic_ncols=True) as bar:
        prepared = write_video(gen, image, wave, rate, video, settings, on_clip=on_clip,
                               metadata={"comment": f"LetsTalk demo, model {ckpt.name}"})
    took = time.perf_counter() - t0
    m = evaluate_video(video, clip_frames=cfg.video.clip_frames, overlap=settings.overlap, truth_mouth=np.asarray(truth.tracks["mouth_open"]),
                       measure_mouth=measure_mouth_opening, portrait=truth.portrait())
    print(f"{prepared.num_frames} frames ({prepared.audio_seconds:.2f} s at {cfg.video.fps:g} fps) in {took:.0f} s "
          f"({1000 * took / prepared.num_frames:.0f} ms/frame)")
    print(f"lip sync vs. the speech's ground truth: r = {m['lipsync_corr']:.2f} at lag {m['lipsync_best_lag']}; "
          f"clip-boundary jump {m['boundary_jump_ratio']:.2f}x the within-clip change")
    print(f"portrait: {truth.portrait_path}\nspeech:   {truth.audio}\nvideo:    {video.resolve()}")
    return 0
