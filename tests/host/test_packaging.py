"""Packaging as the registry and ComfyUI see it: ComfyUI's own pyproject parser reads the [tool.comfy]
table, and installing the pack with pip into the ComfyUI environment never touches its torch."""
from __future__ import annotations

import json
import re
import subprocess

from tests.host.conftest import REPO, comfy_paths


def test_comfy_config_parser_accepts_pyproject():
    root, py = comfy_paths()
    code = ("import json, sys; sys.path.insert(0, '.'); from comfy_config.config_parser import extract_node_configuration; "
            f"c = extract_node_configuration({str(REPO)!r}); print(json.dumps(c.model_dump(by_alias=True)))")
    out = subprocess.run([py, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    cfg = json.loads(out.strip().splitlines()[-1])
    tool = cfg["tool_comfy"]
    assert tool["PublisherId"] == "letstalk" and tool["DisplayName"] and tool["Icon"].startswith("https://")
    assert tool["web"] == "web"
    project = cfg["project"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["urls"]["Repository"].startswith("https://")
    assert not [d for d in project["dependencies"] if re.match(r"(torch|torchvision|torchaudio)\b", d)]


def test_requirements_never_name_torch():
    reqs = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert not [r for r in reqs if re.match(r"(torch|torchvision|torchaudio)\b", r)]


def test_pip_install_keeps_the_hosts_torch():
    _, py = comfy_paths()
    report = subprocess.run([py, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", str(REPO)],
                            capture_output=True, text=True, check=True).stdout
    names = [i["metadata"]["name"].lower() for i in json.loads(report)["install"]]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), names
    assert not [n for n in names if n.startswith("nvidia-")], names
