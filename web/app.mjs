// mnist-edge web page: draw or drop a digit, classify it with the pixels-in ONNX model.
//
// The model takes the grayscale pixels as they are (uint8 [height, width], any size, any
// polarity) and does all the MNIST preprocessing in its graph; this file only turns what the
// canvas holds into luminance. Runtime: onnxruntime-web's WebAssembly backend, served from
// ./vendor/ (copied there by `npm ci`); models and mnist.meta.json from ./models/.

const VENDOR = new URL("./vendor/", import.meta.url);
const MODELS = new URL("./models/", import.meta.url);
const META_FILE = "mnist.meta.json";
const MAX_PIXELS = 16_000_000; // a bigger picture is refused, not run
const STROKE = 18; // pen width on the 280x280 pad (MNIST strokes are ~2-3 px of 28)

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const pen = pad.getContext("2d", { willReadFrequently: true });

let ort = null; // the onnxruntime-web module
let meta = null; // mnist.meta.json
let current = null; // { precision, format, file, entry, session }
const sessions = new Map(); // "fp32.onnx" -> InferenceSession
let queue = Promise.resolve(); // one session.run at a time
let lastInput = null; // { pixels, height, width } of the last classified picture
let padPicture = false; // the pad shows a dropped or pasted picture, not a drawing

class PageError extends Error {}

// ---------------------------------------------------------------- messages and state

function showMessage(text, kind = "info") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").textContent = "";
}

function firstLine(err) {
  const text = String(err?.message ?? err ?? "unknown error").trim();
  return text.split("\n")[0].replace(/[.\s]+$/, "");
}

function setState(state) {
  document.body.dataset.state = state;
}

// ---------------------------------------------------------------- models

async function loadMeta() {
  let response;
  try {
    response = await fetch(new URL(META_FILE, MODELS));
  } catch (err) {
    throw new PageError(`Could not fetch ${META_FILE} (${firstLine(err)}): is the server (make web) running?`);
  }
  if (!response.ok) {
    throw new PageError(
      `Could not fetch ${META_FILE} (HTTP ${response.status}): export the pixels-in models first (make export), then reload.`,
    );
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new PageError(`${META_FILE} is not valid JSON (${firstLine(err)}): export the models again (make export).`);
  }
  if (data?.format !== 1 || typeof data.models !== "object" || !data.models.fp32) {
    throw new PageError(`${META_FILE} is not an mnist-edge format-1 file with an fp32 model: export the models again.`);
  }
  return data;
}

function modelFile(precision, format) {
  const entry = meta?.models?.[precision];
  if (!entry) return null;
  return format === "ort" ? entry.ort_file ?? null : entry.file;
}

async function useModel(precision, format = "onnx") {
  const file = modelFile(precision, format);
  if (!file) {
    throw new PageError(
      `There is no ${precision} .${format} model in ${META_FILE}` +
        (format === "ort" ? " (export with --ort to get the .ort files)." : "."),
    );
  }
  const key = `${precision}.${format}`;
  let session = sessions.get(key);
  if (!session) {
    try {
      session = await ort.InferenceSession.create(new URL(file, MODELS).href, {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
      });
    } catch (err) {
      throw new PageError(
        `Could not load the ${precision} model ${file}: ${firstLine(err)}. Export it again (make export) and reload the page.`,
      );
    }
    sessions.set(key, session);
  }
  current = { precision, format, file, entry: meta.models[precision], session };
  syncSwitch();
  renderInfo();
  return { precision, format, file };
}

// ---------------------------------------------------------------- inference

// Run the current model on one grayscale picture: pixels is a Uint8Array of height*width.
function classify(pixels, height, width) {
  const run = async () => {
    if (!current) throw new PageError("No model is loaded: see the message above, fix it and reload the page.");
    const input = new ort.Tensor("uint8", pixels, [height, width]);
    const [probName, labelName] = current.entry.outputs ?? ["probabilities", "label"];
    const outputs = await current.session.run({ [current.entry.input ?? "pixels"]: input });
    return {
      probabilities: Array.from(outputs[probName].data),
      label: Number(outputs[labelName].data[0]),
      model: current.file,
    };
  };
  const result = queue.then(run, run);
  queue = result.catch(() => undefined);
  return result;
}

