"""The pack as the ComfyUI registry sees it: what ``comfy node validate`` (comfy-cli) checks, held here so it
stays true without comfy-cli in CI: ``[project]`` and ``[tool.comfy]`` fields, the version, the licence, the
classifiers the registry knows, and no ``exec``/``eval`` or several statements on one line in any Python file
(its ruff rules S102, S307, E702). The real host's own parser is exercised by tests/host/test_packaging.py."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python's standard library from 3.11")

ROOT = Path(__file__).resolve().parents[2]
# comfy_cli/registry/config_parser.py: validate_and_extract_os_classifiers / _accelerator_classifiers
REGISTRY_OS = ("Microsoft", "POSIX", "MacOS", "OS Independent")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}
SKIP_DIRS = {".venv", ".git", "__pycache__", "node_modules", ".import_linter_cache"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def python_files() -> list[Path]:
    """What ``ruff check .`` sees from the repository root."""
    return [p for p in sorted(ROOT.rglob("*.py")) if not SKIP_DIRS & set(p.relative_to(ROOT).parts)]


def test_project_fields(pyproject):
    project = pyproject["project"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", project["name"]), project["name"]
    assert project["description"].strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry needs a non-empty semantic version"
    import letstalk_core

    assert letstalk_core.__version__ == project["version"], "letstalk_core.__version__ and pyproject disagree"
    licence = project["license"]
    assert isinstance(licence, str) or ({"file", "text"} & set(licence)), \
        'license must be {file = "LICENSE"} or {text = "..."} (registry specification)'
    if isinstance(licence, dict) and "file" in licence:
        assert (ROOT / licence["file"]).is_file()
    for url in project["urls"].values():
        assert url.startswith("https://"), url
    assert project["urls"]["Repository"]


def test_classifiers_are_ones_the_registry_knows(pyproject):
    classifiers = pyproject["project"].get("classifiers", [])
    for c in classifiers:
        if c.startswith("Operating System :: "):
            assert c[len("Operating System :: "):].startswith(REGISTRY_OS), c
        if c.startswith("Environment ::"):
            assert c[len("Environment :: "):] in REGISTRY_ACCELERATORS, c
    assert any(c.startswith("Operating System :: ") for c in classifiers)


def test_tool_comfy(pyproject):
    comfy = pyproject["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,63}", comfy["PublisherId"]), comfy["PublisherId"]
    assert comfy["DisplayName"].strip()
    assert comfy["Icon"].startswith("https://")
    assert (ROOT / comfy["web"]).is_dir()
    assert re.fullmatch(r"(>=|<=|==|~=|>|<|!=)\s*\d+(\.\d+)*", comfy["requires-comfyui"]), comfy["requires-comfyui"]
    for folder in comfy.get("includes", []):
        assert (ROOT / folder).is_dir(), folder


def findings(path: Path) -> list[str]:
    """ruff S102 (exec), S307 (eval) and E702 (several statements on one line) in one file."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
            found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                found += [f"{path.name}:{b.lineno}: two statements on one line"
                          for a, b in zip(body, body[1:]) if b.lineno == a.end_lineno]
    return found


def test_no_exec_eval_or_statements_sharing_a_line():
    """As ``comfy node validate`` checks with ruff, over every Python file of the repository."""
    files = python_files()
    found = [f"{p.relative_to(ROOT).parent}/{f}" for p in files for f in findings(p)]
    assert not found, "\n".join(found)
    assert len(files) > 100  # the walk saw the repository


def test_the_check_finds_what_it_looks_for(tmp_path):
    """Not vacuous: a file with ``eval``, ``exec`` and ``a = 1; b = 2`` is reported three times."""
    bad = tmp_path / "bad.py"
    bad.write_text("x = eval('1')\nexec('y = 2')\nif x:\n    a = 1; b = 2\n")
    assert sorted(f.split(": ", 1)[1] for f in findings(bad)) == ["eval()", "exec()", "two statements on one line"]
