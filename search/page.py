"""The one page of ``one-peace-serve``: inline CSS and JS (``page_script.py``), no build step.  Results
are built with ``textContent`` (never innerHTML), so file names and texts cannot inject markup.

The page names no modality: ``/api/info`` gives the modalities in display order with their search
views (the modality registry's ``search_view``), and each hit is drawn by its ``view``.  Controls:
a query text with its weight, more terms (texts or files, weights, minus), filters (folder, dates,
minimum score), the modalities, a file drop, "more" per modality, "more like this" per result, and
the near-duplicate groups."""
from .page_script import SCRIPT

_HTML = r"""<!doctype html>
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
  input.weight { width: 4.5em; }
  button { padding: 8px 16px; font-size: 15px; }
  .row { display: flex; gap: 10px; flex-wrap: wrap; align-items: center; margin-top: 8px; font-size: 14px; }
  .term { display: flex; gap: 6px; align-items: center; background: #fff; border: 1px solid #dde; border-radius: 6px;
          padding: 4px 8px; }
  .term button, .hit button, #dups-go, #add-term { padding: 3px 8px; font-size: 13px; }
  #folder { width: 22em; }
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
  .more { margin-top: 8px; }
  .dup-group { border-left: 4px solid #8aa; padding-left: 8px; margin-bottom: 12px; }
  .dup-group h3 { font-size: 14px; margin: 0 0 6px; color: #555; }
</style>
</head>
<body>
<header><h1>ONE-PEACE search</h1><div id="info">loading index...</div></header>
<main>
  <form id="form">
    <input id="text" type="search" placeholder="Describe what you look for: a dog barking, an elephant..." autofocus>
    <label>weight <input id="weight" class="weight" type="number" value="1" min="0.01" step="any"></label>
    <label>top <select id="k"><option>3</option><option>6</option><option selected>12</option><option>24</option>
      <option>48</option></select></label>
    <button id="go" type="submit">Search</button>
  </form>
  <div class="row"><span id="terms"></span><button id="add-term" type="button">+ term</button></div>
  <div class="row" id="filters">
    <label>Folder <input id="folder" type="text" placeholder="only under this folder"></label>
    <label>From <input id="since" type="date"></label>
    <label>to <input id="until" type="date"></label>
    <label>min score <input id="min-score" class="weight" type="number" step="0.05" min="-1" max="1"></label>
  </div>
  <div class="row" id="modalities"></div>
  <div id="drop">Drop a file here (an image, a sound, a video, a .txt ...) to find what is near it, or
    <input id="file" type="file"></div>
  <div class="row"><button id="dups-go" type="button">Find near-duplicates</button>
    <label>threshold <input id="threshold" class="weight" type="number" step="0.01" min="0.01" max="1"></label></div>
  <div id="status"></div>
  <div id="results"></div>
</main>
<script>
{SCRIPT}
</script>
</body>
</html>
"""

PAGE = _HTML.replace("{SCRIPT}", SCRIPT)
