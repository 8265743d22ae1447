// memplan's planner page. Plain JavaScript, no dependencies, no build step.
// It uses the public REST API only: /openapi.json (the request's fields, choices, bounds and defaults),
// GET /v1/models, /v1/gpus, /v1/algorithms, POST /v1/estimate and POST /v1/plan — by relative URLs, so the
// page also works behind a proxy that serves the service under a path prefix.
// State: `state` holds the request fields the user set (differing from the schema's defaults); the URL's query
// string is that state, so a link reproduces the page.
"use strict";

const $ = (id) => document.getElementById(id);
const GiB = 1024 ** 3;
const SVG = "http://www.w3.org/2000/svg";

// The knobs shown up front; every other request field is under "More options" (built from the schema).
const MAIN = ["framework", "engine", "zero_stage", "offload", "gradient_checkpointing", "lora_rank", "tp",
  "micro_batch_size", "rollout_batch_size", "group_size", "prompt_len", "gen_len", "seq_len", "rollout_engine",
  "vllm_gpu_memory_utilization"];
const OWN_CONTROLS = new Set(["model", "algo", "gpus", "host_ram_bytes_per_node"]);
const CATEGORIES = ["parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other"];
const ROLES = ["actor", "critic", "reference", "reward", "runtime"];
// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), plus grey
const PALETTE = ["#0072B2", "#56B4E9", "#CC79A7", "#E69F00", "#009E73", "#F0E442", "#D55E00", "#882255", "#8C8C8C"];
const DEFAULTS = { model: "meta-llama/Llama-2-7b-hf", algo: "ppo", gpus: "8xA100-40GB" };

let fields = {};        // EstimateRequest properties from /openapi.json
let archFields = [];    // ArchConfig property names: the config.json keys an inline architecture takes
let gpuKinds = [];
let state = {};         // request fields set on the page
let stackBy = "category";
let seq = 0;            // the latest request; older answers are dropped
let lastReport = null;

// ---------- the schema ----------
function kindOf(prop) {
  const alts = prop.anyOf || [prop];
  const nullable = alts.some((a) => a.type === "null");
  const main = alts.find((a) => a.type !== "null") || {};
  return {
    type: main.type || (main.oneOf ? "model" : "string"), enum: main.enum, nullable,
    min: main.minimum ?? main.exclusiveMinimum, max: main.maximum, default: prop.default,
    description: prop.description || "", title: prop.title || "",
  };
}

function defaultOf(name) {
  if (name in DEFAULTS) return DEFAULTS[name];
  const f = fields[name];
  return f ? (f.default === undefined ? null : f.default) : null;
}

function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

function setField(name, value) {
  if (value === undefined || same(value, defaultOf(name)) || (value === null && fields[name]?.nullable)) {
    delete state[name];
  } else {
    state[name] = value;
  }
}

function get(name) { return name in state ? state[name] : defaultOf(name); }

// ---------- the request, the command line, the URL ----------
function request() {
  const req = { model: get("model"), algo: get("algo"), gpus: get("gpus") };
  for (const [k, v] of Object.entries(state)) if (!(k in req)) req[k] = v;
  return req;
}

function shellQuote(s) {
  s = String(s);
  return /^[A-Za-z0-9_./:=+,@%-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
}

function commandLine(req) {
  const parts = ["memplan", "estimate"];
  const notes = [];
  for (const [k, v] of Object.entries(req)) {
    if (v === null || v === undefined) continue;
    if (k === "model" && typeof v === "object") { parts.push("--model", "config.json"); notes.push("config.json: the file you pasted"); continue; }
    if (k === "host_ram_bytes_per_node") { parts.push("--host-ram-gib", String(+(v / GiB).toFixed(3))); continue; }
    if (k === "cuda_context_bytes") { notes.push(`cuda_context_bytes=${v} has no command-line option`); continue; }
    const flag = "--" + k.replace(/_/g, "-");
    if (k === "split_groups") { if (v.length) parts.push(flag, shellQuote(v.map((g) => g.join("+")).join(","))); continue; }
    if (typeof v === "boolean") parts.push(v ? flag : "--no-" + k.replace(/_/g, "-"));
    else parts.push(flag, shellQuote(v));
  }
  return parts.join(" ") + (notes.length ? "   # " + notes.join("; ") : "");
}

function toQuery() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) q.set(k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
  if (stackBy !== "category") q.set("stack", stackBy);
  const s = q.toString();
  return s ? "?" + s : "";
}

