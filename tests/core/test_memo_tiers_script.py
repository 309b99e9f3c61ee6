"""benchmarks/memo_tiers.py (the GPU script) kept working on the CPU: a tiny MEMO installation, 64², one
step, two tiers, each in its own process; the table has a row per tier with its time, peak and plan."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("onnxruntime", reason="the tiny MEMO installation has face models (test extra)")


def test_tiers_script_runs_each_tier_and_prints_the_table(tmp_path, capsys):
    from tests.core.memo_tiny import make_tiny_memo

    make_tiny_memo(tmp_path)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memo_tiers

    assert memo_tiers.main(["--work", str(tmp_path), "--no-build", "--size", "64", "--steps", "1", "--clips", "2",
                            "--dtype", "fp32", "--device", "cpu", "--tiers", "24gb,12gb"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 24gb") or line.startswith("| 12gb")]
    assert len(rows) == 2 and not any("failed" in r for r in rows), out
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[3]) > 0  # s/frame, planned GiB
    assert (tmp_path / "frames_ours_24gb_64.safetensors").is_file()
