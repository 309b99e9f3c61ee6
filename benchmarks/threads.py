"""Sharing the CPU: `letstalk generate` alone vs next to another torch process (issue 12, item 4).

    python benchmarks/threads.py [--seconds 3] [--timeout 400]

Runs the same generation (the shipped demo model, procedural demo speech and portrait) several ways,
each in its own process, and prints wall times and ratios to the run alone:

* alone: the CLI's defaults (passive OpenMP waiting, threads sized to the free cores between clips);
* next to a competing torch process (a conv/matmul loop with torch's default settings: one thread per
  core, spinning waits), with
  - the defaults,
  - ``--threads 2`` (passive waiting, a fixed pool),
  - the behaviour before (``OMP_WAIT_POLICY`` left to libgomp's spinning default, a fixed pool of 2).

Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = """
import torch, torch.nn as nn
torch.manual_seed(0)
conv = nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(4, 64, 48, 48)
a, b = torch.randn(256, 512), torch.randn(512, 256)
with torch.no_grad():
    while True:
        y = conv(x).relu()
        for _ in range(8):
            (a @ b).softmax(-1)
"""


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _generate(inputs: dict, out: Path, extra: list[str], env: dict, timeout: float) -> float:
    cmd = [sys.executable, "-m", "letstalk_core.cli", "generate", "--checkpoint", "demo", "--image", inputs["image"],
           "--audio", inputs["audio"], "--out", str(out), *extra]
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of the demo speech")
    ap.add_argument("--timeout", type=float, default=400.0, help="give up on one run after this many seconds")
    a = ap.parse_args()
    from letstalk_core.data.procedural import load_truth, make_sample

    work = Path(tempfile.mkdtemp(prefix="letstalk-threads-"))
    truth = load_truth(make_sample(777_001, a.seconds, work, size=64, fps=25, stem="input"))
    inputs = {"image": str(truth.portrait_path), "audio": str(truth.audio)}
    rows = []

    def run(name, extra, env, competitor):
        proc = None
        if competitor:
            proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_env())
            time.sleep(2.0)  # let it start its pool
        try:
            t = _generate(inputs, work / "out.mp4", extra, env, a.timeout)
        finally:
            if proc:
                proc.kill()
                proc.wait()
        rows.append((name, t))
        print(f"{name:<58} {t:8.1f} s", flush=True)

    _generate(inputs, work / "warm.mp4", [], _env(), a.timeout)  # warm the file cache
    run("alone, defaults", [], _env(), False)
    run("alone, before (spinning waits, 2 threads)", ["--threads", "2"], _env(OMP_WAIT_POLICY=""), False)
    run("with a competing torch process, defaults", [], _env(), True)
    run("with a competing torch process, --threads 2 (passive)", ["--threads", "2"], _env(), True)
    run("with a competing torch process, before (spinning, 2 threads)", ["--threads", "2"], _env(OMP_WAIT_POLICY=""), True)
    base = rows[0][1]
    print(f"\n{a.seconds:g} s of audio, demo model, {os.cpu_count()} cores")
    print(f"{'run':<58} {'s':>8} {'ratio':>7}")
    for name, t in rows:
        print(f"{name:<58} {t:8.1f} {t / base:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
