// The page at "/": a thin client of the service's public API (README.md's endpoint table), in plain JavaScript
// with no build step and nothing loaded from elsewhere. Server data is put in the page as text (textContent),
// never as HTML.
"use strict";

const KEY_NAME = "backbone-rank-api-key";
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "",
  upload: null, // the uploaded dataset's summary (POST /v1/datasets)
  ranking: null, // the ranking job shown
  follow: null, // AbortController of the event stream followed
  finetuneFollow: null,
  uploadNames: new Map(), // upload id -> the name it was uploaded under
};

// ------------------------------------------------------------------------------------------------ API calls

class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || `http_${status}`;
  }
}

function withKey(headers) {
  const h = new Headers(headers || {});
  if (state.key) h.set("X-API-Key", state.key);
  return h;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (!resp.ok) {
    let body;
    try {
      body = await resp.json();
    } catch {
      body = { detail: resp.statusText };
    }
    const err = new ApiError(resp.status, body);
    if (resp.status === 401) showKeyPrompt(state.key ? "That key was not accepted." : "");
    throw err;
  }
  return resp;
}

const getJson = async (path) => (await api(path)).json();
const postJson = async (path, body) =>
  (await api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })).json();

function explain(err) {
  return err instanceof ApiError ? `${err.message} [${err.code}]` : `The service could not be reached (${err.message}).`;
}

// Server-sent events read with fetch(): EventSource cannot send the X-API-Key header.
async function followEvents(path, onEvent, signal) {
  const resp = await api(path, { headers: { Accept: "text/event-stream" }, signal });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// Follows a job's events until it ends, reconnecting when the stream drops; then returns the job as stored.
async function followJob(kind, id, onProgress, signal) {
  const base = `/v1/${kind}s/${id}`;
  for (let attempt = 0; ; attempt++) {
    let ended = false;
    try {
      await followEvents(`${base}/events`, (event, data) => {
        if (event === "progress") onProgress(data);
        else if (event === "end") ended = true;
      }, signal);
    } catch (err) {
      // A dropped connection, a busy service (503) or too many streams (429): read the job instead, retry later.
      if (signal.aborted || (err instanceof ApiError && ![429, 503].includes(err.status))) throw err;
    }
    const job = await getJson(base);
    if (ended || ["succeeded", "failed", "cancelled"].includes(job.state)) return job;
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
  }
}

// ------------------------------------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

const pct = (x) => `${Math.round(x * 100)} %`;

function accuracyWords(row) {
  const p = row.predicted_accuracy || {};
  if (p.finetune) {
    return `about ${pct(p.finetune.value)} (likely between ${pct(p.finetune.low)} and ${pct(p.finetune.high)})`;
  }
  if (p.linear_probe) {
    return `with a new last layer only: about ${pct(p.linear_probe.value)} (likely between ` +
      `${pct(p.linear_probe.low)} and ${pct(p.linear_probe.high)})`;
  }
  return "no estimate (this service has no calibration for it)";
}

function datasetWords(dataset) {
  if (!dataset) return "?";
  if (dataset.kind === "upload") {
    const name = state.uploadNames.get(dataset.name);
    return `uploaded ${name ? `“${name}”` : `images ${dataset.name.slice(0, 8)}`}`;
  }
  if (dataset.kind === "builtin") return `built-in ${dataset.name}`;
  return dataset.path || dataset.name || dataset.kind;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function setLink(a, href) {
  a.href = href;
}

// Links to key-protected pages and files: with a key, fetched with it and opened as a blob (a plain link cannot
// send a header).
document.addEventListener("click", async (event) => {
  const a = event.target.closest("a[data-auth]");
  if (!a || !state.key || !a.getAttribute("href")) return;
  event.preventDefault();
  const download = a.hasAttribute("download");
  const win = download ? null : window.open("", "_blank");
  try {
    const blob = await (await api(a.getAttribute("href"))).blob();
    const url = URL.createObjectURL(blob);
    if (download) {
      const tmp = el("a", { href: url, download: a.dataset.filename || "download" });
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
    } else if (win) {
      win.location.href = url;
    } else {
      window.location.href = url;
    }
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    if (win) win.close();
    alert(explain(err));
  }
});

// ------------------------------------------------------------------------------------------------ the API key

function showKeyPrompt(message) {
  $("main").hidden = true;
  $("loading").hidden = true;
  $("key-section").hidden = false;
  $("key-error").textContent = message || "";
  $("api-key").focus();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_NAME, state.key);
  if ($("key-remember").checked) localStorage.setItem(KEY_NAME, state.key);
  $("api-key").value = "";
  await start();
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  state.key = "";
  location.reload();
});

