// The page of `transformer serve`: translate a sentence, then draw the cross-attention of the best translation.
//
// One request does the work: POST /attention answers the translation, the n-best list with scores, the
// SentencePiece pieces of both sides and every layer's and head's cross-attention (layers x heads x target x
// source probabilities), and the word alignment of one decoder layer. The heat map is redrawn here from those
// numbers when the layer or head changes; a new layer also asks the service for that layer's alignment. With
// the CTranslate2 engine /attention answers 400 (no attention weights): the page then asks POST /translate
// (LibreTranslate's API) and shows the translation and alternatives with a note.
//
// Directions: GET /languages lists each source language with its targets. A model of several directions gets a
// selector; every request names the chosen direction (source, target), as `transformer translate` is told it with
// --source-lang/--target-lang. A multilingual model's source starts with a target-language tag ("<2de>"): the heat
// map shows it as the model reads it, the word alignment leaves it out (the answer's source_prefix pieces).
//
// Heat map: an SVG, one <rect class="cell" data-row=t data-col=s> per (target piece t, source piece s).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const FONT_FAMILY = '"DejaVu Sans", "Segoe UI", system-ui, sans-serif';
const WORD_START = "\u2581"; // SentencePiece's word-boundary marker
// ColorBrewer's "Blues" (white -> navy): sequential, legible in grey, and the orange alignment stands out on it.
const BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"];
const LABEL_ANGLE = 55; // degrees: the source labels slant up and to the right

const state = {
  data: null,           // the last /attention answer
  query: null,          // the request that gave it
  alignmentLayer: null, // the 1-based layer of data.alignment
  request: 0,           // counts translations, so that a late answer to an old one is dropped
  layerRequest: 0,      // counts alignment requests (a new translation also makes older ones late)
  source: "en",
  target: "de",
  names: {},            // language code -> name, from /languages
};

const $ = (id) => document.getElementById(id);

// ---- small helpers ------------------------------------------------------------------------------------------

function svg(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function svgText(parent, x, y, text, attrs) {
  const node = svg("text", { x, y, ...attrs }, parent);
  node.textContent = text;
  return node;
}

const measureContext = document.createElement("canvas").getContext("2d");
function textWidth(text, px) {
  measureContext.font = `${px}px ${FONT_FAMILY}`;
  return measureContext.measureText(text).width;
}

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

function hexToRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}
const RAMP = BLUES.map(hexToRgb);

