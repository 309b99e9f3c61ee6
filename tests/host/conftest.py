"""A real headless ComfyUI with this pack, for the host tests (and the browser tests in tests/web).

Found through ``COMFYUI_PATH`` (the ComfyUI source tree, see ../shared/comfy/README.md) and run with
``COMFYUI_PYTHON`` (default: ``COMFYUI_PATH/../venv/bin/python``). Without ``COMFYUI_PATH`` every test
here skips and says why. The server gets its own port and its own input/output/temp/user folders
under pytest's tmp dir, and loads the pack from a custom_nodes folder given through
``--extra-model-paths-config``, so nothing in the ComfyUI tree is changed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "letstalk"
ASSETS = REPO / "assets"


def comfy_paths() -> tuple[Path, str]:
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: the host tests need a ComfyUI source tree "
                    "(build one with ../shared/comfy/setup_comfy_cpu.sh and point COMFYUI_PATH at HOST_DIR/ComfyUI)")
    root_p = Path(root)
    if not (root_p / "main.py").is_file():
        pytest.skip(f"COMFYUI_PATH={root} has no main.py; point it at a ComfyUI source tree")
    py = os.environ.get("COMFYUI_PYTHON") or str(root_p.parent / "venv" / "bin" / "python")
    if not Path(py).exists():
        py = sys.executable
    return root_p, py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    """A running server: HTTP helpers around /prompt, /history, /interrupt and /upload."""

    def __init__(self, base: str, dirs: dict, proc: subprocess.Popen, log: Path):
        self.base, self.dirs, self.proc, self.log = base, dirs, proc, log

    def get(self, path: str, timeout: float = 30, expect: int = 200):
        """GET a JSON answer; ``expect``: the status it must have (an error status's JSON body is returned)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        assert status == expect, (path, status, body[:500])
        return json.loads(body)

    def post(self, path: str, body, timeout: float = 30):
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw) if raw.strip() else None

    def upload(self, path: Path, name: str | None = None) -> str:
        """Upload a file into the server's input folder (POST /upload/image, which takes any file)."""
        boundary = uuid.uuid4().hex
        name = name or path.name
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
        for k, v in (("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.base + "/upload/image", data=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["name"]

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        try:
            resp = self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST /prompt refused: {e.code} {e.read().decode()[:3000]}") from e
        return resp["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                st = hist[prompt_id]["status"]
                if st.get("status_str") in ("success", "error") or st.get("completed"):
                    return hist[prompt_id]
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited (code {self.proc.returncode}); log: {self.log}")
            time.sleep(0.25)
        self.cancel(prompt_id)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s (cancelled, so the next tests run)")

    def cancel(self, prompt_id: str) -> None:
        """Take ``prompt_id`` off the queue, or interrupt it if it is running, and wait until it stops."""
        try:
            self.post("/queue", {"delete": [prompt_id]})
            queue = self.get("/queue")
            if any(item[1] == prompt_id for item in queue.get("queue_running", [])):
                self.post("/interrupt", {"prompt_id": prompt_id})
            t0 = time.time()
            while time.time() - t0 < 120:
                queue = self.get("/queue")
                if not any(item[1] == prompt_id for item in queue.get("queue_running", []) + queue.get("queue_pending", [])):
                    return
                time.sleep(0.25)
        except (urllib.error.URLError, OSError):
            pass

    def rss_peak(self, during, interval: float = 0.05) -> tuple[object, int]:
        """Run ``during()`` and return its result and the server process's peak resident memory (bytes)
        meanwhile, sampled from /proc every ``interval`` seconds."""
        import threading

        status = Path(f"/proc/{self.proc.pid}/status")
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                stop.wait(interval)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            result = during()
        finally:
            stop.set()
            t.join()
        return result, peak[0]

    def alive(self) -> bool:
        try:
            return "system" in self.get("/system_stats", timeout=10)
        except (urllib.error.URLError, OSError):
            return False


def copies_in_tree(root: Path) -> list[Path]:
    """Entries of the ComfyUI tree's own custom_nodes/ that are this repository (a link made by
    ``host.sh start``, or a clone): ComfyUI loads them too, next to the copy the tests link in."""
    folder = root / "custom_nodes"
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and p.resolve() == REPO.resolve()]


def start_comfy(work: Path, links: list[str], extra_args: list[str] = (), *, reuse: bool = False) -> Comfy:
    """Start a headless ComfyUI whose extra custom_nodes folder holds this repository under each name
    in ``links`` (two names = two copies of the pack), with its own folders under ``work`` (``reuse``: those of
    a server started there before, e.g. one that was killed, output folder and all)."""
    root, py = comfy_paths()
    nodes_dir = work / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=reuse)
    for name in links:
        if not (reuse and (nodes_dir / name).is_symlink()):
            (nodes_dir / name).symlink_to(REPO)
    dirs = {k: work / k for k in ("input", "output", "temp", "user", "models")}
    for d in dirs.values():
        d.mkdir(exist_ok=reuse)
    for sub in ("letstalk", "vae", "audio_encoders", "memo"):
        (dirs["models"] / sub).mkdir(exist_ok=reuse)
    yaml = work / "extra_paths.yaml"
    yaml.write_text(f"letstalk_tests:\n  base_path: {work}\n  custom_nodes: custom_nodes\n"
                    f"  letstalk: models/letstalk\n  vae: models/vae\n  audio_encoders: models/audio_encoders\n"
                    f"  memo: models/memo\n")
    port = free_port()
    log = work / "comfyui.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [py, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--extra-model-paths-config", str(yaml), "--input-directory", str(dirs["input"]),
           "--output-directory", str(dirs["output"]), "--temp-directory", str(dirs["temp"]),
           "--user-directory", str(dirs["user"]), "--preview-method", "auto", *extra_args]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=root, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Comfy(f"http://127.0.0.1:{port}", dirs, proc, log)
    t0 = time.time()
    while not server.alive():
        if proc.poll() is not None or time.time() - t0 > 180:
            proc.kill()
            pytest.fail(f"ComfyUI did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    text = log.read_text()
    if "IMPORT FAILED" in text and any(n in text.split("IMPORT FAILED")[-1][:300] for n in links):
        proc.kill()
        pytest.fail(f"the pack failed to import:\n{text[-4000:]}")
    for f in ASSETS.iterdir():
        server.upload(f)
    return server


def stop_comfy(server: Comfy) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> Comfy:
    root, _ = comfy_paths()
    in_tree = copies_in_tree(root)
    if in_tree:  # the tree loads the pack already: a second copy here would test two copies, not one
        print(f"\nnote: {in_tree[0]} is this repository; the host tests use that copy instead of linking another")
    server = start_comfy(tmp_path_factory.mktemp("comfyhost"), [] if in_tree else [PACK_NAME])
    server.pack_name = in_tree[0].name if in_tree else PACK_NAME
    yield server
    stop_comfy(server)
    if os.environ.get("LETSTALK_KEEP_HOST_LOG"):
        shutil.copy(server.log, os.environ["LETSTALK_KEEP_HOST_LOG"])


@pytest.fixture(scope="session")
def object_info(comfy) -> dict:
    return comfy.get("/object_info", timeout=120)
