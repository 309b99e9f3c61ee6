"""Convert a UI-format ComfyUI workflow (what the frontend saves and what ships in workflows/) into the
API format POST /prompt takes, using the server's /object_info for the widget order.

Rules (ComfyUI frontend 1.49): ``widgets_values`` follow the node's inputs in definition order
(required, then optional), one value per widget input, whether or not a link replaces it; an INT
with ``control_after_generate`` is followed by its control value; an image/audio upload combo is
followed by the frontend's own upload (and, for audio, player) widgets; a V3 DynamicCombo is
followed by the widgets of the chosen option, recursively, sent with dotted names. Links become
``[source_id, slot]``. Muted/bypassed nodes are dropped; links through Reroute nodes are followed.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"}


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_after(spec) -> int:
    """Values the frontend stores after this widget's own value."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("control_after_generate"):
        return 1
    if opts.get("image_upload"):
        return 1
    if opts.get("audio_upload"):
        return 2
    if opts.get("video_upload"):
        return 1
    return 0


def _consume(name: str, spec, values: list, pos: int, out: dict) -> int:
    """Assign the widget ``name`` (and a DynamicCombo's nested widgets) from ``values[pos:]``."""
    if pos >= len(values):
        return pos
    out[name] = values[pos]
    pos += 1 + _extra_after(spec)
    if spec[0] == "COMFY_DYNAMICCOMBO_V3":
        chosen = next((o for o in spec[1]["options"] if o["key"] == out[name]), None)
        if chosen is not None:
            sub = {**chosen["inputs"].get("required", {}), **chosen["inputs"].get("optional", {})}
            for sub_name, sub_spec in sub.items():
                if _is_widget(sub_spec):
                    pos = _consume(f"{name}.{sub_name}", sub_spec, values, pos, out)
    return pos


def ui_to_api(ui: dict, object_info: dict) -> dict:
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {}
    for link in ui["links"]:
        lid, src, slot, dst, dslot = link[:5]
        links[lid] = (src, slot)

    def resolve(lid):
        src, slot = links[lid]
        node = nodes[src]
        while node["type"] == "Reroute":  # follow reroutes to the real source
            src, slot = links[node["inputs"][0]["link"]]
            node = nodes[src]
        return [str(src), slot]

    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in ("Reroute", "Note", "MarkdownNote"):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not registered on the server")
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        inputs: dict = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some frontends save a name → value map
            inputs.update(values)
        else:
            pos = 0
            for name, spec in specs.items():
                if _is_widget(spec):
                    pos = _consume(name, spec, values, pos, inputs)
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                inputs[inp["name"]] = resolve(inp["link"])
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title") or node["type"]}}
    return api
