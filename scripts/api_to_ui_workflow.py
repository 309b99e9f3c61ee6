#!/usr/bin/env python3
"""Turn an API-format workflow into the UI format with the real ComfyUI frontend (load it with
``app.loadApiJson`` and save what ``app.graphToPrompt`` returns), so shipped workflows carry exactly
the widgets the frontend adds. Needs a running ComfyUI with the pack, Chromium and Playwright.

usage: api_to_ui_workflow.py API.json OUT.json [--base http://127.0.0.1:8188]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("api")
    ap.add_argument("out")
    ap.add_argument("--base", default="http://127.0.0.1:8188")
    a = ap.parse_args()
    from tests.web.browser import comfy_page

    api = json.loads(Path(a.api).read_text())
    with comfy_page(a.base) as page:
        ui = page.evaluate("""async (api) => {
            await window.app.loadApiJson(api, 'letstalk');
            const node = window.app.graph._nodes;
            window.app.graph.arrange?.();
            const p = await window.app.graphToPrompt();
            return p.workflow;
        }""", api)
    Path(a.out).write_text(json.dumps(ui, indent=1) + "\n")
    print(a.out, len(ui.get("nodes", [])), "nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
