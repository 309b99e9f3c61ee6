// LetsTalk for ComfyUI: shows, on every "LetsTalk Memory Bank Loop" node, the plan of the run for the
// connected audio (frames, clips, seconds) before anything runs, and while it runs "clip k of N" with
// the memory frames that clip is conditioned on. The plan comes from GET /letstalk/plan (the pack's
// route: it reads the audio file and the checkpoint's config header); progress from the pack's
// "letstalk.progress" websocket events.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOOP = "LetsTalkMemoryBankLoop";
const EXTENSION = "letstalk.memoryBankLoop";
const POLL_MS = 1000;
const LINE_PX = 16; // 12 px monospace, line-height 16 px
const WIDGET_MARGIN = 10; // the frontend's DOM-widget margin (each side)

function upstream(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (!input || input.link == null) return null;
  const link = node.graph?.links?.[input.link] ?? app.graph.links?.[input.link];
  return link ? node.graph?.getNodeById?.(link.origin_id) ?? app.graph.getNodeById(link.origin_id) : null;
}

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

// The audio file(s) and checkpoint the loop will use, when they come straight from Load Audio (or through a
// Conversation Audio node: its tracks, padded to the longest) and the LetsTalk Model Loader (other sources:
// no plan until the run reports it).
function audioFiles(node) {
  const audioNode = upstream(node, "audio");
  if (audioNode?.type === "LetsTalkConversationAudio") {
    const files = ["audio_1", "audio_2", "audio_3", "audio_4"]
      .map((n) => widgetValue(upstream(audioNode, n), "audio")).filter((v) => v != null && v !== "");
    return files.length ? files.map(String) : null;
  }
  const audio = widgetValue(audioNode, "audio");
  return audio ? [String(audio)] : null;
}

function planKey(node) {
  const modelNode = upstream(node, "model");
  const files = audioFiles(node);
  const audio = files ? files.map((f) => `audio=${encodeURIComponent(f)}`).join("&") : null;
  const ckpt = widgetValue(modelNode, "ckpt_name") ?? "";
  const overlap = Number(widgetValue(node, "overlap") ?? 0);
  // LetsTalk MEMO Loader: MEMO's clips (16 frames, 16 past frames) at the loader's fps.
  const memoFps = widgetValue(modelNode, "memo_folder") != null ? Number(widgetValue(modelNode, "fps") ?? 30) : null;
  // ... and its memory plan (the loader's folder, size, weight dtype, tier and state dtype).
  const memo = memoFps ? ["memo_folder", "size", "weight_dtype", "memory_tier", "state_dtype"]
    .map((w) => `&${w}=${encodeURIComponent(widgetValue(modelNode, w) ?? "")}`).join("") : "";
  return audio ? { audio, ckpt: String(ckpt), overlap, memoFps, memo } : null;
}

function formatPlan(p) {
  return `${p.frames} frames · ${p.clips} clips of ${p.clip_frames}` + (p.overlap ? ` sharing ${p.overlap}` : "") +
    ` · ${p.seconds.toFixed(2)} s at ${p.fps} fps` +
    (p.memory_frames ? ` · memory ${p.memory_frames} frames` : "") +
    (p.memory_plan ? `\nGPU/RAM: ${p.memory_plan}` : "") +
    (p.warnings ?? []).map((w) => `\n⚠ ${w}`).join("");
}

// The panel's height: its text's own height once wrapped at the node's width, measured on an off-screen
// copy (the panel itself is scaled with the canvas and clipped to its box), so the text never spills
// over the preview image ComfyUI draws below the widgets.
const PANEL_CSS = `font: 12px/${LINE_PX}px monospace; padding: 4px 6px; white-space: pre-wrap;` +
  "overflow-wrap: anywhere; box-sizing: border-box;";
let measurer = null;

function panelHeight(state, node) {
  // The frontend asks at every layout: measure only when the text or the node's width changed.
  const width = Math.max(60, (node?.size?.[0] ?? 300) - 2 * WIDGET_MARGIN);
  const key = `${width}|${state.planEl.textContent}|${state.runEl.textContent}`;
  if (state.heightKey === key) return state.height;
  if (!measurer) {
    measurer = document.createElement("div");
    measurer.style.cssText = PANEL_CSS + "position: absolute; visibility: hidden; left: -10000px; top: 0;";
    document.body.append(measurer);
  }
  measurer.style.width = `${width}px`;
  measurer.textContent = [state.planEl.textContent, state.runEl.textContent].filter(Boolean).join("\n");
  // The frontend draws a DOM widget its computed height minus a margin above and below.
  state.heightKey = key;
  state.height = Math.max(measurer.offsetHeight, 2 * LINE_PX + 8) + 2 * WIDGET_MARGIN + 2;
  return state.height;
}