// RGBA (getImageData) -> uint8 luminance, ITU-R 601 weights as Pillow's convert("L"). Transparent
// pixels are laid on a background that contrasts with the ink, as mnist-infer's decoder does.
function luminance({ data, width, height }) {
  const n = width * height;
  const gray = new Uint8Array(n);
  let opaque = true;
  for (let i = 0; i < n; i++) {
    if (data[4 * i + 3] !== 255) {
      opaque = false;
      break;
    }
  }
  if (opaque) {
    for (let i = 0; i < n; i++) {
      const j = 4 * i;
      gray[i] = (data[j] * 19595 + data[j + 1] * 38470 + data[j + 2] * 7471 + 0x8000) >> 16;
    }
    return gray;
  }
  const value = new Float64Array(n);
  let inkSum = 0;
  let weight = 0;
  for (let i = 0; i < n; i++) {
    const j = 4 * i;
    const alpha = data[j + 3] / 255;
    value[i] = data[j] * 0.299 + data[j + 1] * 0.587 + data[j + 2] * 0.114;
    inkSum += value[i] * alpha;
    weight += alpha;
  }
  const background = weight > 0 && inkSum / weight >= 128 ? 0 : 255;
  for (let i = 0; i < n; i++) {
    const alpha = data[4 * i + 3] / 255;
    gray[i] = Math.min(255, Math.max(0, Math.floor(value[i] * alpha + background * (1 - alpha) + 0.5)));
  }
  return gray;
}

function isBlank(pixels) {
  const first = pixels[0];
  return pixels.every((v) => v === first);
}

// A picture file (Blob) -> { pixels, height, width, bitmap }; throws PageError when it is not a picture.
async function pixelsFromBlob(blob, name = "the file") {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new PageError(`${name} is not a picture this browser can read: use a PNG, JPEG, GIF, WebP or BMP file.`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    throw new PageError(`${name} is ${width}x${height} pixels, more than the ${MAX_PIXELS / 1e6} million this page takes: crop or shrink it.`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return { pixels: luminance(ctx.getImageData(0, 0, width, height)), height, width, bitmap };
}

// ---------------------------------------------------------------- rendering

function labels() {
  return meta?.labels ?? ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
}

function buildBars() {
  const list = $("bars");
  list.replaceChildren();
  for (const name of labels()) {
    const item = document.createElement("li");
    item.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    item.querySelector(".name").textContent = name;
    list.append(item);
  }
}

function renderResult(result) {
  const names = labels();
  const items = $("bars").children;
  result.probabilities.forEach((p, i) => {
    items[i].querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    items[i].querySelector(".value").textContent = p.toFixed(4);
    items[i].classList.toggle("top", i === result.label);
  });
  $("label").textContent = names[result.label] ?? String(result.label);
  $("confidence").textContent = `${(100 * result.probabilities[result.label]).toFixed(2)}% · ${result.model}`;
  document.body.dataset.seq = String(Number(document.body.dataset.seq ?? 0) + 1);
}

function clearResult() {
  $("label").textContent = "–";
  $("confidence").textContent = "";
  for (const item of $("bars").children) {
    item.querySelector(".fill").style.width = "0";
    item.querySelector(".value").textContent = "";
    item.classList.remove("top");
  }
}

function renderInfo() {
  const info = $("model-info");
  info.replaceChildren();
  const entry = current.entry;
  const pct = (x) => (typeof x === "number" ? `${(100 * x).toFixed(2)}%` : "–");
  const pick = (object, keys) =>
    keys.filter((k) => object?.[k] !== undefined && object[k] !== null).map((k) => `${k} ${object[k]}`).join(", ");
  const recipe = pick(meta.recipe, ["epochs", "batch_size", "lr", "optimizer", "train_limit", "seed"]);
  const versions = pick(meta.versions, ["mnist_edge", "torch", "onnx", "onnxruntime"]);
  const rows = [
    ["file", `${current.file} (${current.precision})`],
    ["size", typeof entry.bytes === "number" ? `${(entry.bytes / 1024).toFixed(1)} KiB` : "–"],
    ["accuracy on test pictures", pct(entry.test_accuracy)],
    ["agreement with mnist-infer", pct(entry.agreement)],
    ["dataset", meta.dataset ?? "–"],
    ["model version", meta.model_version || "–"],
    ["trained from", meta.source_sha256 ? `sha256 ${meta.source_sha256.slice(0, 16)}…` : "–"],
    ["recipe", recipe || "–"],
    ["versions", versions || "–"],
  ];
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    dd.dataset.field = name;
    info.append(dt, dd);
  }
  $("meta-json").textContent = JSON.stringify(meta, null, 2);
}

function syncSwitch() {
  for (const input of document.querySelectorAll('input[name="format"]')) {
    const precision = current?.precision ?? "fp32";
    input.disabled = input.value === "ort" && !modelFile(precision, "ort");
    input.checked = input.value === (current?.format ?? "onnx");
  }
  for (const input of document.querySelectorAll('input[name="precision"]')) {
    input.disabled = !meta?.models?.[input.value];
    input.checked = input.value === (current?.precision ?? "fp32");
  }
}

// ---------------------------------------------------------------- user actions

async function show(input, blankMessage) {
  if (isBlank(input.pixels)) {
    clearResult();
    showMessage(blankMessage, "error");
    return;
  }
  lastInput = input;
  try {
    const result = await classify(input.pixels, input.height, input.width);
    clearMessage();
    renderResult(result);
  } catch (err) {
    showMessage(err instanceof PageError ? err.message : `The model failed on this picture: ${firstLine(err)}`, "error");
  }
}

function classifyPad() {
  if (padPicture && lastInput) return show(lastInput, ""); // the picture itself, not its thumbnail
  const image = pen.getImageData(0, 0, pad.width, pad.height);
  return show(
    { pixels: luminance(image), height: pad.height, width: pad.width },
    "The canvas is blank: draw a digit (or drop a picture of one) first.",
  );
}

function clearPad() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
  padPicture = false;
}