// ------------------------------------------------------------------------------------------------ the form

function radioValue(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

function showPanels() {
  const source = radioValue("source");
  for (const name of ["upload", "builtin", "server"]) $(`source-${name}`).hidden = name !== source;
  const candidates = radioValue("candidates");
  $("candidates-set").hidden = candidates !== "set";
  $("candidates-list").hidden = candidates !== "list";
  $("top-n-wrap").hidden = $("set-select").value !== "@top";
}

for (const input of document.querySelectorAll('input[name="source"], input[name="candidates"]')) {
  input.addEventListener("change", showPanels);
}

function selectedSet() {
  const set = $("set-select").value;
  return set === "@top" ? `@top:${Math.max(1, parseInt($("top-n").value, 10) || 10)}` : set;
}

let previewTimer = null;
function previewSet() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    const set = selectedSet();
    try {
      const listing = await getJson(`/v1/models?set=${encodeURIComponent(set)}&limit=2000`);
      const here = listing.models.filter((m) => m.available_offline).length;
      $("set-preview").textContent = `${listing.total} networks; ${here} have their weights on this server. ` +
        "The others are downloaded if the server may, or left out with the reason.";
    } catch (err) {
      $("set-preview").textContent = explain(err);
    }
  }, 250);
}
$("set-select").addEventListener("change", () => {
  showPanels();
  previewSet();
});
$("top-n").addEventListener("input", previewSet);

async function loadCatalog() {
  const [datasets, backbones] = await Promise.all([getJson("/v1/datasets/builtin"), getJson("/v1/backbones")]);
  const select = $("builtin-select");
  select.replaceChildren();
  for (const d of datasets.datasets) {
    if (d.role === "source") continue; // the zoo was trained on these: ranking on them says little
    select.append(el("option", { value: d.name, text: `${d.name} (${d.kind}, ${d.n_classes} classes)` }));
  }
  const checks = $("backbone-checks");
  checks.replaceChildren();
  const usable = backbones.backbones.filter((b) => b.available_offline);
  for (const [i, b] of usable.entries()) {
    checks.append(el("label", { class: "inline" },
      el("input", { type: "checkbox", id: `bb-${i}`, value: b.id, name: "backbone" }),
      b.description ? `${b.id} — ${b.description}` : b.id));
  }
  if (!usable.length) checks.append(el("p", { class: "hint", text: "None yet: name them below." }));
  previewSet();
}

// ---- upload

function setUploadStatus(...nodes) {
  $("upload-status").replaceChildren(...nodes);
}

