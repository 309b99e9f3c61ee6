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


# Zoom the canvas to ``zoom`` around the loop node and measure its panel: every line of text must lie
# inside the panel's box (nothing spills over the preview image drawn below the widgets), and the panel
# inside the node.
FIT_JS = """async (zoom) => {
    const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
    const ds = window.app.canvas.ds;
    ds.scale = zoom;
    ds.offset[0] = -n.pos[0] + 120 / zoom;  // clear of the left sidebar
    ds.offset[1] = -n.pos[1] + 60 / zoom;
    window.app.canvas.setDirty(true, true);
    window.app.canvas.draw(true, true);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    await new Promise(r => setTimeout(r, 300));
    const box = n.letstalk.el.getBoundingClientRect();
    const lines = [n.letstalk.planEl, n.letstalk.runEl].map(e => e.getBoundingClientRect());
    const bottom = Math.max(...lines.map(r => r.bottom));
    const nodeBottom = (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale
        + window.app.canvas.canvas.getBoundingClientRect().top;
    return {fits: bottom <= box.bottom + 1 && n.letstalk.el.scrollHeight <= n.letstalk.el.clientHeight + 1,
            inside: box.bottom <= nodeBottom + 2, box: [box.top, box.bottom], text_bottom: bottom,
            node_bottom: nodeBottom};
}"""


def test_extension_registers_once_and_clamps_overlap(comfy, browser_ready):
    """web/ is served twice when the pack's folder name differs from its project name (here 'letstalk' vs
    'letstalk-talking-portrait'); the extension must register once. The overlap widget's range is the
    connected model's maximum ((16 - 1) // 2 = 7 for the demo model)."""
    with comfy_page(comfy.base) as page:
        messages = []
        page.on("console", lambda m: messages.append(m.text))
        page.reload(wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes !== undefined",
                               timeout=60000)
        page.wait_for_timeout(1500)
        count = page.evaluate("() => (window.app.extensions || []).filter(e => e.name === 'letstalk.memoryBankLoop').length")
        assert count == 1, count
        assert not [m for m in messages if "already registered" in m], messages
        page.evaluate("async (ui) => { await window.app.loadGraphData(ui); }", json.loads(LONG.read_text()))
        page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return n && n.widgets.find(w => w.name === 'overlap').options.max === 7; }""",
                               timeout=30000)


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
        # ComfyUI's queue "Total" counts finished nodes: the model loader (done) must count while the loop runs
        total = page.evaluate("() => (document.body.innerText.match(/Total:\\s*(\\d+)\\s*%/) || [])[1]")
        assert total is not None and int(total) > 0, total
        for zoom in (1.0, 1.6):  # mid-run, the text sits in its own box at both zooms
            fit = page.evaluate(FIT_JS, zoom)
            page.screenshot(path=str(SHOTS / f"letstalk_progress_zoom{int(zoom * 100)}.png"))
            assert fit["inside"] and fit["fits"], (zoom, fit)
        m = re.match(r"clip (\d+) of (\d+)(?: · step 1/1)? · memory: frames (\d+)–(\d+)", running)
        assert m, running
        k, n, a, b = map(int, m.groups())
        assert n == clips and 2 <= k <= clips
        assert (a, b) == ((k - 1) * 12 - 1, (k - 1) * 12), running  # the 2 frames before clip k starts (1-based)
        page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return /^done/.test(n.letstalk.runEl.textContent); }""", timeout=600000)
        print(f"plan: {plan}\nwhile running: {running}\nscreenshots in {SHOTS}")


def test_the_plan_of_a_conversation_loop_is_that_of_the_longest_track(comfy, browser_ready):
    """Loops fed by Conversation Audio show the plan for its longest track (the others are padded to it)."""
    samples = max(audio_samples(ASSETS / f"letstalk_conversation_{k}.flac")[0] for k in "ab")
    rate = audio_samples(ASSETS / "letstalk_conversation_b.flac")[1]
    frames = math.ceil(samples * 25 / rate)
    with comfy_page(comfy.base) as page:
        page.evaluate("async (ui) => { await window.app.loadGraphData(ui); }",
                      json.loads((REPO / "workflows" / "conversation.json").read_text()))
        page.wait_for_function("""() => { const ns = window.app.graph._nodes.filter(n => n.type === 'LetsTalkMemoryBankLoop');
                                   return ns.length === 2 && ns.every(n => n.letstalk && /frames/.test(n.letstalk.planEl.textContent)); }""",
                               timeout=30000)
        plans = page.evaluate("""() => window.app.graph._nodes.filter(n => n.type === 'LetsTalkMemoryBankLoop')
                                   .map(n => n.letstalk.planEl.textContent)""")
        page.screenshot(path=str(SHOTS / "letstalk_conversation_plan.png"))
    assert len(plans) == 2 and all(f"{frames} frames" in p and f"{samples / rate:.2f} s at 25 fps" in p for p in plans), plans
