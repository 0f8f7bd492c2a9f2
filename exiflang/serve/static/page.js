// The analyst's page: one photo -> /v1/detect, /v1/check-exif, /v1/lookup, drawn in place.
// Plain JS, no framework, nothing loaded from elsewhere (the service's CSP forbids it).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, det: null, check: null, lookup: null, maps: {}, preview: null,
                info: null, busy: false, thumbURLs: [], round: 0 };

const VERDICT_TEXT = {
  spliced: "Likely spliced: parts of this photo disagree about the camera that made them.",
  authentic: "No sign of splicing: the photo's parts agree with one another.",
  inconclusive: "Inconclusive: the score lies in the band where authentic and spliced photos overlap.",
  unknown: "No verdict: this model has no reference set of authentic photos to compare the score with.",
};
const EXIF_TEXT = {
  consistent: "Consistent: the pixels agree with the camera settings this photo claims.",
  inconsistent: "Inconsistent: the pixels look like another camera or settings than the EXIF claims.",
  inconclusive: "Inconclusive: the pixels neither clearly support nor contradict the claimed EXIF.",
  "no-exif": "The photo carries no EXIF to check.",
};

function authHeaders() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function readError(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return "the service answered " + resp.status + " " + resp.statusText;
}

async function post(path, extra) {
  const form = new FormData();
  form.append("file", state.file, state.file.name || "photo");
  if (extra) for (const [k, v] of Object.entries(extra)) form.append(k, v);
  let resp;
  try {
    resp = await fetch(path, { method: "POST", body: form, headers: authHeaders() });
  } catch (e) {
    throw new Error("the service cannot be reached (" + e.message + ")");
  }
  if (resp.status === 401) $("token-box").hidden = false;
  if (!resp.ok) {
    const msg = await readError(resp);
    const retry = resp.headers.get("Retry-After");
    throw new Error(msg + (retry ? " (retry after " + retry + " s)" : ""));
  }
  return resp;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function progress(step, text) {
  $("progress").hidden = step === null;
  if (step !== null) {
    $("progress-bar").value = step;
    $("progress-text").textContent = text;
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("a map could not be decoded"));
    img.src = src;
  });
}

// A perceptual blue -> yellow -> red ramp for 0..1 (255 steps).
function colour(v) {
  const t = v / 255;
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.6 * t - 0.1)));
  const g = Math.round(220 * Math.max(0, 1 - Math.abs(2 * t - 1.05) * 1.4));
  const b = Math.round(140 * Math.max(0, 1 - 2.2 * t) + 20);
  return [r, g, b];
}

function greyData(img) {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height);
}

function colourCanvas(img) {
  const data = greyData(img);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i];
    const [r, g, b] = colour(v);
    // low values partly transparent, so the photo shows through where nothing stands out
    px[i] = r; px[i + 1] = g; px[i + 2] = b; px[i + 3] = Math.round(70 + 185 * v / 255);
  }
  const c = document.createElement("canvas");
  c.width = data.width; c.height = data.height;
  c.getContext("2d").putImageData(data, 0, 0);
  return c;
}

function outlineCanvas(img) {
  const data = greyData(img);
  const w = data.width, h = data.height, px = data.data;
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && px[4 * (y * w + x)] > 127;
  const out = new ImageData(w, h);
  const lw = Math.max(1, Math.round(Math.max(w, h) / 400));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!on(x, y)) continue;
      let edge = false;
      for (let d = 1; d <= lw && !edge; d++) edge = !on(x - d, y) || !on(x + d, y) || !on(x, y - d) || !on(x, y + d);
      if (edge) { const i = 4 * (y * w + x); out.data[i] = 255; out.data[i + 1] = 255; out.data[i + 2] = 255; out.data[i + 3] = 255; }
    }
  }
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  c.getContext("2d").putImageData(out, 0, 0);
  return c;
}

function draw() {
  const canvas = $("overlay");
  if (!state.preview) return;
  const w = state.preview.naturalWidth, h = state.preview.naturalHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(state.preview, 0, 0, w, h);
  const which = document.querySelector("input[name=map]:checked").value;
  const heat = state.maps[which] || state.maps.meanshift;
  if (heat) {
    ctx.globalAlpha = $("opacity").value / 100;
    ctx.drawImage(heat, 0, 0, w, h);
  }
  if ($("outline").checked && state.maps.outline) {
    ctx.globalAlpha = 1;
    ctx.drawImage(state.maps.outline, 0, 0, w, h);
  }
}

function pct(x) { return (Math.round(x * 10) / 10).toFixed(1); }

