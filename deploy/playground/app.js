// The playground: send one image to /predictions/<model> (and /explanations/<model> when the
// overlay is on), show the top-k as bars, the latency and the heat map. No secret lives here:
// nginx adds the inference key (scripts/nginx_front.py start --add-key).
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);
let current = null; // {blob, url, id} of the image on show
let latest = 0; // the newest image's id: answers for an older one are dropped

// What a person should read for each refusal (the server's own message is added after it).
function explainFailure(status, body) {
  const type = body && body.type;
  const message = body && body.message ? ` (${body.message})` : "";
  if (status === 413) return `That file is too large for this server${message}.`;
  if (status === 415) return `That image format is not supported: send a JPEG, PNG, WebP, GIF or BMP${message}.`;
  if (status === 400 && (type === "NotAnImage" || type === "EmptyInput"))
    return `That file is not an image${message}.`;
  if (status === 400) return `The server could not use that image${message}.`;
  if (status === 404) return `This server has no model named "${modelName()}".`;
  if (status === 429) return "Too many requests from you: wait a moment and try again.";
  if (status === 503) return `The server is busy or starting: try again in a few seconds${message}.`;
  if (status === 507) return "The server ran out of memory on this image.";
  return `The server failed on this request (HTTP ${status})${message}.`;
}

function modelName() {
  const select = $("model");
  return (select.hidden ? $("model-name").value : select.value).trim();
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function post(kind, blob) {
  // multipart: TorchServe hands the handler form fields (top_k), not query parameters
  const form = new FormData();
  form.append("data", blob);
  form.append("top_k", String(TOP_K));
  const started = performance.now();
  const response = await fetch(`/${kind}/${encodeURIComponent(modelName())}`, {
    method: "POST",
    body: form,
  });
  const ms = performance.now() - started;
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null; // nginx's own refusals (413, 429) are HTML
  }
  return { ok: response.ok, status: response.status, body, ms };
}

function renderBars(answer) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const entry of answer.top_k) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    const percent = (entry.probability * 100).toFixed(1);
    bar.setAttribute("aria-label", `${entry.label}: ${percent}%`);
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0.5, entry.probability * 100)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${percent}%`;
    item.append(name, bar, value);
    bars.append(item);
  }
}

async function explain() {
  const figure = $("overlay-figure");
  if (!current || !$("explain-toggle").checked) {
    figure.hidden = true;
    return;
  }
  const asked = current;
  $("status").textContent = "Working out where the model looked…";
  let reply;
  try {
    reply = await post("explanations", asked.blob);
  } catch (error) {
    reply = { ok: false, status: 0, body: { message: error.message } };
  }
  if (asked.id !== latest) return; // a newer image is on show
  $("status").textContent = "";
  if (!reply.ok) {
    figure.hidden = true;
    showError(reply.status ? explainFailure(reply.status, reply.body)
      : `Could not reach the server (${reply.body.message}).`);
    return;
  }
  const explanation = reply.body.explanation;
  $("overlay").src = `data:image/png;base64,${explanation.overlay_png}`;
  $("overlay-caption").textContent =
    `Where the model looked for "${explanation.target}" (${explanation.method}, ${Math.round(reply.ms)} ms)`;
  figure.hidden = false;
}

async function classify(blob) {
  if (!modelName()) {
    showError("Type the name of a model served here first.");
    return;
  }
  showError("");
  if (current) URL.revokeObjectURL(current.url);
  latest += 1;
  current = { blob, url: URL.createObjectURL(blob), id: latest };
  const asked = current;
  $("status").textContent = "Asking the model…";
  $("answer").setAttribute("aria-busy", "true");
  let reply;
  try {
    reply = await post("predictions", blob);
  } catch (error) {
    if (asked.id !== latest) return;
    $("status").textContent = "";
    showError(`Could not reach the server (${error.message}).`);
    return;
  }
  if (asked.id !== latest) return; // a newer image is on show
  $("status").textContent = "";
  $("answer").removeAttribute("aria-busy");
  if (!reply.ok) {
    $("answer").hidden = true;
    showError(explainFailure(reply.status, reply.body));
    return;
  }
  $("preview").src = current.url;
  $("label").textContent = reply.body.label;
  $("confidence").textContent = `${(reply.body.confidence * 100).toFixed(1)}%`;
  renderBars(reply.body);
  $("latency").textContent = `${Math.round(reply.ms)} ms`;
  $("overlay-figure").hidden = true;
  $("answer").hidden = false;
  await explain();
}

async function loadModels() {
  let models = [];
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) models = (await response.json()).models || [];
  } catch (_) {
    models = [];
  }
  if (models.length) {
    for (const name of models) $("model").append(new Option(name, name));
    $("model").hidden = false;
  } else {
    $("model-name").hidden = false;
  }
}

function firstImage(items) {
  for (const item of items || []) {
    const file = item.getAsFile ? item.getAsFile() : item;
    if (file) return file;
  }
  return null;
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file);
    event.target.value = ""; // the same file again is a new request
  });
  drop.addEventListener("click", (event) => {
    if (event.target.tagName !== "LABEL") $("file").click();
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = firstImage(event.dataTransfer.files);
    if (file) classify(file);
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.items);
    if (file) classify(file);
  });
  $("explain-toggle").addEventListener("change", explain);
  $("model").addEventListener("change", () => current && classify(current.blob));
}

wire();
loadModels();
