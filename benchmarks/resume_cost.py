"""What `--resume-dir` costs: `letstalk generate` on the demo model with and without it (issue 12, item 7).

    python benchmarks/resume_cost.py [--seconds 30] [--repeats 2]

Each run in its own process, alternating, best of ``--repeats``; prints the seconds per frame (from the
CLI's own timing line, i.e. without start-up) and the ratio. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(inputs: dict, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "letstalk_core.cli", "generate", "--checkpoint", "demo", "--image", inputs["image"],
           "--audio", inputs["audio"], "--out", str(out), *extra]
    err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    return float(re.search(r"\(([0-9.]+) s/frame\)", err).group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from letstalk_core.data.procedural import load_truth, make_sample

    work = Path(tempfile.mkdtemp(prefix="letstalk-resume-"))
    truth = load_truth(make_sample(777_001, a.seconds, work, size=64, fps=25, stem="input"))
    inputs = {"image": str(truth.portrait_path), "audio": str(truth.audio)}
    plain, resume = [], []
    for _ in range(a.repeats):
        plain.append(_run(inputs, work / "a.mp4", []))
        resume.append(_run(inputs, work / "b.mp4", ["--resume-dir", str(work / "run")]))
    p, r = min(plain), min(resume)
    print(f"{a.seconds:g} s of demo speech: without --resume-dir {p:.4f} s/frame, with {r:.4f} s/frame: "
          f"{r / p:.3f}x ({(r / p - 1) * 100:+.1f} %); the folder is removed after the run: "
          f"{not (work / 'run').exists()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
