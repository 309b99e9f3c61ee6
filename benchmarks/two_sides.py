"""What ``memo_step.py`` and ``memo_pipeline.py`` share: the authors' code and ours measured on the same
inputs, each side in its own interpreter (the reference's venv, ours) so peak memory is its own."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def side_parser(description: str, work: Path, size: int, size_help: str) -> argparse.ArgumentParser:
    """The options both benchmarks take: the memo checkout, our interpreter, the work folder, the frame
    side and which side this process runs."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--memo", help="checkout of github.com/memoavatar/memo (reference side)")
    ap.add_argument("--python-ours", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--work", default=str(work))
    ap.add_argument("--size", type=int, default=size, help=size_help)
    ap.add_argument("--side", choices=["both", "reference", "ours"], default="both")
    return ap


def run_side(script: str, side: str, args, extra: list[str]) -> dict:
    """Run ``script --side side`` in the side's interpreter (this one for the reference, ``--python-ours``
    for ours) and return the JSON it prints last; exit with its error output if it fails."""
    python = sys.executable if side == "reference" else args.python_ours
    cmd = [python, script, "--side", side, "--work", str(args.work), "--size", str(args.size), *extra]
    if side == "reference":
        cmd += ["--memo", args.memo]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
