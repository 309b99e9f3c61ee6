"""Build the shipped demo model from nothing, with the project's own commands (issue 3).

    python3 scripts/bootstrap.py run python scripts/train_demo.py [--work outputs/demo-build] [--minutes 60]

Stages (each skipped when its output exists, so an interrupted build continues):
1. ``letstalk synth``       procedural talking faces for training (seed 1000) and held-out (seed 9000);
2. ``letstalk train-dcae``  the demo DC-AE on the training videos;
3. ``letstalk preprocess``  DC-AE latents, log-mel features and frames into shards;
4. ``letstalk train``       the DiT (configs/demo_train.json);
5. copy the EMA export to ``letstalk_core/models/letstalk-demo.safetensors`` with these exact commands in its
   metadata (``letstalk_training.provenance``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_DATA = dict(count=320, seconds=10, seed=1000)
HELDOUT_DATA = dict(count=4, seconds=60, seed=9000)


def commands(work: Path, steps: int, threads: int, run: str = "run") -> list[list[str]]:
    lt = [sys.executable, "-m", "letstalk_core.cli"]  # = the `letstalk` command of this environment
    return [
        lt + ["synth", "--out", str(work / "train"), "--count", str(TRAIN_DATA["count"]), "--seconds",
              str(TRAIN_DATA["seconds"]), "--seed", str(TRAIN_DATA["seed"]), "--workers", "2"],
        lt + ["synth", "--out", str(work / "heldout"), "--count", str(HELDOUT_DATA["count"]), "--seconds",
              str(HELDOUT_DATA["seconds"]), "--seed", str(HELDOUT_DATA["seed"]), "--workers", "2"],
        lt + ["train-dcae", str(work / "train"), "--out", str(work / "dcae.safetensors"), "--steps", "1000",
              "--batch-size", "24", "--frame-stride", "5"],
        lt + ["preprocess", str(work / "train"), "--out", str(work / "shards"), "--config",
              str(work / "dcae.model_config.json"), "--dcae", str(work / "dcae.safetensors"), "--detector", "none",
              "--workers", "2", "--keep-frames"],
        lt + ["train", "configs/demo_train.json", "--set", f"data={work / 'shards'}",
              "--set", f"out={work / run}", "--set", f"dcae={work / 'dcae.safetensors'}",
              "--set", f"model={work / 'dcae.model_config.json'}", "--set", f"steps={steps}",
              "--set", f"threads={threads}", "--no-progress"],
    ]


#: The recipe the demo model is run with (and the README's figures were measured with).
DEMO_INFERENCE = {"sampler": "euler", "steps": 10}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="outputs/demo-build", help="build folder (relative to the repository)")
    ap.add_argument("--steps", type=int, default=4000, help="DiT training steps")
    ap.add_argument("--run", default="run", help="the DiT run folder inside --work")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for the DiT training (0 = torch's default)")
    ap.add_argument("--out", default="letstalk_core/models/letstalk-demo.safetensors")
    ap.add_argument("--only", type=int, nargs="*", help="run only these stage numbers (1-5)")
    a = ap.parse_args()
    os.chdir(ROOT)
    work = Path(a.work)
    outputs = [work / "train" / "manifest.json", work / "heldout" / "manifest.json", work / "dcae.safetensors",
               work / "shards" / "index.json", None]
    cmds = commands(work, a.steps, a.threads, a.run)
    for i, (cmd, done) in enumerate(zip(cmds, outputs), 1):
        if a.only and i not in a.only:
            continue
        if done is not None and done.exists():
            print(f"[{i}] exists: {done}")
            continue
        print(f"[{i}] {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"[{i}] {time.perf_counter() - t0:.0f} s", flush=True)
    if a.only and 5 not in a.only:
        return 0
    from letstalk_core.demo import stamp_provenance

    recipe = {"commands": [shlex.join(["letstalk", *c[3:]]) for c in cmds], "train_data": TRAIN_DATA,
              "heldout_data": HELDOUT_DATA, "script": "scripts/train_demo.py"}
    # The EMA export at exactly --steps (written when the run went further than that), else the final one.
    src = work / a.run / f"model_step_{a.steps:07d}.safetensors"
    stamp_provenance(src if src.is_file() else work / a.run / "model.safetensors", Path(a.out), recipe,
                     inference=DEMO_INFERENCE)
    print(f"demo model: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