function showDetection(body) {
  const d = body.detection;
  const v = $("verdict");
  v.textContent = VERDICT_TEXT[d.verdict] || ("Verdict: " + d.verdict);
  v.className = "verdict " + d.verdict;
  let text;
  if (d.percentile === null || d.percentile === undefined) {
    text = "The score cannot be ranked: there is no reference distribution of authentic photos for this model.";
  } else {
    text = "Its splice score is higher than " + pct(d.percentile) + "% of the authentic reference photos' scores"
      + (d.percentile >= 95 ? " — few authentic photos score this high." : ".");
  }
  $("score-text").textContent = text;
  $("score-raw").textContent = "score " + Number(d.score).toPrecision(4)
    + " (higher = more likely spliced); " + Object.entries(d.scores || {}).map(([k, x]) => k + " " + Number(x).toPrecision(3)).join(", ");
  const spliced = d.verdict === "spliced" && !!state.maps.outline;
  $("outline").disabled = !spliced;
  $("outline").checked = spliced;
  $("map-ncuts").disabled = !state.maps.ncuts;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function showCheck(c) {
  const v = $("exif-verdict");
  v.textContent = EXIF_TEXT[c.verdict] || ("Verdict: " + c.verdict);
  v.className = "verdict " + c.verdict;
  const status = $("exif-status");
  status.textContent = (c.percentile !== null && c.percentile !== undefined && c.verdict !== "no-exif")
    ? "The claimed EXIF matches the pixels better than " + pct(c.percentile) + "% of the reference EXIF texts (score " + Number(c.score).toPrecision(3) + ")."
    : "";
  const rows = c.per_tag || [];
  const claimed = c.claimed || {};
  const body = $("exif-table").querySelector("tbody");
  const rest = $("exif-unscored");
  body.textContent = "";
  rest.textContent = "";
  const seen = new Set();
  for (const r of rows) {
    seen.add(r.tag);
    const tr = document.createElement("tr");
    cell(tr, r.tag);
    cell(tr, String(r.claimed ?? claimed[r.tag] ?? ""));
    const s = Number(r.support);
    const alt = r.best_alternative;
    const hasAlt = !(alt === null || alt === undefined);
    cell(tr, Number.isFinite(s) ? s.toPrecision(3) : "—", Number.isFinite(s) && s < 0 ? "low" : "");
    cell(tr, hasAlt ? (typeof alt === "object" ? (alt.value ?? JSON.stringify(alt)) : String(alt)) : "—");
    // Tags the check could not vary (no alternative value to compare with) go below the fold.
    (hasAlt || (Number.isFinite(s) && s !== 0) ? body : rest).appendChild(tr);
  }
  for (const [tag, value] of Object.entries(claimed)) {
    if (seen.has(tag)) continue;
    const tr = document.createElement("tr");
    cell(tr, tag); cell(tr, String(value)); cell(tr, "not scored"); cell(tr, "—");
    rest.appendChild(tr);
  }
  const more = $("exif-more");
  more.hidden = rest.children.length === 0;
  rest.hidden = true;
  more.setAttribute("aria-expanded", "false");
  more.textContent = "Show " + rest.children.length + " more claimed tags (not scored)";
  if (body.children.length === 0 && rest.children.length) rest.hidden = false;
  $("exif-table").hidden = body.children.length + rest.children.length === 0;
}

function showLookup(res) {
  const v = $("camera-verdict");
  if (!res.known) {
    v.textContent = "Unknown camera: this photo is no closer to its nearest reference photos than those photos are to theirs, so no camera is named.";
    v.className = "verdict abstain";
  } else {
    v.textContent = "The nearest reference photos agree on these values:";
    v.className = "verdict known";
  }
  const body = $("votes-table").querySelector("tbody");
  const rest = $("votes-more-rows");
  body.textContent = "";
  rest.textContent = "";
  // The camera's identity first, then the tags the neighbours agree on most; the rest folded.
  const FIRST = ["Make", "Model", "Lens Model", "Software"];
  const tags = Object.entries(res.votes || {}).sort(([a, va], [b, vb]) => {
    const ra = FIRST.indexOf(a), rb = FIRST.indexOf(b);
    if (ra !== rb) return (ra < 0 ? 99 : ra) - (rb < 0 ? 99 : rb);
    return (vb[0] ? vb[0][1] : 0) - (va[0] ? va[0][1] : 0);
  });
  tags.forEach(([tag, values], n) => {
    const tr = document.createElement("tr");
    cell(tr, tag);
    const td = cell(tr, "");
    values.slice(0, 3).forEach(([value, share], i) => {
      const span = document.createElement("span");
      span.textContent = (i ? "; " : "") + value + " (" + Math.round(100 * share) + "%)";
      td.appendChild(span);
    });
    (n < 8 ? body : rest).appendChild(tr);
  });
  const more = $("votes-more");
  more.hidden = !res.known || rest.children.length === 0;
  rest.hidden = true;
  more.setAttribute("aria-expanded", "false");
  more.textContent = "Show " + rest.children.length + " more tags";
  $("votes-table").hidden = !res.known || body.children.length === 0;
  showNeighbours(res);
}

// A thumbnail is fetched with the token (an <img src> cannot send one) and shown from a blob: URL;
// `state.round` tells a late answer for an earlier photo to drop its picture.
async function thumbnailURL(path, round) {
  let resp;
  try {
    resp = await fetch(path, { headers: authHeaders() });
  } catch (e) {
    throw new Error("the service cannot be reached (" + e.message + ")");
  }
  if (!resp.ok) throw new Error(await readError(resp));
  const url = URL.createObjectURL(await resp.blob());
  if (round !== state.round) { URL.revokeObjectURL(url); return null; }
  state.thumbURLs.push(url);
  return url;
}

function noThumbnail(slot, text) {
  const p = document.createElement("p");
  p.className = "no-thumb";
  p.textContent = text;
  slot.replaceChildren(p);
  slot.removeAttribute("aria-busy");
}

function neighbourName(n) {
  const exif = n.exif || {};
  return [exif.Make, exif.Model].filter(Boolean).join(" ") || n.key || ("row " + n.row);
}

function neighbourCaption(n, i) {
  const exif = n.exif || {};
  const cap = document.createElement("figcaption");
  const title = document.createElement("strong");
  title.textContent = (i + 1) + ". " + neighbourName(n);
  const sim = document.createElement("span");
  sim.textContent = "similarity " + Number(n.similarity).toFixed(3);
  cap.append(title, sim);
  const tags = Object.entries(exif);
  if (tags.length) {
    const box = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Its EXIF (" + tags.length + " tags)";
    const dl = document.createElement("dl");
    for (const [k, x] of tags) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(x);
      dl.append(dt, dd);
    }
    box.append(summary, dl);
    cap.appendChild(box);
  }
  return cap;
}

