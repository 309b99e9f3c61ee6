"""The layout as built (README, "What is implemented"): the layers of ``letstalk_core`` held by import-linter
(``[tool.importlinter]`` in pyproject.toml), the two families apart, the loop family-agnostic, and ``nodes/``
reaching the core only through its small public surface, with no math of its own."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "letstalk_core"

# What nodes/ may import from the core: package roots with an ``__all__`` and the loop's own modules.
NODE_SURFACE = {
    "letstalk_core.family", "letstalk_core.families.letstalk", "letstalk_core.families.memo",
    "letstalk_core.loop", "letstalk_core.resume", "letstalk_core.runtime", "letstalk_core.devices",
    "letstalk_core.compose", "letstalk_core.audio", "letstalk_core.autoencoder", "letstalk_core.diffusion",
    "letstalk_core.face", "letstalk_core.io", "letstalk_core.memory",
}
NO_MATH = {"math", "torch.nn", "torch.nn.functional", "torch.fft", "einops"}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the ``letstalk_core`` found under ``root``, with ``root``'s pyproject contracts."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved against ``package``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module or "")
    return out


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize("where, line, names", [
    ("layers/attention.py", "from ..loop import ClipPlan", "letstalk_core.layers is not allowed to import letstalk_core.loop"),
    ("loop.py", "from .families.memo import MemoConfig", "letstalk_core.loop is not allowed to import letstalk_core.families"),
    ("families/memo/config.py", "from ..letstalk.config import LetsTalkConfig",
     "letstalk_core.families.memo.config -> letstalk_core.families.letstalk.config"),
    ("families/memo/config.py", "from .generator import MemoConfig", "No cycles are allowed in letstalk_core.families.memo"),
])
def test_an_upward_import_a_sideways_one_or_a_circle_fails_with_its_name(tmp_path, where, line, names):
    """The contracts are not vacuous: a copy of the package with one bad import breaks them, and the message
    names the layers (or the package with the circle) and the offending module."""
    shutil.copytree(CORE, tmp_path / "letstalk_core", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "letstalk_core" / where
    target.write_text(target.read_text() + f"\n{line}  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert names in result.stdout, result.stdout
    assert "BROKEN" in result.stdout


def test_the_loop_imports_no_family_and_the_families_not_each_other():
    """Checked on the real imports (function-level ones included), independently of import-linter."""
    loop = imports_of(CORE / "loop.py", "letstalk_core") | imports_of(CORE / "resume.py", "letstalk_core")
    assert not {m for m in loop if m.startswith(("letstalk_core.families", "letstalk_core.family"))}, loop
    for me, other in (("letstalk", "memo"), ("memo", "letstalk")):
        for path in (CORE / "families" / me).rglob("*.py"):
            package = f"letstalk_core.families.{me}"
            bad = {m for m in imports_of(path, package) if m.startswith(f"letstalk_core.families.{other}")}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_nodes_reach_the_core_only_through_its_public_surface_and_do_no_math():
    reached = {}
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("letstalk_core"):
                reached.setdefault(node.module, set()).add(path.name)
                module = __import__(node.module, fromlist=["_"])
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{path.name}: {node.module} has no {missing}"
        imported = imports_of(path, "nodes")
        assert not imported & NO_MATH, f"{path.name} imports {imported & NO_MATH}: math belongs in letstalk_core"
    outside = {m: sorted(files) for m, files in reached.items() if m not in NODE_SURFACE}
    assert not outside, f"nodes/ reaches past the core's public surface: {outside}"
    assert set(reached) <= NODE_SURFACE and len(reached) >= 10  # the surface is in use, not an empty check


@pytest.mark.parametrize("package", sorted(m for m in NODE_SURFACE if (CORE / m.split(".", 1)[1].replace(".", "/")).is_dir()))
def test_every_package_on_the_surface_lists_its_names(package):
    module = __import__(package, fromlist=["_"])
    assert module.__all__, package
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_importing_a_family_does_no_work():
    """The family packages load their modules when a name is first used (ComfyUI lists the nodes at start-up)."""
    code = ("import sys, letstalk_core.families.memo as m, letstalk_core.families.letstalk as l; "
            "print(sorted(k for k in sys.modules if k.startswith('letstalk_core.families.') and k.count('.') > 2))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