function uploadWithProgress(blob, name) {
  // XMLHttpRequest, not fetch: it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/datasets${name ? `?name=${encodeURIComponent(name)}` : ""}`);
    if (state.key) xhr.setRequestHeader("X-API-Key", state.key);
    xhr.setRequestHeader("content-type", blob.type || "application/octet-stream");
    const bar = $("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    };
    xhr.onload = () => {
      let body;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { detail: xhr.statusText };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        if (xhr.status === 401) showKeyPrompt("That key was not accepted.");
        reject(new ApiError(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(new Error("network error"));
    xhr.send(blob);
  });
}

async function upload(blob, name) {
  state.upload = null;
  setUploadStatus(el("p", { text: `Uploading ${name || "the images"} (${(blob.size / 1e6).toFixed(1)} MB)…` }));
  try {
    const summary = await uploadWithProgress(blob, name);
    state.upload = summary;
    if (summary.name) state.uploadNames.set(summary.id, summary.name);
    const counts = summary.classes.map((c) => `${c} (${summary.class_counts[c]})`).join(", ");
    const nodes = [el("p", { class: "ok", text: `Ready: ${summary.n_images} images in ${summary.classes.length} ` +
      `classes: ${counts}.` })];
    const skipped = Object.entries(summary.skipped || {});
    if (skipped.length) {
      nodes.push(el("p", { class: "hint", text: "Left out: " + skipped.map(([why, n]) => `${n} (${why.replaceAll("_", " ")})`).join(", ") + "." }));
    }
    setUploadStatus(...nodes);
  } catch (err) {
    setUploadStatus(el("p", { class: "error", text: `The upload was refused: ${explain(err)}` }));
  } finally {
    $("upload-progress").hidden = true;
  }
}

// A zip archive ("stored", no compression: images are compressed already) built in the browser from the files
// of a folder, streamed from the files themselves; fixed timestamps, so the same folder gives the same archive
// (and the service keeps one copy).
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zipFiles(entries, onFile) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  const DOS_DATE = (0 << 9) | (1 << 5) | 1; // 1980-01-01
  for (const [i, { path, file }] of entries.entries()) {
    const name = encoder.encode(path);
    const crc = crc32(new Uint8Array(await file.arrayBuffer()));
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // names are UTF-8
    local.setUint16(12, DOS_DATE, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, file.size, true);
    local.setUint32(22, file.size, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, file);
    const header = new DataView(new ArrayBuffer(46));
    header.setUint32(0, 0x02014b50, true);
    header.setUint16(4, 20, true);
    header.setUint16(6, 20, true);
    header.setUint16(8, 0x0800, true);
    header.setUint16(14, DOS_DATE, true);
    header.setUint32(16, crc, true);
    header.setUint32(20, file.size, true);
    header.setUint32(24, file.size, true);
    header.setUint16(28, name.length, true);
    header.setUint32(42, offset, true);
    central.push(header, name);
    offset += 30 + name.length + file.size;
    onFile(i + 1, entries.length);
  }
  const centralSize = central.reduce((n, part) => n + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

async function uploadFolder(entries) {
  entries = entries.filter((e) => !e.path.split("/").some((part) => part.startsWith(".")));
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (!entries.length) {
    setUploadStatus(el("p", { class: "error", text: "That folder has no files." }));
    return;
  }
  const total = entries.reduce((n, e) => n + e.file.size, 0);
  if (entries.length > 65000 || total > 3.9e9) {
    setUploadStatus(el("p", { class: "error", text: "Too large to pack in the browser: make a .zip or .tar " +
      "archive of the folder and choose it instead." }));
    return;
  }
  const name = entries[0].path.split("/")[0];
  const status = el("p", { text: "Packing the folder…" });
  setUploadStatus(status);
  const blob = await zipFiles(entries, (done, n) => {
    if (done % 50 === 0 || done === n) status.textContent = `Packing the folder: ${done} of ${n} files…`;
  });
  await upload(blob, name);
}

$("folder-input").addEventListener("change", (event) => {
  const files = [...event.target.files];
  if (files.length) uploadFolder(files.map((file) => ({ path: file.webkitRelativePath || file.name, file })));
});

$("archive-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) upload(file, file.name);
});

// Drag and drop: an archive, or a folder read through the entries API.
function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ path: prefix + entry.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (let batch = await readEntries(reader); batch.length; batch = await readEntries(reader)) {
      for (const child of batch) await walk(child, `${prefix}${entry.name}/`, out);
    }
  }
}

const drop = $("drop-zone");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const items = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
  if (items.some((entry) => entry && entry.isDirectory)) {
    const out = [];
    for (const entry of items) if (entry) await walk(entry, "", out);
    await uploadFolder(out);
  } else if (event.dataTransfer.files.length) {
    const file = event.dataTransfer.files[0];
    await upload(file, file.name);
  }
});