function fromQuery(search) {
  const q = new URLSearchParams(search);
  state = {};
  for (const [k, raw] of q) {
    if (k === "stack") { stackBy = raw === "role" ? "role" : "category"; continue; }
    let v = raw;
    const f = fields[k];
    if (raw.startsWith("{") || raw.startsWith("[")) { try { v = JSON.parse(raw); } catch { v = raw; } }
    else if (raw === "null") v = null;
    else if (raw === "true" || raw === "false") { if (!f || f.type === "boolean") v = raw === "true"; }
    else if (f && (f.type === "integer" || f.type === "number") && raw.trim() !== "" && isFinite(+raw)) v = +raw;
    setField(k, v);  // unknown names go to the API as they are: it names them in its answer
  }
}

// ---------- the form ----------
const WORDS = { lora: "LoRA", zero: "ZeRO", vllm: "vLLM", gpu: "GPU", tp: "TP", kv: "KV", mb: "MB", cuda: "CUDA", ram: "RAM" };
function labelText(name) {
  const t = name.split("_").map((w) => WORDS[w] || w).join(" ");
  return t[0].toUpperCase() + t.slice(1);
}

function shortHint(description) {
  const s = description.split(/(?<=[.;])\s|\s\(/)[0];
  return s.length > 110 ? s.slice(0, 107) + "…" : s;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

function control(name) {
  const f = fields[name];
  const id = "k-" + name;
  const wrap = el("div", { class: "field", id: "f-" + name });
  const label = el("label", { for: id }, labelText(name));
  if (f.description) label.append(" ", el("span", { class: "hint", text: shortHint(f.description) }));
  let input;
  const described = "err-" + name;
  if (f.enum) {
    input = el("select", { id, name, "aria-describedby": described });
    if (f.nullable) input.append(el("option", { value: "", text: "(default)" }));
    for (const v of f.enum) input.append(el("option", { value: String(v), text: String(v) }));
  } else if (f.type === "boolean" && !f.nullable) {
    input = el("input", { id, name, type: "checkbox", "aria-describedby": described });
    wrap.classList.add("check");
  } else if (f.type === "boolean") {
    input = el("select", { id, name, "aria-describedby": described });
    for (const [v, t] of [["", "(default)"], ["true", "true"], ["false", "false"]]) input.append(el("option", { value: v, text: t }));
  } else if (f.type === "integer" || f.type === "number") {
    input = el("input", { id, name, type: "number", inputmode: f.type === "integer" ? "numeric" : "decimal",
      min: f.min, max: f.max, step: f.type === "integer" ? "1" : "any", placeholder: f.nullable ? "default" : undefined,
      "aria-describedby": described });
  } else {
    input = el("input", { id, name, type: "text", spellcheck: "false", autocomplete: "off", "aria-describedby": described,
      placeholder: name === "split_groups" ? "actor+reference,critic+reward" : (f.nullable ? "default" : undefined),
      list: f.type === "model" ? "models-list" : undefined });
  }
  input.dataset.field = name;
  input.addEventListener("change", () => { readControl(input); schedule(); });
  if (wrap.classList.contains("check")) wrap.append(input, label); else wrap.append(label, input);
  wrap.append(el("p", { class: "error", id: described, "aria-live": "polite" }));
  return wrap;
}

function readControl(input) {
  const name = input.dataset.field;
  const f = fields[name];
  let v;
  if (input.type === "checkbox") v = input.checked;
  else if (input.value.trim() === "") v = f.nullable ? null : undefined;
  else if (name === "split_groups") v = input.value.split(",").filter((g) => g.trim()).map((g) => g.split("+").map((r) => r.trim()));
  else if (f.type === "boolean") v = input.value === "true";
  else if (f.enum) v = f.enum.find((e) => String(e) === input.value) ?? input.value;
  else if ((f.type === "integer" || f.type === "number")) v = isFinite(+input.value) ? +input.value : input.value;
  else v = input.value.trim();
  setField(name, v);
}

function writeControls() {
  for (const input of document.querySelectorAll("[data-field]")) {
    const name = input.dataset.field;
    const v = get(name);
    if (input.type === "checkbox") input.checked = !!v;
    else if (name === "split_groups") input.value = (v || []).map((g) => g.join("+")).join(",");
    else input.value = v === null || v === undefined ? "" : String(v);
  }
  const model = get("model");
  if (typeof model === "object" && model !== null) {
    $("arch").value = JSON.stringify(model, null, 2);
    $("arch-box").open = true;
    $("model").value = "";
  } else {
    $("model").value = model;
    $("arch").value = "";
  }
  const m = /^(?:(\d+)x)?(?:(\d+)x)?(.*)$/i.exec(get("gpus")) || [];
  const [nodes, count] = m[2] !== undefined ? [m[1], m[2]] : [1, m[1] ?? 1];
  $("gpu-nodes").value = nodes;
  $("gpu-count").value = count;
  const kind = m[3] || "";
  if (kind && ![...$("gpu-kind").options].some((o) => o.value === kind)) $("gpu-kind").append(el("option", { value: kind, text: kind }));
  $("gpu-kind").value = kind;
  const ram = get("host_ram_bytes_per_node");
  $("host_ram_gib").value = typeof ram === "number" ? String(+(ram / GiB).toFixed(3)) : String(ram ?? "");
  for (const r of document.querySelectorAll("input[name=stack]")) r.checked = r.value === stackBy;
}

function readGpus() {
  const nodes = $("gpu-nodes").value.trim() || "1";
  const count = $("gpu-count").value.trim() || "1";
  const kind = $("gpu-kind").value;
  setField("gpus", nodes === "1" ? `${count}x${kind}` : `${nodes}x${count}x${kind}`);
}

function readArch() {
  const text = $("arch").value.trim();
  $("err-arch").textContent = "";
  $("arch-info").textContent = "";
  if (!text) { setField("model", $("model").value.trim() || DEFAULTS.model); return true; }
  let config;
  try { config = JSON.parse(text); } catch (e) {
    $("err-arch").textContent = "Not JSON: " + e.message;
    $("arch").setAttribute("aria-invalid", "true");
    return false;
  }
  if (config && typeof config === "object" && !("hidden_size" in config) && config.text_config) config = config.text_config;
  if (!config || typeof config !== "object" || Array.isArray(config)) {
    $("err-arch").textContent = "A config.json is a JSON object";
    return false;
  }
  const arch = {};
  const dropped = [];
  for (const [k, v] of Object.entries(config)) {
    if (archFields.includes(k) && v !== null) arch[k] = v; else dropped.push(k);
  }
  // MoE configs name the expert count differently (Qwen-MoE, OLMoE); the API says whether it takes the type
  if (!("num_local_experts" in arch) && typeof config.num_experts === "number" && archFields.includes("num_local_experts")) arch.num_local_experts = config.num_experts;
  setField("model", arch);
  $("arch-info").textContent = `Sent: ${Object.keys(arch).join(", ")}` + (dropped.length ? ` · not used by memplan: ${dropped.length} other keys` : "");
  return true;
}

// ---------- talking to the API ----------
let timer = null;
function schedule(delay = 250) {
  clearTimeout(timer);
  timer = setTimeout(run, delay);
}

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  let data;
  try { data = await r.json(); } catch { data = { detail: `HTTP ${r.status}` }; }
  return { ok: r.ok, status: r.status, data };
}

function clearErrors() {
  for (const e of document.querySelectorAll(".error")) if (e.id !== "err-arch" || !$("arch").value.trim()) e.textContent = "";
  for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

function errorTarget(field) {
  if (field === "model" && typeof get("model") === "object") return ["err-arch", ["arch"]];
  if (field === "model") return ["err-model", ["model"]];
  if (field === "gpus") return ["err-gpus", ["gpu-nodes", "gpu-count", "gpu-kind"]];
  if (field === "host_ram_bytes_per_node") return ["err-host_ram_bytes_per_node", ["host_ram_gib"]];
  if ($("err-" + field) && $("k-" + field)) return ["err-" + field, ["k-" + field]];
  return ["err-general", []];
}

function showErrors(data, offset) {
  const detail = Array.isArray(data.detail) ? data.detail : [{ loc: [], msg: String(data.detail ?? "the service gave no answer") }];
  let first = null;
  for (const d of detail) {
    const loc = (d.loc || []).slice(offset);
    const field = String(loc[0] ?? "");
    const [target, inputs] = errorTarget(field);
    const where = target === "err-general" && field ? loc.join(".") + ": " : (loc.length > 1 ? loc.slice(1).join(".") + ": " : "");
    const msg = where + d.msg;
    const box = $(target);
    box.textContent = box.textContent ? box.textContent + " · " + msg : msg;
    for (const id of inputs) $(id).setAttribute("aria-invalid", "true");
    if (target !== "err-general" && field && !(MAIN.includes(field) || OWN_CONTROLS.has(field))) $("more").open = true;
    first = first || (inputs.length ? target : null);
  }
  return first;  // the first message beside a field
}

async function run() {
  clearTimeout(timer);
  const my = ++seq;
  clearErrors();
  if (!readArch()) { stale("Fix the config.json above"); return; }
  const req = request();
  share(req);
  history.replaceState(null, "", location.pathname + toQuery());
  const res = await post("v1/estimate", req);
  if (my !== seq) return;
  if (!res.ok) {
    const first = showErrors(res.data, 1);
    if (first) $(first).scrollIntoView({ block: "nearest" });
    stale("No estimate: the service refused the input — see the message beside the field");
    return;
  }
  render(res.data);
  planFor(req, my);
}

function stale(message) {
  $("results").classList.add("stale");
  const v = $("verdict");
  v.className = "verdict error-verdict";
  v.textContent = message;
  $("plan").replaceChildren();
  $("plan-status").textContent = "";
}

// ---------- rendering ----------
function gib(bytes) { return (bytes / GiB).toFixed(2) + " GiB"; }

function verdictOf(report) {
  const v = typeof report.verdict === "string" ? report.verdict.toUpperCase().replace(/_/g, " ") : null;
  if (v) return v;
  return report.fits ? "FITS" : "DOES NOT FIT";
}

function render(report) {
  lastReport = report;
  $("results").classList.remove("stale");
  const verdict = verdictOf(report);
  const v = $("verdict");
  v.className = "verdict " + (verdict === "FITS" ? "fits" : verdict === "TIGHT" ? "tight" : "nofit");
  const head = el("p", { class: "word" }, el("strong", { text: verdict }));
  const peak = el("p", { class: "numbers" },
    `Peak ${gib(report.peak_bytes_per_gpu)} per GPU (${report.peak_phase.replace(/_/g, " ")}) of ${gib(report.capacity_bytes)} on ` +
    `${report.num_gpus} × ${report.gpu} · headroom ${gib(report.headroom_bytes)}`);
  v.replaceChildren(head, peak);
  if (Array.isArray(report.peak_band_bytes)) {
    const [lo, hi] = report.peak_band_bytes;
    v.append(el("p", { class: "numbers band", text: `memplan's error band: the real peak may lie between ${gib(lo)} and ${gib(hi)}` }));
  }
  if (report.reasons?.length) v.append(el("ul", {}, ...report.reasons.map((r) => el("li", { text: r }))));
  renderChart(report);
  renderHost(report);
  $("terms").replaceChildren(...report.deciding_terms.map((t) =>
    el("li", {}, el("span", { class: "swatch", "data-color": colorIndex(stackBy, stackBy === "category" ? t.category : t.role) }),
      el("strong", { text: `${t.role} · ${t.category}` }), ` ${gib(t.bytes)} — ${t.note}`)));
  paintSwatches($("terms"));
  $("notes").replaceChildren(...(report.notes || []).map((n) => el("li", { text: n })));
}

function colorIndex(by, key) {
  const list = by === "category" ? CATEGORIES : ROLES;
  const i = list.indexOf(key);
  return String(i < 0 ? PALETTE.length - 1 : i % PALETTE.length);
}

function paintSwatches(root) {
  for (const s of root.querySelectorAll(".swatch")) s.style.background = PALETTE[+s.dataset.color];
}

function phaseItems(report, phase) {
  const roles = phase.group ? phase.group.split("+").concat(["runtime"]) : null;
  const items = report.resident_items.filter((i) => !roles || roles.includes(i.role)).concat(phase.items);
  const sum = items.reduce((a, i) => a + i.bytes, 0);
  if (sum !== phase.total_bytes) items.push({ role: "runtime", category: "other", bytes: phase.total_bytes - sum, note: "not itemised" });
  return items;
}

function segments(items, by) {
  const order = by === "category" ? CATEGORIES : ROLES;
  const sums = new Map();
  for (const i of items) {
    const key = by === "category" ? i.category : i.role;
    if (!sums.has(key)) sums.set(key, { key, bytes: 0, parts: [] });
    const s = sums.get(key);
    s.bytes += i.bytes;
    s.parts.push(i);
  }
  const rank = (k) => (order.indexOf(k) < 0 ? 99 : order.indexOf(k));
  return [...sums.values()].filter((s) => s.bytes > 0).sort((a, b) => rank(a.key) - rank(b.key));
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderChart(report) {
  const W = 900, left = 190, right = 130, rowH = 38, barH = 24, top = 34;
  const phases = report.phases;
  const H = top + phases.length * rowH + 26;
  const maxBytes = Math.max(report.capacity_bytes, ...phases.map((p) => p.total_bytes),
    ...(report.phase_bands || []).map((b) => b.high_bytes)) * 1.04;
  const x = (b) => left + (b / maxBytes) * (W - left - right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", id: "chart-svg",
    "aria-label": `Per-GPU memory by phase, stacked by ${stackBy}; capacity ${gib(report.capacity_bytes)}. ` +
      phases.map((p) => `${p.phase}: ${gib(p.total_bytes)}`).join("; ") });
  // grid and axis
  const step = niceStep(maxBytes / GiB / 6);
  for (let g = 0; g * step * GiB <= maxBytes; g++) {
    const gx = x(g * step * GiB);
    root.append(svg("line", { x1: gx, x2: gx, y1: top - 6, y2: H - 22, class: "grid" }));
    root.append(svg("text", { x: gx, y: H - 6, class: "tick", "text-anchor": "middle" }, `${+(g * step).toFixed(1)}`));
  }
  root.append(svg("text", { x: W - right + 8, y: H - 6, class: "tick" }, "GiB per GPU"));
  phases.forEach((p, r) => {
    const y = top + r * rowH;
    const g = svg("g", { class: "phase", "data-phase": p.phase });
    const name = p.phase.replace(/_/g, " ") + (p.group ? ` [${p.group}]` : "");
    g.append(svg("text", { x: left - 8, y: y + barH / 2 + 5, "text-anchor": "end", class: "phase-label" + (p.phase === report.peak_phase ? " peak" : "") }, name));
    let acc = 0;
    for (const s of segments(phaseItems(report, p), stackBy)) {
      const rect = svg("rect", { x: x(acc), y, width: Math.max(0.5, x(acc + s.bytes) - x(acc)), height: barH,
        fill: PALETTE[+colorIndex(stackBy, s.key)], class: "seg", "data-key": s.key });
      const parts = s.parts.filter((i) => i.bytes > 0).sort((a, b) => b.bytes - a.bytes).slice(0, 6)
        .map((i) => `${stackBy === "category" ? i.role : i.category}: ${gib(i.bytes)} (${i.note})`);
      rect.append(svg("title", {}, `${name} · ${s.key}: ${gib(s.bytes)}\n` + parts.join("\n")));
      g.append(rect);
      acc += s.bytes;
    }
    const band = (report.phase_bands || []).find((b, i) => b.phase === p.phase && (report.phase_bands.length !== phases.length || i === r));
    let labelAt = x(p.total_bytes);
    if (band) {
      const [bx1, bx2, my] = [x(band.low_bytes), x(band.high_bytes), y + barH / 2];
      const whisker = svg("g", { class: "band" });
      whisker.append(svg("line", { x1: bx1, x2: bx2, y1: my, y2: my }), svg("line", { x1: bx1, x2: bx1, y1: my - 7, y2: my + 7 }),
        svg("line", { x1: bx2, x2: bx2, y1: my - 7, y2: my + 7 }),
        svg("title", {}, `error band: ${gib(band.low_bytes)} to ${gib(band.high_bytes)} (${band.basis})`));
      g.append(whisker);
      labelAt = Math.max(labelAt, bx2);
    }
    g.append(svg("text", { x: labelAt + 6, y: y + barH / 2 + 5, class: "total" + (p.total_bytes > report.capacity_bytes ? " over" : "") },
      gib(p.total_bytes) + (p.phase === report.peak_phase ? "  ◀ peak" : "")));
    root.append(g);
  });
  const cx = x(report.capacity_bytes);
  root.append(svg("line", { x1: cx, x2: cx, y1: top - 14, y2: H - 22, class: "capacity", id: "capacity-line" }));
  root.append(svg("text", { x: cx, y: top - 18, class: "capacity-label", "text-anchor": cx > W - 200 ? "end" : "middle" },
    `capacity ${gib(report.capacity_bytes)} (${report.gpu})`));
  $("chart").replaceChildren(root);
  // legend and table
  const keys = stackBy === "category" ? CATEGORIES : ROLES;
  const used = new Set(phases.flatMap((p) => segments(phaseItems(report, p), stackBy).map((s) => s.key)));
  $("legend").replaceChildren(...keys.filter((k) => used.has(k)).map((k) =>
    el("span", { class: "key" }, el("span", { class: "swatch", "data-color": colorIndex(stackBy, k) }), k)));
  paintSwatches($("legend"));
  renderTable(report);
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

function renderTable(report) {
  const rows = new Map();
  report.phases.forEach((p, c) => {
    for (const i of phaseItems(report, p)) {
      const key = `${i.role} · ${i.category}`;
      if (!rows.has(key)) rows.set(key, new Array(report.phases.length).fill(0));
      rows.get(key)[c] += i.bytes;
    }
  });
  const head = el("tr", {}, el("th", { scope: "col", text: "role · category" }),
    ...report.phases.map((p) => el("th", { scope: "col", text: p.phase.replace(/_/g, " ") + (p.group ? ` [${p.group}]` : "") })));
  const body = [...rows.entries()].map(([k, vals]) => el("tr", {}, el("th", { scope: "row", text: k }),
    ...vals.map((b) => el("td", { text: b ? gib(b) : "—" }))));
  const total = el("tr", { class: "sum" }, el("th", { scope: "row", text: "total" }), ...report.phases.map((p) => el("td", { text: gib(p.total_bytes) })));
  $("table").replaceChildren(el("table", {}, el("caption", { text: "Bytes per GPU in each phase (GiB = 1024³ bytes)" }),
    el("thead", {}, head), el("tbody", {}, ...body, total)));
}

function renderHost(report) {
  const cap = report.request.host_ram_bytes_per_node;
  const used = report.host_bytes_per_node;
  const W = 900, left = 190, right = 200, H = 50;
  const max = Math.max(cap, used) * 1.04;
  const x = (b) => left + (b / max) * (W - left - right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", id: "host-svg",
    "aria-label": `Host RAM per node: ${gib(used)} of ${gib(cap)}` });
  root.append(svg("text", { x: left - 8, y: 27, "text-anchor": "end", class: "phase-label" }, "CPU offload"));
  root.append(svg("rect", { x: left, y: 12, width: x(cap) - left, height: 22, class: "host-bg" }));
  root.append(svg("rect", { x: left, y: 12, width: Math.max(used ? 1 : 0, x(used) - left), height: 22, class: report.host_fits ? "host-used" : "host-over" }));
  root.append(svg("line", { x1: x(cap), x2: x(cap), y1: 4, y2: 42, class: "capacity" }));
  root.append(svg("text", { x: Math.max(x(used), x(cap)) + 8, y: 27, class: "total" + (report.host_fits ? "" : " over") }, `${gib(used)} of ${gib(cap)}`));
  $("host").replaceChildren(root);
}

// ---------- the planner ----------
function changeText(changes) {
  return Object.entries(changes).map(([k, [a, b]]) => `${k} ${fmt(a)} → ${fmt(b)}`).join(", ");
}
function fmt(v) { return v === null ? "default" : typeof v === "object" ? JSON.stringify(v) : String(v); }

async function planFor(req, my) {
  $("plan-status").textContent = "Searching…";
  $("plan").replaceChildren();
  const res = await post("v1/plan", { request: req, max_results: 5 });
  if (my !== seq) return;
  if (!res.ok) {
    const d = res.data.detail;
    $("plan-status").textContent = "The planner cannot search this run: " + (Array.isArray(d) ? d.map((e) => e.msg).join("; ") : d);
    return;
  }
  const plan = res.data;
  const rows = plan.candidates.filter((c) => Object.keys(c.changes).length);
  if (!rows.length) {
    $("plan-status").textContent = plan.as_given.verdict === "fits" ? "Fits as given: nothing to change." : "No knob the planner may change makes it fit.";
    return;
  }
  const given = plan.as_given.verdict === "fits" ? "It fits; the planner's alternatives, fastest first:"
    : plan.as_given.verdict === "tight" ? "It is TIGHT (within memplan's error band of capacity); changes that fit, fastest first:"
    : "Fastest first; each fits:";
  $("plan-status").textContent = plan.fits_any ? given : "Nothing fits on these GPUs; the closest setting (try more GPUs):";
  $("plan").replaceChildren(...rows.map((c, i) => {
    const b = el("button", { type: "button", class: "apply", "data-index": String(i),
      "aria-label": `Apply: ${changeText(c.changes)}` }, "Apply");
    b.addEventListener("click", () => apply(c.changes));
    return el("li", {}, b, " ", el("span", { class: "change", text: changeText(c.changes) }),
      el("span", { class: "hint", text: ` — peak ${gib(c.peak_bytes_per_gpu)}, headroom ${gib(c.headroom_bytes)}` + (c.fits ? "" : " (does not fit)") }));
  }));
}

function apply(changes) {
  for (const [k, [, b]] of Object.entries(changes)) setField(k, b);
  writeControls();
  run().then(() => $("results").focus());
}

// ---------- sharing ----------
function share(req) {
  $("cli").value = commandLine(req);
  $("json").value = JSON.stringify(req, null, 2);
  $("link").value = location.origin + location.pathname + toQuery();
}

async function copy(id) {
  const text = $(id).value;
  try { await navigator.clipboard.writeText(text); $("copied").textContent = "Copied."; }
  catch { $(id).select(); $("copied").textContent = "Selected: press Ctrl+C to copy."; }
}

// ---------- start ----------
async function start() {
  const [api, models, gpus, algos] = await Promise.all(
    ["openapi.json", "v1/models", "v1/gpus", "v1/algorithms"].map((u) => fetch(u).then((r) => r.json())));
  const schemas = api.components.schemas;
  for (const [k, p] of Object.entries(schemas.EstimateRequest.properties)) fields[k] = kindOf(p);
  archFields = Object.keys(schemas.ArchConfig.properties);
  gpuKinds = gpus.map((g) => g.name);
  $("models-list").replaceChildren(...models.flatMap((m) => [m.name, ...m.aliases].map((n) =>
    el("option", { value: n, text: `${m.name} · ${(m.num_params / 1e9).toFixed(2)} B · ${m.model_type}` }))));
  $("gpu-kind").replaceChildren(...gpus.map((g) => el("option", { value: g.name, text: `${g.name} (${(g.memory_bytes / GiB).toFixed(1)} GiB)` })));
  // algorithm: a select, its description beside it
  const algo = $("f-algo");
  const sel = el("select", { id: "k-algo", "aria-describedby": "algo-info err-algo" }, ...algos.map((a) => el("option", { value: a.name, text: a.name.toUpperCase() })));
  sel.dataset.field = "algo";
  sel.addEventListener("change", () => { readControl(sel); showAlgo(algos); schedule(); });
  algo.append(el("label", { for: "k-algo", text: "Algorithm" }), sel, el("p", { class: "info", id: "algo-info" }), el("p", { class: "error", id: "err-algo", "aria-live": "polite" }));
  for (const name of MAIN) if (fields[name]) $("main-knobs").append(control(name));
  for (const name of Object.keys(fields)) if (!MAIN.includes(name) && !OWN_CONTROLS.has(name)) $("more-knobs").append(control(name));
  fromQuery(location.search);
  writeControls();
  showAlgo(algos);
  showModel(models);
  // events
  $("model").addEventListener("change", () => { setField("model", $("model").value.trim() || DEFAULTS.model); showModel(models); schedule(); });
  $("arch").addEventListener("change", () => schedule());
  for (const id of ["gpu-nodes", "gpu-count", "gpu-kind"]) $(id).addEventListener("change", () => { readGpus(); schedule(); });
  $("host_ram_gib").addEventListener("change", () => {
    const t = $("host_ram_gib").value.trim();
    setField("host_ram_bytes_per_node", t === "" ? undefined : (isFinite(+t) ? Math.round(+t * GiB) : t));
    schedule();
  });
  for (const r of document.querySelectorAll("input[name=stack]")) r.addEventListener("change", () => {
    stackBy = r.value;
    history.replaceState(null, "", location.pathname + toQuery());
    share(request());
    if (lastReport) render(lastReport);
  });
  $("form").addEventListener("submit", (e) => { e.preventDefault(); readAll(); run(); });
  $("reset-btn").addEventListener("click", () => { state = {}; writeControls(); showModel(models); run(); });
  for (const b of document.querySelectorAll("[data-copy]")) b.addEventListener("click", () => copy(b.dataset.copy));
  window.addEventListener("popstate", () => { fromQuery(location.search); writeControls(); run(); });
  $("loading").remove();
  document.body.dataset.ready = "true";
  await run();
}

function readAll() {
  for (const input of document.querySelectorAll("[data-field]")) readControl(input);
  if (!$("arch").value.trim()) setField("model", $("model").value.trim() || DEFAULTS.model);
  readGpus();
}

function showAlgo(algos) {
  const a = algos.find((x) => x.name === get("algo"));
  $("algo-info").textContent = a ? `${a.description} Resident: ${a.resident_models.join(", ")}.` : "";
}

function showModel(models) {
  const name = get("model");
  const m = typeof name === "string" && models.find((x) => x.name === name || x.aliases.includes(name));
  $("model-info").textContent = m ? `${m.name}: ${(m.num_params / 1e9).toFixed(2)} B parameters, ${m.model_type}` : "";
}

start().catch((e) => {
  const p = $("loading") || $("err-general");
  p.textContent = "The page could not load the service's catalog: " + e.message;
});
