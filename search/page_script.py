"""The script of the ``one-peace-serve`` page (``page.py``): queries (a text, more terms, a dropped file,
more like this), filters, pages ("more" per modality) and near-duplicate groups, over the JSON API
(``api_query.py``).  Every query is kept as fields + files, so "more" sends it again with an offset."""

SCRIPT = r"""
"use strict";
const GRID_VIEWS = ["image", "video"];  // views shown as a grid of thumbnails / posters
const $ = (id) => document.getElementById(id);
let info = null;  // /api/info: info.views maps every modality to its view, in display order
let preview = null;  // a blob: URL of the query image, shown beside the status line
let current = null;  // the query shown: {fields, files}; "more" sends it again with an offset
let termCount = 0;

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

function clock(s) {
  s = Math.round(s || 0);
  const m = Math.floor(s / 60), r = String(s % 60).padStart(2, "0");
  return m >= 60 ? Math.floor(m / 60) + ":" + String(m % 60).padStart(2, "0") + ":" + r : m + ":" + r;
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
  $("threshold").value = info.duplicate_threshold;
}

// ---- the query --------------------------------------------------------------------------
function addTerm() {
  termCount += 1;
  const row = el("span", {class: "term", "data-term": String(termCount)});
  const kind = el("select", {class: "kind"});
  for (const k of ["text", "file"]) kind.appendChild(el("option", {value: k}, k));
  const text = el("input", {class: "value", type: "text", placeholder: "a text"});
  const upload = el("input", {class: "upload", type: "file", hidden: ""});
  upload.setAttribute("accept", info ? info.accept.join(",") : "");
  kind.addEventListener("change", () => {
    text.hidden = kind.value !== "text";
    upload.hidden = kind.value !== "file";
  });
  const weight = el("input", {class: "weight", type: "number", value: "1", min: "0.01", step: "any",
                              title: "weight"});
  const minus = el("input", {class: "minus", type: "checkbox"});
  const minusLabel = el("label", {}, " minus");
  minusLabel.prepend(minus);
  const remove = el("button", {type: "button", class: "remove", title: "remove"}, "\u00d7");
  remove.addEventListener("click", () => row.remove());
  for (const node of [kind, text, upload, weight, minusLabel, remove]) row.appendChild(node);
  $("terms").appendChild(row);
  return row;
}

function filterFields() {
  const out = {};
  const folder = $("folder").value.trim();
  if (folder) out.folder = folder;
  if ($("since").value) out.since = $("since").value;
  if ($("until").value) out.until = $("until").value;
  if ($("min-score").value !== "") out.min_score = Number($("min-score").value);
  return out;
}

// The form's query: the text (with its weight) and every term row; null with a message when empty.
function formQuery() {
  const text = $("text").value.trim();
  const weight = Number($("weight").value || 1);
  const rows = Array.from(document.querySelectorAll("#terms .term"));
  const terms = [], files = {};
  if (text) terms.push({text: text, weight: weight});
  for (const row of rows) {
    const term = {weight: Number(row.querySelector(".weight").value || 1)};
    if (row.querySelector(".minus").checked) term.minus = true;
    if (row.querySelector(".kind").value === "file") {
      const file = row.querySelector(".upload").files[0];
      if (!file) continue;
      const field = "term" + row.dataset.term;
      files[field] = file;
      term.upload = field;
    } else {
      const value = row.querySelector(".value").value.trim();
      if (!value) continue;
      term.text = value;
    }
    terms.push(term);
  }
  if (!terms.length) { status("type a query first", true); return null; }
  const fields = Object.assign({modalities: chosenModalities(), k: Number($("k").value)}, filterFields());
  if (terms.length === 1 && terms[0].text !== undefined && terms[0].weight === 1 && !terms[0].minus) {
    fields.text = terms[0].text;  // the plain query
  } else {
    fields.terms = terms;
  }
  return {fields: fields, files: files};
}

function requestOf(query, extra) {
  const fields = Object.assign({}, query.fields, extra || {});
  if (!Object.keys(query.files).length) {
    return {body: JSON.stringify(fields), headers: {"Content-Type": "application/json"}};
  }
  const form = new FormData();  // files: the other fields as text (lists as JSON)
  for (const [k, v] of Object.entries(fields)) form.append(k, typeof v === "string" ? v : JSON.stringify(v));
  for (const [k, f] of Object.entries(query.files)) form.append(k, f, f.name);
  return {body: form, headers: {}};
}

async function post(query, extra) {
  const req = requestOf(query, extra);
  const r = await fetch("/api/search", {method: "POST", body: req.body, headers: req.headers});
  const data = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
  if (!r.ok) throw new Error("Error " + r.status + ": " + (data.error || r.statusText));
  return data;
}

function describe(q) {
  const one = (t) => t.text !== undefined ? "\u201c" + t.text + "\u201d" :
    t.id !== undefined ? "like " + t.path.split("/").pop() : t.modality + " file " + t.file;
  if (!q.terms) return one(q);
  return q.terms.map((t, i) => {
    const w = Math.abs(t.weight), sign = t.weight < 0 ? "\u2212 " : (i ? "+ " : "");
    return sign + (w === 1 ? "" : w + " \u00d7 ") + one(t);
  }).join(" ");
}

async function run(query) {
  current = query;
  status("searching...", false);
  const start = performance.now();
  try {
    show(await post(query), (performance.now() - start) / 1000);
  } catch (err) {
    status(String(err.message || err), true);
  }
}

// ---- results ----------------------------------------------------------------------------
function hitCard(hit, withLike) {
  const card = el("div", {class: "hit", "data-path": hit.path, "data-modality": hit.modality,
                          "data-id": String(hit.id), title: hit.path});
  const view = hit.view || viewOf(hit.modality);
  const span = hit.start_s !== null && hit.start_s !== undefined;
  const url = hit.url + (span ? "#t=" + hit.start_s + "," + hit.end_s : "");
  const track = hit.file_modality && hit.file_modality !== hit.modality;  // e.g. the sound track of a video
  const name = hit.name + (span ? " @" + clock(hit.start_s) + "\u2013" + clock(hit.end_s) : "")
    + (track ? " (" + hit.modality + " of a " + hit.file_modality + ")" : "");
  const line = el("div");
  line.appendChild(el("span", {class: "score"}, hit.score.toFixed(3)));
  line.appendChild(document.createTextNode(" "));
  if (view === "file") {  // nothing to show inline: the name links to the file
    line.appendChild(el("a", {class: "name", href: hit.url, target: "_blank", rel: "noopener"}, name));
  } else {
    line.appendChild(el("span", {class: "name"}, name));
  }
  if (view === "image") {
    const a = el("a", {href: hit.url, target: "_blank", rel: "noopener"});
    const img = el("img", {src: hit.thumb_url, alt: hit.name, loading: "lazy"});
    // the server refuses files it may not serve (e.g. a symlink out of the roots): say so
    img.addEventListener("error", () => a.replaceWith(el("div", {class: "missing"}, "not served")));
    a.appendChild(img);
    card.appendChild(a);
  } else if (view === "video") {
    const attrs = {src: url, controls: "", preload: "none"};
    if (hit.thumb_url) attrs.poster = hit.thumb_url;
    card.appendChild(el("video", attrs));
  } else if (view === "audio") {
    card.appendChild(el("audio", {src: url, controls: "", preload: "none"}));
  }
  card.appendChild(line);
  if (view === "text") card.appendChild(el("div", {class: "snippet"}, hit.text || ""));
  if (withLike) {
    const like = el("button", {type: "button", class: "like", title: "search with this result"}, "More like this");
    like.addEventListener("click", () => {
      const fields = Object.assign({like: hit.id, modalities: chosenModalities(), k: Number($("k").value)},
                                   filterFields());
      run({fields: fields, files: {}});
    });
    card.appendChild(like);
  }
  return card;
}

function heading(section) {
  const shown = section.querySelectorAll(".hit").length;
  const total = section.dataset.total;
  section.querySelector("h2").textContent = title(section.dataset.modality) + " (" + shown +
    (total && Number(total) !== shown ? " of " + total : "") + ")";
}

function setMore(section, page) {
  const old = section.querySelector("button.more");
  if (old) old.remove();
  section.dataset.total = page && page.total !== null && page.total !== undefined ? page.total : "";
  if (!page || !page.has_more) return;
  const more = el("button", {type: "button", class: "more"}, "More");
  more.addEventListener("click", async () => {
    const modality = section.dataset.modality;
    more.disabled = true;
    try {
      const data = await post(current, {modalities: [modality],
                                        offset: section.querySelectorAll(".hit").length});
      const box = section.querySelector(".grid, .list");
      for (const hit of data.results[modality]) box.appendChild(hitCard(hit, true));
      setMore(section, data.pages[modality]);
      heading(section);
    } catch (err) {
      status(String(err.message || err), true);
      more.disabled = false;
    }
  });
  section.appendChild(more);
}

function show(data, seconds) {
  const out = $("results");
  out.replaceChildren();
  let total = 0;
  for (const modality of displayOrder(Object.keys(data.results))) {
    const hits = data.results[modality];
    total += hits.length;
    const section = el("section", {"data-modality": modality});
    section.appendChild(el("h2"));
    const box = el("div", {class: GRID_VIEWS.includes(viewOf(modality)) ? "grid" : "list"});
    if (!hits.length) box.appendChild(el("div", {class: "empty"}, data.filters ? "no result passes the filters"
                                                                               : "nothing indexed"));
    for (const hit of hits) box.appendChild(hitCard(hit, true));
    section.appendChild(box);
    setMore(section, data.pages && data.pages[modality]);
    heading(section);
    out.appendChild(section);
  }
  status(total + " results for " + describe(data.query) + " in " + seconds.toFixed(2) + " s", false);
  if (preview) $("status").prepend(el("img", {id: "query-preview", src: preview, alt: "query"}));
}

// ---- near-duplicates --------------------------------------------------------------------
async function findDuplicates() {
  const params = new URLSearchParams();
  params.set("threshold", $("threshold").value || info.duplicate_threshold);
  params.set("modalities", chosenModalities().join(","));
  for (const [k, v] of Object.entries(filterFields())) if (k !== "min_score") params.set(k, v);
  status("looking for near-duplicates...", false);
  const r = await fetch("/api/duplicates?" + params.toString());
  const data = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
  if (!r.ok) { status("Error " + r.status + ": " + (data.error || r.statusText), true); return; }
  const out = $("results");
  out.replaceChildren();
  let groups = 0;
  for (const modality of displayOrder(Object.keys(data.groups))) {
    const section = el("section", {"data-modality": modality, class: "duplicates"});
    const list = data.groups[modality];
    groups += list.length;
    section.appendChild(el("h2", {}, title(modality) + ": " + list.length + " group" + (list.length === 1 ? "" : "s")));
    if (!list.length) section.appendChild(el("div", {class: "empty"}, "no near-duplicates"));
    list.forEach((group, i) => {
      const box = el("div", {class: "dup-group"});
      box.appendChild(el("h3", {}, "group " + (i + 1) + " (" + group.length + " files)"));
      const grid = el("div", {class: GRID_VIEWS.includes(viewOf(modality)) ? "grid" : "list"});
      for (const entry of group) grid.appendChild(hitCard(entry, false));
      box.appendChild(grid);
      section.appendChild(box);
    });
    out.appendChild(section);
  }
  status(groups + " groups of near-duplicates (threshold " + data.threshold + ")", false);
}

// ---- wiring -----------------------------------------------------------------------------
function searchFile(file) {
  if (!file) return;
  if (info && file.size > info.max_upload_bytes) {
    status("Error 413: " + file.name + " is larger than the upload limit (" + info.max_upload_bytes + " bytes)", true);
    return;
  }
  if (preview) URL.revokeObjectURL(preview);
  preview = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
  const fields = Object.assign({modalities: chosenModalities(), k: Number($("k").value)}, filterFields());
  run({fields: fields, files: {file: file}});
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (preview) URL.revokeObjectURL(preview);
  preview = null;
  const query = formQuery();
  if (query) run(query);
});
$("add-term").addEventListener("click", () => addTerm());
$("dups-go").addEventListener("click", () => findDuplicates().catch((err) => status("Error: " + err, true)));
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
"""