// ---- submit a ranking

function rankingRequest() {
  const source = radioValue("source");
  let dataset;
  if (source === "upload") {
    if (!state.upload) throw new Error("Upload your images first (a folder or an archive).");
    dataset = state.upload.dataset;
  } else if (source === "builtin") {
    dataset = { kind: "builtin", name: $("builtin-select").value };
  } else {
    const path = $("server-path").value.trim();
    if (!path) throw new Error("Name the folder on the server.");
    dataset = { kind: "folder", path };
  }
  let backbones;
  if (radioValue("candidates") === "set") {
    backbones = [selectedSet()];
  } else {
    const checked = [...document.querySelectorAll('input[name="backbone"]:checked')].map((c) => c.value);
    const extra = $("extra-ids").value.split(/[\s,]+/).filter(Boolean);
    backbones = [...new Set([...checked, ...extra])];
    if (!backbones.length) throw new Error("Pick at least one network, or name one.");
  }
  const request = { dataset, backbones };
  const cap = parseInt($("max-per-class").value, 10);
  if (cap > 0) request.max_per_class = cap;
  if ($("p-best").checked) request.n_bootstrap = 50;
  return request;
}

$("rank-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("rank-error").textContent = "";
  let request;
  try {
    request = rankingRequest();
  } catch (err) {
    $("rank-error").textContent = err.message;
    return;
  }
  $("rank-button").disabled = true;
  try {
    const created = await postJson("/v1/rankings", request);
    showRanking(await getJson(created.url));
    loadJobs().catch(() => {});
  } catch (err) {
    $("rank-error").textContent = explain(err);
  } finally {
    $("rank-button").disabled = false;
  }
});

// ------------------------------------------------------------------------------------------------ a ranking

const STAGE_WORDS = {
  loading: "starting",
  download: "downloading its weights",
  extract: "reading the images",
  cached: "features taken from the cache",
  done: "images read",
  score: "scored",
};

function progressRows(backbones) {
  const list = $("backbone-progress");
  list.replaceChildren();
  const rows = new Map();
  for (const id of backbones) {
    const bar = el("progress", { max: 1, value: 0, "aria-label": `${id}: progress` });
    const words = el("span", { class: "stage", text: "waiting" });
    list.append(el("li", {}, el("span", { class: "name", text: id }), words, bar));
    rows.set(id, { bar, words });
  }
  return rows;
}

function describeRankingProgress(p, rows) {
  const total = p.backbones_total || rows.size || 1;
  const bar = $("job-progress");
  bar.max = total;
  bar.value = Math.min(total, p.backbones_done || 0);
  const row = p.backbone && rows.get(p.backbone);
  if (row) {
    let words = STAGE_WORDS[p.stage] || p.stage;
    if (p.stage === "extract" && p.total) words = `reading the images: ${p.done} of ${p.total}`;
    if (p.stage === "download" && p.total) words = `downloading its weights: ${pct(p.done / p.total)}`;
    row.words.textContent = words;
    if (p.total) row.bar.value = p.stage === "extract" || p.stage === "download" ? p.done / p.total : 1;
    if (["done", "cached", "score"].includes(p.stage)) row.bar.value = 1;
  }
  if (p.stage === "p_best") {
    return `Estimating each network's chance of being the best: ${p.done} of ${p.total}`;
  }
  if (p.stage === "score") return `Scoring the networks: ${p.backbone} scored`;
  if (p.stage === "done" && !p.backbone) return "Finishing…";
  if (p.backbone) return `Network ${Math.min(total, (p.backbones_done || 0) + 1)} of ${total}: ${p.backbone}, ` +
    (row ? row.words.textContent : p.stage);
  return `Starting (${total} networks)…`;
}