/** The colour of probability p on a scale from 0 to scale, interpolated along the ramp. */
function colour(p, scale) {
  const x = clamp(p / scale, 0, 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  const rgb = RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
  return `rgb(${rgb.join(",")})`;
}

/** The 0-based word of each piece (as transformer.inference.alignment.word_ids): a piece that starts with '▁'
 * starts a word, unless the word so far is a bare '▁'. */
function wordIds(pieces) {
  const ids = [];
  let word = -1;
  let bare = false;
  for (const piece of pieces) {
    if (word < 0 || (piece.startsWith(WORD_START) && !bare)) {
      word += 1;
      bare = true;
    }
    bare = bare && piece === WORD_START;
    ids.push(word);
  }
  return ids;
}

/** Words of pieces (EOS excluded): [{text, first, last}] with the first and last piece index of each word. */
function words(pieces) {
  const ids = wordIds(pieces);
  const out = [];
  ids.forEach((w, i) => {
    if (!out[w]) out[w] = { text: "", first: i, last: i };
    out[w].text += pieces[i].split(WORD_START).join("");
    out[w].last = i;
  });
  return out;
}

async function requestJSON(method, path, body) {
  const options = { method, headers: { "Content-Type": "application/json" } };
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    // not JSON: reported by status below
  }
  if (!response.ok) {
    const error = new Error((data && data.error) || `${method} ${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---- start-up: wait for the model, ask its languages --------------------------------------------------------

async function start() {
  $("translate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    translate();
  });
  for (const button of document.querySelectorAll("button.example")) {
    button.addEventListener("click", () => {
      $("source-text").value = button.textContent;
      translate();
    });
  }
  $("direction-select").addEventListener("change", () => chooseDirection($("direction-select").value));
  $("layer").addEventListener("change", changeLayer);
  $("head").addEventListener("change", () => state.data && drawHeatmap());
  $("show-alignment").addEventListener("change", () =>
    $("heatmap").classList.toggle("hide-alignment", !$("show-alignment").checked));
  window.addEventListener("resize", () => state.data && drawHeatmap());

  if (await connect()) {
    const q = new URLSearchParams(window.location.search).get("q"); // a link can carry a sentence: /?q=...
    if (q) {
      $("source-text").value = q;
      translate();
    }
  }
}

/** Wait for /health (503 while the model loads), then name the translation direction. False: it failed. */
async function connect() {
  for (;;) {
    try {
      const response = await fetch("/health");
      if (response.ok) break;
      const body = await response.json().catch(() => ({}));
      if (body.error) {
        $("status").textContent = "the model could not be loaded";
        showError(`The service could not load its model: ${body.error}`);
        return false;
      }
      $("status").textContent = "loading the model…";
    } catch (_) {
      $("status").textContent = "waiting for the service…";
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  try {
    const languages = await requestJSON("GET", "/languages");
    for (const l of languages) state.names[l.code] = l.name;
    const directions = languages.flatMap((l) => (l.targets || []).map((t) => `${l.code}-${t}`));
    const select = $("direction-select");
    select.replaceChildren(...directions.map((d) => new Option(directionName(d), d)));
    select.hidden = directions.length < 2;
    chooseDirection(directions[0]);
    const shown = directions.length > 1 ? `${directions.length} directions` : directionName(directions[0]);
    $("status").textContent = `model ready · ${shown}`;
    return true;
  } catch (error) {
    $("status").textContent = "the service does not answer";
    showError(`Could not ask the service for its languages: ${error.message}`);
    return false;
  }
}

/** "en-de" -> "English → German" (a code without a name is shown as it is). */
function directionName(direction) {
  const [from, to] = direction.split("-");
  return `${state.names[from] || from} → ${state.names[to] || to}`;
}

/** The direction every request names from now on; a translation of another direction, shown or on its way, is
 * put away. */
function chooseDirection(direction) {
  const [from, to] = direction.split("-");
  if (from !== state.source || to !== state.target) {
    state.data = null;
    state.request += 1; // late answers of the old direction are dropped
    state.layerRequest += 1;
    $("result").hidden = true;
    $("translate-button").disabled = false;
    $("translate-button").textContent = "Translate";
  }
  state.source = from;
  state.target = to;
  $("direction-select").value = direction;
  $("direction").textContent = `· ${directionName(direction)}`;
  $("translation").lang = to;
}

// ---- translating --------------------------------------------------------------------------------------------

async function translate() {
  const q = $("source-text").value.trim();
  if (!q) return;
  const alternatives = clamp(parseInt($("alternatives").value, 10) || 0, 0, 9);
  const id = ++state.request;
  state.layerRequest += 1;
  const button = $("translate-button");
  button.disabled = true;
  button.textContent = "Translating…";
  showError("");
  try {
    const query = { q, alternatives, source: state.source, target: state.target };
    let data;
    try {
      data = await requestJSON("POST", "/attention", query);
    } catch (error) {
      if (error.status !== 400) throw error;
      // No attention (the CTranslate2 engine), or a bad request: /translate says which.
      const plain = await requestJSON("POST", "/translate", {
        q, source: state.source, target: state.target, format: "text", alternatives,
      });
      if (id === state.request) showPlain(plain, error.message);
      return;
    }
    if (id !== state.request) return;
    state.data = data;
    state.query = query;
    state.alignmentLayer = data.layers; // the service aligns with the last layer unless asked otherwise
    showAttention();
  } catch (error) {
    if (id === state.request) showError(error.message);
  } finally {
    if (id === state.request) {
      button.disabled = false;
      button.textContent = "Translate";
    }
  }
}

function showNbest(items) {
  const list = $("nbest");
  list.replaceChildren();
  for (const item of items) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "hyp";
    text.textContent = item.text;
    li.appendChild(text);
    if (item.score !== undefined) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = item.score.toFixed(3);
      score.title = "length-normalised log-probability (higher is better)";
      li.insertBefore(score, text);
    }
    list.appendChild(li);
  }
}

/** A translation without attention (CTranslate2 engine): the text and alternatives, and why there is no more. */
function showPlain(answer, why) {
  state.data = null;
  $("translation").textContent = answer.translatedText;
  showNbest([answer.translatedText, ...(answer.alternatives || [])].map((text) => ({ text })));
  $("nbest-note").textContent = "· the beam search's best translations";
  $("alignment-section").hidden = true;
  $("attention-panel").hidden = true;
  $("note").textContent = `No attention view: ${why}. Shown: the translation and its alternatives.`;
  $("note").hidden = false;
  $("result").classList.add("no-attention");
  $("result").hidden = false;
}

function showAttention() {
  const d = state.data;
  $("translation").textContent = d.translation;
  showNbest(d.nbest);
  $("nbest-note").textContent = "· beam search; score: length-normalised log-probability";
  $("note").hidden = true;
  $("alignment-section").hidden = false;
  $("attention-panel").hidden = false;
  $("result").classList.remove("no-attention");
  $("result").hidden = false;

  const layer = $("layer");
  const keepLayer = layer.options.length === d.layers ? layer.value : String(d.layers - 1);
  layer.replaceChildren(...Array.from({ length: d.layers }, (_, l) =>
    new Option(`layer ${l + 1}${l === d.layers - 1 ? " (last)" : ""}`, String(l))));
  layer.value = keepLayer;
  const head = $("head");
  const keepHead = head.options.length === d.heads + 1 ? head.value : "mean";
  head.replaceChildren(new Option(`mean of the ${d.heads} heads`, "mean"),
    ...Array.from({ length: d.heads }, (_, h) => new Option(`head ${h + 1}`, String(h))));
  head.value = keepHead;

  drawHeatmap();
  drawAlignment();
  if (Number(layer.value) + 1 !== state.alignmentLayer) changeLayer(); // the kept layer's alignment
}

/** A new layer: redraw the heat map now, and ask the service for that layer's word alignment. */
async function changeLayer() {
  if (!state.data) return;
  drawHeatmap();
  const layer = Number($("layer").value) + 1;
  const id = ++state.layerRequest;
  try {
    const data = await requestJSON("POST", "/attention", { ...state.query, layer });
    if (id !== state.layerRequest || !state.data || data.translation !== state.data.translation) return;
    state.data.alignment = data.alignment;
    state.alignmentLayer = layer;
    drawHeatmap();
    drawAlignment();
  } catch (error) {
    if (id === state.layerRequest) showError(`alignment of layer ${layer}: ${error.message}`);
  }
}

// ---- the heat map -------------------------------------------------------------------------------------------

/** The (T, S) matrix shown: one head of one layer, or the mean over the layer's heads. */
function shownMatrix() {
  const heads = state.data.cross[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "mean") return heads[Number(head)];
  return heads[0].map((row, t) => row.map((_, s) => heads.reduce((sum, h) => sum + h[t][s], 0) / heads.length));
}

function drawHeatmap() {
  const d = state.data;
  const src = d.source_tokens;
  const tgt = d.target_tokens;
  const matrix = shownMatrix();
  // Colours run from 0 to the largest weight shown (rounded up to a tenth), so that a spread-out head is as
  // legible as a sharp one; the colour bar says where the scale ends.
  const scale = Math.max(0.1, Math.ceil(Math.max(...matrix.flat()) * 10 - 1e-9) / 10);
  const root = $("heatmap");
  root.replaceChildren();

  // Geometry: row labels | grid | colour bar; slanted column labels and the axis title above.
  const px = 13;
  const rowLabelWidth = Math.max(...tgt.map((t) => textWidth(t, px))) + 10;
  const colLabelWidth = Math.max(...src.map((t) => textWidth(t, px)));
  const angle = (LABEL_ANGLE * Math.PI) / 180;
  const available = Math.max(360, $("heatmap-box").clientWidth - 4);
  const left = 22 + rowLabelWidth;
  const legendWidth = 70;
  const overhang = colLabelWidth * Math.cos(angle); // how far the last slanted label reaches right
  const cell = Math.floor(clamp((available - left - legendWidth - 10) / src.length, 16, 40));
  const top = 24 + colLabelWidth * Math.sin(angle) + 10;
  const width = left + src.length * cell + Math.max(legendWidth, overhang + 8);
  const height = top + tgt.length * cell + 8;
  root.setAttribute("width", Math.ceil(width));
  root.setAttribute("height", Math.ceil(height));
  root.setAttribute("viewBox", `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`);

  // Axis titles.
  const gridMiddle = left + (src.length * cell) / 2;
  svgText(root, gridMiddle, 14, `source pieces (${state.source}) · the keys attended to`,
    { class: "axis-title", "text-anchor": "middle" });
  svgText(root, 0, 0, `target pieces (${state.target}) · one row per output step`, {
    class: "axis-title", "text-anchor": "middle",
    transform: `translate(12 ${top + (tgt.length * cell) / 2}) rotate(-90)`,
  });

  // Token labels.
  const colLabels = src.map((piece, s) => {
    const x = left + (s + 0.5) * cell;
    const y = top - 6;
    return svgText(root, x, y, piece, {
      class: "label", "data-col": s, transform: `rotate(${-LABEL_ANGLE} ${x} ${y})`,
    });
  });
  const rowLabels = tgt.map((piece, t) => svgText(root, left - 6, top + (t + 0.5) * cell, piece, {
    class: "label", "data-row": t, "text-anchor": "end", "dominant-baseline": "central",
  }));

  // Cells.
  const grid = svg("g", { class: "cells" }, root);
  matrix.forEach((row, t) => row.forEach((p, s) => {
    const rect = svg("rect", {
      class: "cell", "data-row": t, "data-col": s, "data-p": p.toFixed(4),
      x: left + s * cell, y: top + t * cell, width: cell, height: cell, fill: colour(p, scale),
    }, grid);
    svg("title", {}, rect).textContent = `${tgt[t]} ← ${src[s]}: ${p.toFixed(3)}`;
  }));

  // Word alignment: one box per link, around the pieces of the source word (columns) and target word (rows).
  const prefix = d.source_prefix || 0; // a target-language tag first: no word of the text
  const srcWords = words(src.slice(prefix, -1)).map((w) => ({ ...w, first: w.first + prefix, last: w.last + prefix }));
  const tgtWords = words(tgt.slice(0, -1));
  d.alignment.forEach(([i, j], k) => {
    const a = srcWords[i];
    const b = tgtWords[j];
    if (!a || !b) return;
    svg("rect", {
      class: "align-box", "data-link": k, x: left + a.first * cell + 1, y: top + b.first * cell + 1,
      width: (a.last - a.first + 1) * cell - 2, height: (b.last - b.first + 1) * cell - 2, rx: 2,
    }, root);
  });
  root.classList.toggle("hide-alignment", !$("show-alignment").checked);

  // Colour bar.
  const barX = left + src.length * cell + 14;
  const barHeight = clamp(tgt.length * cell, 80, 220);
  const gradient = svg("linearGradient", { id: "ramp", x1: 0, y1: 1, x2: 0, y2: 0 }, svg("defs", {}, root));
  BLUES.forEach((c, i) => svg("stop", { offset: i / (BLUES.length - 1), "stop-color": c }, gradient));
  svg("rect", { x: barX, y: top, width: 12, height: barHeight, fill: "url(#ramp)", stroke: "#b9c0cc" }, root);
  for (const v of [0, 0.5, 1]) {
    svgText(root, barX + 16, top + (1 - v) * barHeight, (v * scale).toFixed(2),
      { class: "tick", "dominant-baseline": "central" });
  }

  // Pointing at a cell: its labels light up and the readout says what it is.
  root.onmouseover = (event) => {
    const target = event.target;
    if (!target.classList || !target.classList.contains("cell")) return;
    const t = Number(target.dataset.row);
    const s = Number(target.dataset.col);
    rowLabels.forEach((label, i) => label.classList.toggle("hot", i === t));
    colLabels.forEach((label, i) => label.classList.toggle("hot", i === s));
    $("readout").textContent =
      `predicting “${tgt[t]}”, the decoder gives “${src[s]}” attention ${matrix[t][s].toFixed(3)}`;
  };
  root.onmouseleave = () => {
    for (const label of [...rowLabels, ...colLabels]) label.classList.remove("hot");
  };

  const layer = Number($("layer").value) + 1;
  const chosen = $("head").value;
  const head = chosen === "mean" ? `the mean of its ${d.heads} heads` : `head ${Number(chosen) + 1} of ${d.heads}`;
  $("heatmap-caption").textContent =
    `Cross-attention of decoder layer ${layer} of ${d.layers}, ${head}. Row t shows where the decoder looked ` +
    "in the source (columns) while predicting target piece t: a probability distribution over the source " +
    "pieces, so each row sums to 1. Pieces are SentencePiece units; ▁ marks the start of a word and </s> the " +
    "end of the sentence" + (prefix ? `; ${src[0]}, first, tells the model the target language (the word ` +
    "alignment leaves it out)" : "") + `. Colours run from 0 to ${scale.toFixed(1)} (the bar). Orange boxes: the ` +
    `word alignment of layer ${state.alignmentLayer}.`;
}

// ---- the word alignment -------------------------------------------------------------------------------------

/** Source words (left) linked to target words (right): each target word to the source word it attends to most. */
function drawAlignment() {
  const d = state.data;
  const srcWords = words(d.source_tokens.slice(d.source_prefix || 0, -1));
  const tgtWords = words(d.target_tokens.slice(0, -1));
  const root = $("alignment");
  root.replaceChildren();
  const px = 14;
  const rowHeight = 22;
  const srcWidth = Math.max(0, ...srcWords.map((w) => textWidth(w.text, px)));
  const tgtWidth = Math.max(0, ...tgtWords.map((w) => textWidth(w.text, px)));
  const gap = 90;
  const x0 = srcWidth + 4;
  const x1 = x0 + gap;
  const top = 20;
  const rows = Math.max(srcWords.length, tgtWords.length);
  const width = x1 + tgtWidth + 8;
  root.setAttribute("width", Math.ceil(width));
  root.setAttribute("height", top + rows * rowHeight);
  svgText(root, x0, 12, state.source, { class: "axis-title", "text-anchor": "end" });
  svgText(root, x1, 12, state.target, { class: "axis-title" });

  const y = (i) => top + (i + 0.5) * rowHeight;
  const links = d.alignment.map(([i, j], k) => svg("line", {
    class: "link", "data-link": k, x1: x0 + 6, y1: y(i), x2: x1 - 6, y2: y(j),
  }, root));
  const srcLabels = srcWords.map((w, i) => svgText(root, x0, y(i), w.text,
    { class: "word", "text-anchor": "end", "dominant-baseline": "central", "data-word": i }));
  const tgtLabels = tgtWords.map((w, j) => svgText(root, x1, y(j), w.text,
    { class: "word", "dominant-baseline": "central", "data-word": j }));

  // Pointing at a word lights up its links, the words at their other ends and their boxes in the heat map.
  const light = (side, index) => {
    const on = new Set();
    d.alignment.forEach(([i, j], k) => (side === "src" ? i : j) === index && on.add(k));
    links.forEach((line, k) => line.classList.toggle("hot", on.has(k)));
    srcLabels.forEach((label, i) => label.classList.toggle("hot", [...on].some((k) => d.alignment[k][0] === i)));
    tgtLabels.forEach((label, j) => label.classList.toggle("hot", [...on].some((k) => d.alignment[k][1] === j)));
    for (const box of $("heatmap").querySelectorAll(".align-box")) {
      box.classList.toggle("hot", on.has(Number(box.dataset.link)));
    }
  };
  srcLabels.forEach((label, i) => label.addEventListener("mouseenter", () => light("src", i)));
  tgtLabels.forEach((label, j) => label.addEventListener("mouseenter", () => light("tgt", j)));
  root.onmouseleave = () => light("none", -1);

  $("alignment-caption").textContent =
    `Each ${state.target} word is linked to the ${state.source} word it attends to most in decoder layer ` +
    `${state.alignmentLayer} (mean of the heads; a word's attention is the sum over its pieces, </s>` +
    `${d.source_prefix ? " and the target-language tag" : ""} left out).`;
}

start();
