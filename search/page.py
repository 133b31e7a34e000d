"""The one page of ``one-peace-serve``: inline CSS and JS, no build step.  Results are built with
``textContent`` (never innerHTML), so file names and texts cannot inject markup.

The page names no modality: ``/api/info`` gives the modalities in display order with their search
views (the modality registry's ``search_view``), and each hit is drawn by its ``view``."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ONE-PEACE search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #222; }
  header { background: #1f3b57; color: #fff; padding: 12px 20px; }
  header h1 { margin: 0; font-size: 20px; }
  header #info { font-size: 13px; opacity: .85; margin-top: 4px; }
  main { padding: 16px 20px; }
  form { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
  #text { flex: 1; min-width: 240px; padding: 8px; font-size: 16px; }
  button { padding: 8px 16px; font-size: 15px; }
  #drop { margin-top: 10px; border: 2px dashed #8aa; border-radius: 8px; padding: 14px; text-align: center;
          background: #fff; color: #555; }
  #drop.over { background: #e3f1ff; border-color: #38c; }
  #modalities label { margin-right: 10px; font-size: 14px; }
  #status { margin: 12px 0; font-size: 14px; color: #444; }
  #status.error { color: #b00020; }
  section { margin-bottom: 22px; }
  section h2 { font-size: 17px; margin: 0 0 8px; border-bottom: 1px solid #ccd; padding-bottom: 4px; }
  .grid { display: flex; flex-wrap: wrap; gap: 10px; }
  .hit { background: #fff; border: 1px solid #dde; border-radius: 6px; padding: 6px; font-size: 13px; }
  .grid .hit { width: 180px; }
  .grid img { width: 180px; height: 140px; object-fit: cover; display: block; border-radius: 4px; background: #eee; }
  .grid video { width: 180px; height: 140px; background: #000; display: block; }
  .list .hit { display: flex; gap: 12px; align-items: center; margin-bottom: 6px; max-width: 760px; }
  .missing { width: 180px; height: 140px; display: flex; align-items: center; justify-content: center;
             background: #eee; color: #777; border-radius: 4px; }
  #query-preview { max-height: 64px; vertical-align: middle; margin-right: 8px; border-radius: 4px; }
  .score { font-variant-numeric: tabular-nums; color: #1f3b57; font-weight: 600; }
  .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .snippet { color: #333; }
  .empty { color: #777; font-style: italic; }
</style>
</head>
<body>
<header><h1>ONE-PEACE search</h1><div id="info">loading index...</div></header>
<main>
  <form id="form">
    <input id="text" type="search" placeholder="Describe what you look for: a dog barking, an elephant..." autofocus>
    <label>top <select id="k"><option>6</option><option selected>12</option><option>24</option>
      <option>48</option></select></label>
    <button id="go" type="submit">Search</button>
  </form>
  <div id="modalities"></div>
  <div id="drop">Drop a file here (an image, a sound, a video, a .txt ...) to find what is near it, or
    <input id="file" type="file"></div>
  <div id="status"></div>
  <div id="results"></div>
</main>
<script>
"use strict";
const GRID_VIEWS = ["image", "video"];  // views shown as a grid of thumbnails / posters
const $ = (id) => document.getElementById(id);
let info = null;  // /api/info: info.views maps every modality to its view, in display order
let preview = null;  // a blob: URL of the query image, shown beside the status line

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function status(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function title(m) { return m.charAt(0).toUpperCase() + m.slice(1); }

function viewOf(m) { return (info && info.views[m]) || "file"; }

function displayOrder(names) {
  const known = info ? Object.keys(info.views) : [];
  const rank = (m) => (known.indexOf(m) < 0 ? known.length : known.indexOf(m));
  return names.slice().sort((a, b) => rank(a) - rank(b));
}

function chosenModalities() {
  return Array.from(document.querySelectorAll("#modalities input:checked")).map((x) => x.value);
}

async function loadInfo() {
  const r = await fetch("/api/info");
  info = await r.json();
  const counts = Object.entries(info.counts).map(([m, n]) => n + " " + m).join(", ") || "empty";
  $("info").textContent = info.index + " \u2014 " + counts + " \u2014 " + info.model.checkpoint +
    " (" + info.model.dtype + ", " + info.model.dim + "-d)";
  const box = $("modalities");
  box.appendChild(document.createTextNode("Search in: "));
  for (const m of displayOrder(info.modalities)) {
    const label = el("label");
    const input = el("input", {type: "checkbox", value: m});
    input.checked = true;
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + title(m)));
    box.appendChild(label);
  }
  $("file").setAttribute("accept", info.accept.join(","));
}

function hitCard(hit) {
  const card = el("div", {class: "hit", "data-path": hit.path, "data-modality": hit.modality, title: hit.path});
  const view = hit.view || viewOf(hit.modality);
  const line = el("div");
  line.appendChild(el("span", {class: "score"}, hit.score.toFixed(3)));
  line.appendChild(document.createTextNode(" "));
  if (view === "file") {  // nothing to show inline: the name links to the file
    line.appendChild(el("a", {class: "name", href: hit.url, target: "_blank", rel: "noopener"}, hit.name));
  } else {
    line.appendChild(el("span", {class: "name"}, hit.name));
  }
  if (view === "image") {
    const a = el("a", {href: hit.url, target: "_blank", rel: "noopener"});
    const img = el("img", {src: hit.thumb_url, alt: hit.name, loading: "lazy"});
    // the server refuses files it may not serve (e.g. a symlink out of the roots): say so
    img.addEventListener("error", () => a.replaceWith(el("div", {class: "missing"}, "not served")));
    a.appendChild(img);
    card.appendChild(a);
  } else if (view === "video") {
    card.appendChild(el("video", {src: hit.url, poster: hit.thumb_url, controls: "", preload: "none"}));
  } else if (view === "audio") {
    card.appendChild(el("audio", {src: hit.url, controls: "", preload: "none"}));
  }
  card.appendChild(line);
  if (view === "text") card.appendChild(el("div", {class: "snippet"}, hit.text || ""));
  return card;
}

function show(data, seconds) {
  const out = $("results");
  out.replaceChildren();
  const q = data.query;
  const what = q.text !== undefined ? "\u201c" + q.text + "\u201d" : q.modality + " file " + q.file;
  let total = 0;
  for (const modality of displayOrder(Object.keys(data.results))) {
    const hits = data.results[modality];
    total += hits.length;
    const section = el("section", {"data-modality": modality});
    section.appendChild(el("h2", {}, title(modality) + " (" + hits.length + ")"));
    const box = el("div", {class: GRID_VIEWS.includes(viewOf(modality)) ? "grid" : "list"});
    if (!hits.length) box.appendChild(el("div", {class: "empty"}, "nothing indexed"));
    for (const hit of hits) box.appendChild(hitCard(hit));
    section.appendChild(box);
    out.appendChild(section);
  }
  status(total + " results for " + what + " in " + seconds.toFixed(2) + " s", false);
  if (preview) $("status").prepend(el("img", {id: "query-preview", src: preview, alt: "query"}));
}

async function run(body, headers) {
  status("searching...", false);
  const start = performance.now();
  try {
    const r = await fetch("/api/search", {method: "POST", body: body, headers: headers || {}});
    const data = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
    if (!r.ok) { status("Error " + r.status + ": " + (data.error || r.statusText), true); return; }
    show(data, (performance.now() - start) / 1000);
  } catch (err) {
    status("Error: " + err, true);
  }
}

function searchText() {
  if (preview) URL.revokeObjectURL(preview);
  preview = null;
  const text = $("text").value.trim();
  if (!text) { status("type a query first", true); return; }
  run(JSON.stringify({text: text, modalities: chosenModalities(), k: Number($("k").value)}),
      {"Content-Type": "application/json"});
}

function searchFile(file) {
  if (!file) return;
  if (info && file.size > info.max_upload_bytes) {
    status("Error 413: " + file.name + " is larger than the upload limit (" + info.max_upload_bytes + " bytes)", true);
    return;
  }
  if (preview) URL.revokeObjectURL(preview);
  preview = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("modalities", chosenModalities().join(","));
  form.append("k", $("k").value);
  run(form);
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); searchText(); });
$("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(e.dataTransfer.files[0]);
});
loadInfo().catch((err) => status("cannot read the index: " + err, true));
</script>
</body>
</html>
"""