// Grow the node when the panel needs more room (never shrink what the user sized).
function fitNode(node) {
  const state = node.letstalk;
  if (!state) return;
  const need = node.computeSize?.();
  if (need && node.size && need[1] > node.size[1]) node.setSize([node.size[0], need[1]]);
  node.arrange?.(); // lay the widgets out again now: the panel's height changed with its text
  node.setDirtyCanvas?.(true, true);
}

function setText(node, which, text) {
  const state = ensurePanel(node);
  if (state[which].textContent === text) return;
  state[which].textContent = text;
  fitNode(node);
}

function ensurePanel(node) {
  if (node.letstalk) return node.letstalk;
  const el = document.createElement("div");
  el.className = "letstalk-panel";
  el.style.cssText = PANEL_CSS + "color: var(--input-text, #ddd); overflow: hidden;" +
    "background: rgba(0,0,0,0.25); border-radius: 4px;";
  const planEl = document.createElement("div");
  planEl.className = "letstalk-plan";
  planEl.textContent = "plan: connect Load Audio";
  const runEl = document.createElement("div");
  runEl.className = "letstalk-run";
  el.append(planEl, runEl);
  el.dataset.nodeId = String(node.id);
  const state = { el, planEl, runEl, key: "", plan: null, run: null };
  node.letstalk = state;
  if (node.addDOMWidget) {
    node.addDOMWidget("letstalk_plan", "letstalk-plan", el, {
      serialize: false,
      getMinHeight: () => panelHeight(state, node),
      getMaxHeight: () => panelHeight(state, node),
    });
  }
  return state;
}

async function refreshPlan(node) {
  const state = ensurePanel(node);
  const key = planKey(node);
  const k = key ? `${key.audio}|${key.ckpt}|${key.overlap}|${key.memoFps}|${key.memo}` : "";
  if (k === state.key) return;
  state.key = k;
  if (!key) {
    state.plan = null;
    setText(node, "planEl", "plan: connect Load Audio");
    return;
  }
  setText(node, "planEl", "plan: reading audio…");
  try {
    const res = await api.fetchApi(`/letstalk/plan?${key.audio}&ckpt=${encodeURIComponent(key.ckpt)}` +
      `&overlap=${encodeURIComponent(key.overlap)}` + (key.memoFps ? `&memo_fps=${encodeURIComponent(key.memoFps)}${key.memo}` : ""));
    const body = await res.json();
    if (state.key !== k) return; // changed while we waited
    if (!res.ok) {
      state.plan = null;
      setText(node, "planEl", `plan: ${body.error ?? res.statusText}`);
      return;
    }
    state.plan = body;
    clampOverlap(node, body.max_overlap);
    setText(node, "planEl", `plan: ${formatPlan(body)}`);
  } catch (e) {
    setText(node, "planEl", `plan: unavailable (${e})`);
  }
}

// The overlap widget's range is what the connected model allows, (clip_frames - 1) // 2 (the server
// refuses more with a clear error where the model is not known here).
function clampOverlap(node, max) {
  const w = node.widgets?.find((x) => x.name === "overlap");
  if (!w || !Number.isFinite(max)) return;
  w.options = { ...(w.options ?? {}), max };
  if (w.value > max) w.value = max;
}

function loopNodes() {
  return (app.graph?._nodes ?? []).filter((n) => n.type === LOOP || n.comfyClass === LOOP);
}

function onProgress(event) {
  const d = event.detail ?? {};
  const id = String(d.node ?? "").split(":").pop();
  const node = app.graph?.getNodeById?.(Number(id));
  if (!node || !(node.type === LOOP || node.comfyClass === LOOP)) return;
  const state = ensurePanel(node);
  state.run = d;
  if (d.state === "done") {
    setText(node, "runEl", state.plan ? `done: ${state.plan.clips} clips` : "done");
  } else {
    const step = d.steps ? ` · step ${d.step}/${d.steps}` : "";
    setText(node, "runEl", `clip ${d.clip} of ${d.clips}${step} · memory: ${d.memory}`);
  }
}

// ComfyUI can serve web/ twice (from [tool.comfy] web and from WEB_DIRECTORY when the folder name differs
// from the project name): the second copy of this module must not register again.
const alreadyRegistered = window.__letstalkExtensionLoaded ||
  (app.extensions ?? []).some((e) => e?.name === EXTENSION);
window.__letstalkExtensionLoaded = true;

if (!alreadyRegistered) app.registerExtension({
  name: EXTENSION,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOOP) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      ensurePanel(this);
      return r;
    };
    const changed = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = changed?.apply(this, arguments);
      refreshPlan(this);
      return r;
    };
  },
  async setup() {
    api.addEventListener("letstalk.progress", onProgress);
    // Upstream widgets (the chosen audio file or checkpoint) can change at any time: re-check cheaply.
    setInterval(() => loopNodes().forEach((n) => refreshPlan(n)), POLL_MS);
  },
});