function showNeighbours(res) {
  const list = $("neighbours");
  list.textContent = "";
  const held = state.info && state.info.index ? state.info.index.thumbnails : undefined;
  $("neighbours-note").textContent = held === 0
    ? "This reference index holds no thumbnails (built with --no-thumbnails, or before thumbnails existed): rebuild it with `exiflang index` to see the photos."
    : "";
  const round = state.round;
  (res.neighbours || []).slice(0, 10).forEach((n, i) => {
    const li = document.createElement("li");
    const figure = document.createElement("figure");
    const slot = document.createElement("div");
    slot.className = "thumb";
    figure.append(slot, neighbourCaption(n, i));
    li.appendChild(figure);
    list.appendChild(li);
    if (!n.thumbnail) {
      noThumbnail(slot, held === 0 ? "No thumbnail in this index." : "No thumbnail: this photo could not be read when the index was built.");
      return;
    }
    slot.setAttribute("aria-busy", "true");
    slot.textContent = "Loading…";
    thumbnailURL(n.thumbnail, round).then((url) => {
      if (!url) return;
      const img = document.createElement("img");
      img.alt = "Reference photo " + (i + 1) + ": " + neighbourName(n) + ", similarity " + Number(n.similarity).toFixed(3);
      img.onload = () => slot.removeAttribute("aria-busy");
      img.onerror = () => noThumbnail(slot, "The thumbnail could not be decoded.");
      img.src = url;
      slot.replaceChildren(img);
    }).catch((e) => noThumbnail(slot, "Thumbnail not available: " + e.message));
  });
  $("neighbours-box").hidden = list.children.length === 0;
}

function resetResults() {
  $("error").hidden = true;
  $("results").hidden = true;
  for (const id of ["verdict", "score-text", "score-raw", "exif-verdict", "exif-status", "camera-verdict", "camera-status"]) $(id).textContent = "";
  $("exif-table").hidden = true; $("exif-more").hidden = true; $("votes-table").hidden = true; $("votes-more").hidden = true; $("neighbours-box").hidden = true;
  for (const url of state.thumbURLs) URL.revokeObjectURL(url);
  Object.assign(state, { det: null, check: null, lookup: null, maps: {}, preview: null, thumbURLs: [], round: state.round + 1 });
}

