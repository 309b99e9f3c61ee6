// LetsTalk for ComfyUI: shows, on every "LetsTalk Memory Bank Loop" node, the plan of the run for the
// connected audio (frames, clips, seconds) before anything runs, and while it runs "clip k of N" with
// the memory frames that clip is conditioned on. The plan comes from GET /letstalk/plan (the pack's
// route: it reads the audio file and the checkpoint's config header); progress from the pack's
// "letstalk.progress" websocket events.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOOP = "LetsTalkMemoryBankLoop";
const POLL_MS = 1000;

function upstream(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (!input || input.link == null) return null;
  const link = node.graph?.links?.[input.link] ?? app.graph.links?.[input.link];
  return link ? node.graph?.getNodeById?.(link.origin_id) ?? app.graph.getNodeById(link.origin_id) : null;
}

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

// The audio file and checkpoint the loop will use, when they come straight from Load Audio and the
// LetsTalk Model Loader (other sources: no plan until the run reports it).
function planKey(node) {
  const audioNode = upstream(node, "audio");
  const modelNode = upstream(node, "model");
  const audio = widgetValue(audioNode, "audio");
  const ckpt = widgetValue(modelNode, "ckpt_name") ?? "";
  const overlap = Number(widgetValue(node, "overlap") ?? 0);
  return audio ? { audio: String(audio), ckpt: String(ckpt), overlap } : null;
}

function formatPlan(p) {
  return `${p.frames} frames · ${p.clips} clips of ${p.clip_frames}` + (p.overlap ? ` sharing ${p.overlap}` : "") +
    ` · ${p.seconds.toFixed(2)} s at ${p.fps} fps` +
    (p.memory_frames ? ` · memory ${p.memory_frames} frames` : "");
}

function ensurePanel(node) {
  if (node.letstalk) return node.letstalk;
  const el = document.createElement("div");
  el.className = "letstalk-panel";
  el.style.cssText = "font: 12px monospace; color: var(--input-text, #ddd); padding: 4px 6px; white-space: pre-wrap;" +
    "background: rgba(0,0,0,0.25); border-radius: 4px; min-height: 2.6em;";
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
    node.addDOMWidget("letstalk_plan", "letstalk-plan", el, { serialize: false, getMinHeight: () => 44 });
  }
  return state;
}

async function refreshPlan(node) {
  const state = ensurePanel(node);
  const key = planKey(node);
  const k = key ? `${key.audio}|${key.ckpt}|${key.overlap}` : "";
  if (k === state.key) return;
  state.key = k;
  if (!key) {
    state.plan = null;
    state.planEl.textContent = "plan: connect Load Audio";
    return;
  }
  state.planEl.textContent = "plan: reading audio…";
  try {
    const res = await api.fetchApi(`/letstalk/plan?audio=${encodeURIComponent(key.audio)}&ckpt=${encodeURIComponent(key.ckpt)}` +
      `&overlap=${encodeURIComponent(key.overlap)}`);
    const body = await res.json();
    if (state.key !== k) return; // changed while we waited
    if (!res.ok) {
      state.plan = null;
      state.planEl.textContent = `plan: ${body.error ?? res.statusText}`;
      return;
    }
    state.plan = body;
    state.planEl.textContent = `plan: ${formatPlan(body)}`;
  } catch (e) {
    state.planEl.textContent = `plan: unavailable (${e})`;
  }
  node.setDirtyCanvas?.(true, true);
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
    state.runEl.textContent = state.plan ? `done: ${state.plan.clips} clips` : "done";
  } else {
    const step = d.steps ? ` · step ${d.step}/${d.steps}` : "";
    state.runEl.textContent = `clip ${d.clip} of ${d.clips}${step} · memory: ${d.memory}`;
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "letstalk.memoryBankLoop",
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
