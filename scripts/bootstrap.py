#!/usr/bin/env python3
"""Set up a self-contained environment for LetsTalk and run a job in it.

Usage (from the repository root, with nothing installed but Python >= 3.10):

    python3 scripts/bootstrap.py test [pytest args...]      # set up, then run the test suite
    python3 scripts/bootstrap.py run letstalk generate ...  # set up, then run any command in the env

The environment lives in ``.venv`` next to this repository. A torch that the launching Python already
has (for example a ComfyUI user's CUDA build) is kept: the venv then sees the launching interpreter's
site-packages and nothing installs over that torch. Where no torch is present, ``torch==2.13.0`` is
installed (override with the environment variable ``LETSTALK_TORCH_SPEC``). Re-running is cheap: the
install step is skipped while ``pyproject.toml`` is unchanged.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
DEFAULT_TORCH = "torch==2.13.0"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _has_torch(python: Path | str) -> bool:
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def ensure_env(extras: str = "test") -> Path:
    """Create/refresh .venv with the package (editable) and the given extras; return its python."""
    py = _venv_python()
    if not py.exists():
        keep_torch = importlib.util.find_spec("torch") is not None
        args = [sys.executable, "-m", "venv", str(VENV)]
        if keep_torch:
            print("bootstrap: the launching Python has torch; the venv will reuse it", flush=True)
            args.insert(3, "--system-site-packages")
        _run(args)
    stamp = VENV / ".letstalk-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want and _has_torch(py):
        return py
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not _has_torch(py):
        _run(pip + [os.environ.get("LETSTALK_TORCH_SPEC", DEFAULT_TORCH)])
    _run(pip + ["-e", f"{ROOT}[{extras}]" if extras else str(ROOT)])
    stamp.write_text(want)
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"test", "run", "setup"}:
        print(__doc__)
        return 2
    py = ensure_env("test")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    bindir = str(py.parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(VENV)
    if argv[0] == "setup":
        return 0
    if argv[0] == "test":
        cmd = [str(py), "-m", "pytest", *argv[1:]]
    else:
        if len(argv) < 2:
            print("bootstrap: 'run' needs a command, e.g. run letstalk --help")
            return 2
        cmd = argv[1:]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