async function analyse(file) {
  if (state.busy) return;
  state.busy = true;
  resetResults();
  state.file = file;
  $("file-name").textContent = file.name || "photo";
  try {
    progress(0, "Looking for splices (the slow part)…");
    const body = await (await post("/v1/detect?preview=true")).json();
    state.det = body;
    const maps = body.maps || {};
    state.preview = await loadImage(body.preview);
    if (maps.meanshift) state.maps.meanshift = colourCanvas(await loadImage(maps.meanshift));
    if (maps.ncuts) state.maps.ncuts = colourCanvas(await loadImage(maps.ncuts));
    if (maps.mask) state.maps.outline = outlineCanvas(await loadImage(maps.mask));
    $("results").hidden = false;
    showDetection(body);
    draw();
    progress(1, "Comparing the pixels with the claimed EXIF…");
    if (state.info && state.info.check_exif && state.info.check_exif !== "available") {
      $("exif-status").textContent = state.info.check_exif;
    } else {
      try {
        state.check = await (await post("/v1/check-exif")).json();
        showCheck(state.check);
      } catch (e) {
        $("exif-status").textContent = "EXIF check failed: " + e.message;
      }
    }
    if (state.info && state.info.index) {
      progress(2, "Finding the nearest reference photos…");
      try {
        state.lookup = await (await post("/v1/lookup")).json();
        showLookup(state.lookup);
      } catch (e) {
        $("camera-status").textContent = "Lookup failed: " + e.message;
      }
    } else {
      $("camera-status").textContent = "This service was started without a reference index (--index), so it cannot name a likely camera.";
    }
    progress(3, "Done.");
    setTimeout(() => progress(null), 800);
  } catch (e) {
    progress(null);
    showError("Could not analyse " + (file.name || "the photo") + ": " + e.message);
  } finally {
    state.busy = false;
  }
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function stem() { return (state.file && state.file.name ? state.file.name.replace(/\.[^.]*$/, "") : "photo"); }

function setupDownloads() {
  $("dl-json").addEventListener("click", () => {
    const det = state.det ? { ...state.det } : {};
    delete det.preview;
    const all = { file: state.file && state.file.name, detection: det.detection, check_exif: state.check, lookup: state.lookup };
    download(new Blob([JSON.stringify(all, null, 2)], { type: "application/json" }), stem() + ".exiflang.json");
  });
  $("dl-png").addEventListener("click", () => $("overlay").toBlob((b) => download(b, stem() + ".overlay.png"), "image/png"));
  $("dl-npz").addEventListener("click", async () => {
    if (!state.file) return;
    progress(0, "Recomputing the maps for the npz file…");
    try {
      const resp = await post("/v1/detect?format=npz");
      download(await resp.blob(), stem() + ".npz");
    } catch (e) {
      showError("npz download failed: " + e.message);
    } finally {
      progress(null);
    }
  });
}

function setupInput() {
  const drop = $("drop"), input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => { if (input.files.length) analyse(input.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  $("exif-more").addEventListener("click", () => {
    const rest = $("exif-unscored");
    rest.hidden = !rest.hidden;
    $("exif-more").setAttribute("aria-expanded", String(!rest.hidden));
    $("exif-more").textContent = (rest.hidden ? "Show " : "Hide ") + rest.children.length + " more claimed tags (not scored)";
  });
  $("votes-more").addEventListener("click", () => {
    const rest = $("votes-more-rows");
    rest.hidden = !rest.hidden;
    $("votes-more").setAttribute("aria-expanded", String(!rest.hidden));
    $("votes-more").textContent = (rest.hidden ? "Show " : "Hide ") + rest.children.length + " more tags";
  });
  $("opacity").addEventListener("input", draw);
  $("outline").addEventListener("change", draw);
  for (const r of document.querySelectorAll("input[name=map]")) r.addEventListener("change", draw);
}

function describeCard(info) {
  const m = info.model || {};
  const summary = m.summary || (m.card && m.card.summary) || "no model card: what it was trained on is not known";
  $("model-line").textContent = "Model" + (m.name && m.name !== "model" ? " " + m.name : "") + ": " + summary
    + (info.index ? "; reference index: " + info.index.name + (info.index.size ? " (" + info.index.size + " photos)" : "")
                  : "; no reference index");
  $("card").textContent = JSON.stringify(m, null, 2);
  $("card-box").hidden = false;
}

async function loadInfo() {
  try {
    const resp = await fetch("/v1/model", { headers: authHeaders() });
    if (resp.status === 401) {
      $("token-box").hidden = false;
      $("model-line").textContent = "This service needs an access token: enter it below.";
      return;
    }
    if (!resp.ok) throw new Error(await readError(resp));
    state.info = await resp.json();
    describeCard(state.info);
  } catch (e) {
    $("model-line").textContent = "The model's card could not be read: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupInput();
  setupDownloads();
  $("token").addEventListener("change", loadInfo);
  loadInfo();
});