async function showRanking(job) {
  if (state.follow) state.follow.abort();
  state.ranking = job;
  const section = $("job");
  section.hidden = false;
  $("results").hidden = true;
  $("finetune-job").hidden = true;
  $("finetune-error").textContent = "";
  $("job-title").textContent = `Ranking ${job.id.slice(0, 8)}`;
  const request = job.request || {};
  $("job-meta").textContent = `On ${datasetWords(request.dataset)}, ${(request.backbones || []).length} ` +
    `candidate networks; started ${when(job.created_at)}.`;
  const rows = progressRows(request.backbones || []);
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  if (!["succeeded", "failed", "cancelled"].includes(job.state)) {
    $("job-status").textContent = job.state === "queued" ? "Waiting for a free worker…" : "Running…";
    $("cancel-button").hidden = false;
    $("job-progress").hidden = false;
    const follow = new AbortController();
    state.follow = follow;
    try {
      job = await followJob("ranking", job.id, (p) => {
        $("job-status").textContent = describeRankingProgress(p, rows);
      }, follow.signal);
    } catch (err) {
      if (follow.signal.aborted) return;
      $("job-status").textContent = explain(err);
      return;
    } finally {
      $("cancel-button").hidden = true;
    }
    state.ranking = job;
    loadJobs().catch(() => {});
  }
  $("cancel-button").hidden = true;
  $("job-progress").hidden = true;
  $("backbone-progress").replaceChildren();
  if (job.state === "succeeded") {
    $("job-status").textContent = `Done: ${job.result.backbones.length} networks ranked in ` +
      `${Math.round(job.result.seconds.total)} s.`;
    renderResult(job);
  } else if (job.state === "failed") {
    $("job-status").textContent = `The ranking failed: ${job.error ? `${job.error.detail} [${job.error.code}]` : ""}`;
  } else {
    $("job-status").textContent = "The ranking was cancelled.";
  }
}

$("cancel-button").addEventListener("click", async () => {
  if (!state.ranking) return;
  try {
    await api(`/v1/rankings/${state.ranking.id}`, { method: "DELETE" });
    $("job-status").textContent = "Cancelling…";
  } catch (err) {
    $("job-status").textContent = explain(err);
  }
});

function renderResult(job) {
  const result = job.result;
  const body = $("ranking-table").tBodies[0];
  body.replaceChildren();
  for (const row of result.backbones) {
    body.append(el("tr", {},
      el("td", { "data-label": "Rank", text: String(row.rank) }),
      el("th", { scope: "row", text: row.id }),
      el("td", { "data-label": "Expected accuracy after fine-tuning", text: accuracyWords(row) }),
      el("td", { "data-label": "Chance it is the best",
        text: row.p_best === null || row.p_best === undefined ? "—" : pct(row.p_best) }),
      el("td", { "data-label": "How to use it", text: row.transfer ? row.transfer.advice : "—" }),
      el("td", { "data-label": "Size", text: row.params_m ? `${row.params_m.toFixed(1)} M parameters` : "—" })));
  }
  const notes = $("notes");
  notes.replaceChildren();
  const ds = result.dataset;
  notes.append(el("li", { text: `${ds.n_images} images in ${ds.n_classes} classes were used.` }));
  if (result.fusion && result.fusion.note) notes.append(el("li", { text: result.fusion.note }));
  for (const u of result.unavailable || []) {
    notes.append(el("li", { text: `Left out ${u.id}: ${u.detail} [${u.code}]` }));
  }
  const skipped = Object.entries(ds.skipped || {});
  if (skipped.length) {
    notes.append(el("li", { text: "Files left out: " + skipped.map(([why, n]) => `${n} (${why.replaceAll("_", " ")})`).join(", ") }));
  }
  if (result.failed_images) notes.append(el("li", { text: `${result.failed_images} images could not be read.` }));
  notes.append(el("li", { text: "Accuracy is the share of new images of these classes the network labels right, " +
    "estimated without training; the range is where it lands most of the time." }));
  setLink($("ranking-report"), job.links.report);
  const winner = result.backbones[0];
  $("finetune-button").textContent = `Fine-tune the winner (${winner.id})`;
  $("results").hidden = false;
}