async function openPicture(blob, name) {
  let input;
  try {
    input = await pixelsFromBlob(blob, name);
  } catch (err) {
    clearResult();
    showMessage(err instanceof PageError ? err.message : `${name}: ${firstLine(err)}`, "error");
    return;
  }
  clearPad();
  const scale = Math.min(pad.width / input.width, pad.height / input.height);
  const w = input.width * scale;
  const h = input.height * scale;
  pen.drawImage(input.bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  padPicture = true;
  await show(input, `${name} is blank (every pixel has the same value): use a picture of a digit.`);
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [((event.clientX - rect.left) * pad.width) / rect.width, ((event.clientY - rect.top) * pad.height) / rect.height];
}

function wireDrawing() {
  let last = null;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pad.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    if (padPicture) clearPad(); // drawing over a dropped picture starts afresh
    last = padPoint(event);
    pen.fillStyle = "#111";
    pen.beginPath();
    pen.arc(last[0], last[1], STROKE / 2, 0, 2 * Math.PI);
    pen.fill();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!last) return;
    const point = padPoint(event);
    pen.strokeStyle = "#111";
    pen.lineWidth = STROKE;
    pen.beginPath();
    pen.moveTo(last[0], last[1]);
    pen.lineTo(point[0], point[1]);
    pen.stroke();
    last = point;
  });
  const end = () => {
    if (!last) return;
    last = null;
    classifyPad();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);

  $("clear").addEventListener("click", () => {
    clearPad();
    clearResult();
    lastInput = null;
    clearMessage();
  });
  $("classify").addEventListener("click", () => classifyPad());
  $("file").addEventListener("change", (event) => {
    const file = event.target.files?.[0];
    if (file) openPicture(file, file.name);
    event.target.value = "";
  });
  pad.addEventListener("dragover", (event) => {
    event.preventDefault();
    pad.classList.add("drop");
  });
  pad.addEventListener("dragleave", () => pad.classList.remove("drop"));
  pad.addEventListener("drop", (event) => {
    event.preventDefault();
    pad.classList.remove("drop");
    const file = event.dataTransfer?.files?.[0];
    if (file) openPicture(file, file.name);
    else showMessage("Nothing to read in what was dropped: drop a picture file.", "error");
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items ?? [])].find((it) => it.kind === "file");
    if (!item) return;
    event.preventDefault();
    openPicture(item.getAsFile(), "the pasted picture");
  });
  for (const input of document.querySelectorAll('input[name="precision"], input[name="format"]')) {
    input.addEventListener("change", () => switchModel());
  }
}

async function switchModel() {
  const precision = document.querySelector('input[name="precision"]:checked').value;
  let format = document.querySelector('input[name="format"]:checked').value;
  if (!modelFile(precision, format)) format = "onnx";
  try {
    await useModel(precision, format);
    if (lastInput) await show(lastInput, "");
    else clearMessage();
  } catch (err) {
    syncSwitch(); // back to the model that still runs
    showMessage(err instanceof PageError ? err.message : firstLine(err), "error");
  }
}

// ---------------------------------------------------------------- start

async function start() {
  clearPad();
  buildBars();
  wireDrawing();
  try {
    ort = await import(new URL("ort.wasm.min.mjs", VENDOR).href);
  } catch (err) {
    throw new PageError(`onnxruntime-web could not be loaded (${firstLine(err)}): run \`npm ci\` in web/ and reload.`);
  }
  ort.env.wasm.wasmPaths = VENDOR.href;
  ort.env.wasm.numThreads = 1; // one thread is plenty, and needs no cross-origin isolation
  $("ort-version").textContent = ort.env.versions?.web ?? "";
  meta = await loadMeta();
  buildBars();
  await useModel("fp32", "onnx");
  showMessage("Draw a digit on the pad, or drop or paste a picture of one.", "info");
}

const ready = start().then(
  () => setState("ready"),
  (err) => {
    setState("error");
    showMessage(err instanceof PageError ? err.message : `The page could not start: ${firstLine(err)}`, "error");
  },
);

// For tests and the console: the same functions the page uses.
window.mnistEdge = { ready, useModel, classify, pixelsFromBlob, luminance };
