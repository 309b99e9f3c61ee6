"""The web extension in the real ComfyUI page, in headless Chromium: the Memory Bank Loop node shows
the plan (frames, clips, seconds) of the connected audio, and "clip k of N" with the memory frames
while the workflow runs. Also checks the host tests' UI→API converter against the frontend's own."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from tests.host.conftest import ASSETS, REPO
from tests.host.test_host import audio_samples
from tests.host.ui_to_api import ui_to_api
from tests.web.browser import comfy_page

SHOTS = Path(os.environ.get("LETSTALK_SCREENSHOTS", REPO / "outputs" / "web"))
LONG = REPO / "workflows" / "letstalk_long_video.json"


def panel_text(page, cls: str) -> str:
    return page.evaluate(f"""() => {{
        const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
        return n && n.letstalk ? n.letstalk.{cls}.textContent : '';
    }}""")


def test_converter_matches_the_frontend(comfy, object_info, browser_ready):
    with comfy_page(comfy.base) as page:
        for path in sorted((REPO / "workflows").glob("*.json")):
            ui = json.loads(path.read_text())
            front = page.evaluate("""async (ui) => { await window.app.loadGraphData(ui);
                                      return (await window.app.graphToPrompt()).output; }""", ui)
            ours = ui_to_api(ui, object_info)
            strip = lambda api: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
            assert strip(ours) == strip(front), path.stem


def test_plan_and_progress_display(comfy, browser_ready):
    samples, rate = audio_samples(ASSETS / "letstalk_demo_speech.flac")
    frames = math.ceil(samples * 25 / rate)
    clips = 1 + math.ceil((frames - 16) / 12)  # the workflow's loop: clips of 16 sharing 4 frames
    SHOTS.mkdir(parents=True, exist_ok=True)
    with comfy_page(comfy.base) as page:
        page.evaluate("async (ui) => { await window.app.loadGraphData(ui); }", json.loads(LONG.read_text()))
        page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return n && n.letstalk && /frames/.test(n.letstalk.planEl.textContent); }""",
                               timeout=30000)
        plan = panel_text(page, "planEl")
        assert f"{frames} frames" in plan and f"{clips} clips of 16 sharing 4" in plan, plan
        assert f"{samples / rate:.2f} s at 25 fps" in plan, plan
        page.screenshot(path=str(SHOTS / "letstalk_plan.png"))
        # Run it (1 step per clip, a fresh seed) and watch the progress line.
        page.evaluate("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                 n.widgets.find(w => w.name === 'steps').value = 1;
                                 n.widgets.find(w => w.name === 'seed').value = 99; }""")
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return /clip ([2-9]|\\d\\d+) of/.test(n.letstalk.runEl.textContent); }""", timeout=300000)
        running = panel_text(page, "runEl")
        page.screenshot(path=str(SHOTS / "letstalk_progress.png"))
        m = re.match(r"clip (\d+) of (\d+)(?: · step 1/1)? · memory: frames (\d+)–(\d+)", running)
        assert m, running
        k, n, a, b = map(int, m.groups())
        assert n == clips and 2 <= k <= clips
        assert (a, b) == ((k - 1) * 12 - 1, (k - 1) * 12), running  # the 2 frames before clip k starts (1-based)
        page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return /^done/.test(n.letstalk.runEl.textContent); }""", timeout=600000)
        print(f"plan: {plan}\nwhile running: {running}\nscreenshots in {SHOTS}")