// ------------------------------------------------------------------------------------------------ fine-tuning

$("finetune-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("finetune-error").textContent = "";
  const ranking = state.ranking;
  if (!ranking || ranking.state !== "succeeded") return;
  const request = { ranking_id: ranking.id, strategy: $("strategy").value };
  const epochs = parseInt($("epochs").value, 10);
  if (epochs > 0) request.epochs = epochs;
  const size = parseInt($("input-size").value, 10);
  if (size > 0) request.input_size = size;
  $("finetune-button").disabled = true;
  try {
    const created = await postJson("/v1/finetunes", request);
    await showFinetune(await getJson(created.url), ranking);
  } catch (err) {
    $("finetune-error").textContent = explain(err);
  } finally {
    $("finetune-button").disabled = false;
  }
});

function describeFinetuneProgress(p) {
  const bar = $("finetune-progress");
  if (p.stage === "load") return "Loading the network and the images…";
  if (p.stage === "train" || p.stage === "eval") {
    const runs = p.runs || 1;
    const perRun = (p.epochs || 1) * (p.steps || 1);
    const inRun = ((p.epoch || 1) - 1) * (p.steps || 1) + (p.step || 0);
    bar.max = 1;
    bar.value = Math.min(1, ((p.run || 1) - 1 + Math.min(1, inRun / perRun)) / runs);
    const what = p.stage === "eval" ? "checking accuracy" : `epoch ${p.epoch || 1} of ${p.epochs}`;
    return `Training run ${p.run || 1} of ${runs} (trying learning rates and seeds): ${what}`;
  }
  return p.stage || "Running…";
}

function predictionOf(ranking, backboneId) {
  const rows = ranking && ranking.result ? ranking.result.backbones : [];
  const row = rows.find((r) => r.id === backboneId);
  return row ? accuracyWords(row) : null;
}

async function showFinetune(job, ranking) {
  if (state.finetuneFollow) state.finetuneFollow.abort();
  $("finetune-job").hidden = false;
  $("finetune-links").hidden = true;
  $("finetune-accuracy").textContent = "";
  $("finetune-progress").hidden = false;
  const backbone = job.request && job.request.backbone;
  if (!["succeeded", "failed", "cancelled"].includes(job.state)) {
    $("finetune-status").textContent = `Fine-tuning ${backbone || "the winner"}: waiting for a free worker…`;
    const follow = new AbortController();
    state.finetuneFollow = follow;
    try {
      job = await followJob("finetune", job.id, (p) => {
        $("finetune-status").textContent = describeFinetuneProgress(p);
      }, follow.signal);
    } catch (err) {
      if (!follow.signal.aborted) $("finetune-status").textContent = explain(err);
      return;
    }
    loadJobs().catch(() => {});
  }
  $("finetune-progress").hidden = true;
  if (job.state === "succeeded") {
    const result = job.result;
    $("finetune-status").textContent = `Fine-tuned ${result.backbone.id} (${result.strategy}) in ` +
      `${Math.round(result.seconds.total)} s.`;
    const predicted = predictionOf(ranking, result.backbone.id);
    $("finetune-accuracy").textContent = `Measured accuracy on images kept aside for testing: ` +
      `${pct(result.test_accuracy.mean)}` + (predicted ? ` — the ranking expected ${predicted}.` : ".") +
      ` Guessing at random would give ${pct(result.chance_accuracy)}.`;
    setLink($("weights-link"), job.links.weights);
    $("weights-link").dataset.filename = `finetune-${job.id}.safetensors`;
    setLink($("finetune-report"), job.links.report);
    $("finetune-links").hidden = false;
  } else if (job.state === "failed") {
    $("finetune-status").textContent = `The fine-tune failed: ${job.error ? `${job.error.detail} [${job.error.code}]` : ""}`;
  } else {
    $("finetune-status").textContent = "The fine-tune was cancelled.";
  }
}

// ------------------------------------------------------------------------------------------------ earlier jobs

const STATE_WORDS = { queued: "waiting", running: "running", succeeded: "done", failed: "failed", cancelled: "cancelled" };

function jobItem(job, summary, open) {
  const links = open ? [el("button", { type: "button", class: "link", onclick: open, text: "Show" })] : [];
  if (job.links.report) {
    links.push(el("a", { href: job.links.report, "data-auth": true, target: "_blank", rel: "noopener", text: "Report" }));
  }
  if (job.links.weights) {
    links.push(el("a", { href: job.links.weights, "data-auth": true, download: `finetune-${job.id}.safetensors`,
      "data-filename": `finetune-${job.id}.safetensors`, text: "Weights" }));
  }
  return el("li", {},
    el("span", { class: `state ${job.state}`, text: STATE_WORDS[job.state] || job.state }),
    el("span", { class: "summary", text: summary }),
    el("span", { class: "when", text: when(job.created_at) }),
    el("span", { class: "actions" }, ...links));
}

async function loadJobs() {
  const [rankings, finetunes, uploads] = await Promise.all([
    getJson("/v1/rankings?limit=20"),
    getJson("/v1/finetunes?limit=20"),
    getJson("/v1/datasets").catch(() => []),
  ]);
  for (const u of uploads) {
    if (u.name) state.uploadNames.set(u.id, u.name);
  }
  const rankingList = $("ranking-list");
  rankingList.replaceChildren();
  for (const job of rankings) {
    // Lists give a summary of each job (its winner and that winner's prediction), not its request and result.
    const found = job.summary || {};
    const parts = [];
    if (found.dataset) parts.push(`${datasetWords(found.dataset)}, ${(found.backbones || []).length} networks`);
    if (found.winner) parts.push(`best: ${found.winner}`);
    const expected = found.predicted_accuracy && found.predicted_accuracy.finetune;
    if (expected) parts.push(`expected about ${pct(expected.value)}`);
    const summary = parts.join("; ") || "no result yet";
    rankingList.append(jobItem(job, summary, async () => showRanking(await getJson(job.links.self))));
  }
  if (!rankings.length) rankingList.append(el("li", { class: "hint", text: "None yet." }));
  const finetuneList = $("finetune-list");
  finetuneList.replaceChildren();
  for (const job of finetunes) {
    const request = job.request || {};
    const found = job.summary || {};
    const accuracy = typeof found.test_accuracy === "number" ? `; accuracy ${pct(found.test_accuracy)}` : "";
    const backbone = found.backbone || request.backbone || "a network";
    const dataset = found.dataset || request.dataset;
    const summary = dataset ? `${backbone} on ${datasetWords(dataset)}${accuracy}` : `${backbone}${accuracy}`;
    const rankingId = found.ranking_id || request.ranking_id;
    // A fine-tune of a ranking's winner is shown under that ranking, next to its prediction; others by report.
    const open = rankingId ? async () => {
      const [full, ranking] = await Promise.all([getJson(job.links.self), getJson(`/v1/rankings/${rankingId}`)]);
      await showRanking(ranking);
      await showFinetune(full, ranking);
    } : null;
    finetuneList.append(jobItem(job, summary, open));
  }
  if (!finetunes.length) finetuneList.append(el("li", { class: "hint", text: "None yet." }));
}

$("refresh-jobs").addEventListener("click", () => loadJobs().catch((err) => alert(explain(err))));

// ------------------------------------------------------------------------------------------------ start

async function start() {
  $("loading").hidden = false;
  try {
    await loadJobs(); // a 401 here shows the key prompt instead of any data
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    $("loading").textContent = explain(err);
    return;
  }
  $("loading").hidden = true;
  $("key-section").hidden = true;
  $("main").hidden = false;
  $("forget-key").hidden = !state.key;
  showPanels();
  loadCatalog().catch((err) => {
    $("rank-error").textContent = explain(err);
  });
}

start();
