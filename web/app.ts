/// <reference lib="dom" />
/**
 * The demo page (web/index.html): loads a target and a draft from safetensors (URL or drag and
 * drop), then runs base and speculative decoding of the same prompt with the same settings,
 * streaming both, colouring each speculative token by where it came from, and comparing the
 * measured speedup with the one Leviathan et al.'s formula predicts from the measured acceptance
 * and draft/target cost. Bundled by web/build.ts; everything it uses is the public API of mod.ts.
 *
 * `globalThis.specdecDemo` exposes the page's state and last results (tests/browser_test.ts
 * reads them).
 *
 * @module
 */
import {
  baseDecoding,
  Decoder,
  type DecodingResult,
  type Gpu,
  GpuTimer,
  requestGpu,
  speculativeDecoding,
  type SpeculativeResult,
} from "../mod.ts";
import { type Provenance, provenance } from "./provenance.ts";
import { fitAlpha, predictedSpeedup } from "./speedup.ts";
import { type LossPoint, lossSvg, trainTinyPair } from "./train.ts";

/** What the page exposes on `globalThis.specdecDemo`. */
export interface DemoHandle {
  /** starting, no-webgpu, loading, ready, running, training, done or error. */
  state: string;
  /** The last error's message. */
  error?: string;
  /** The adapter's name. */
  adapter?: string;
  /** The losses of the last training in the page. */
  training?: LossPoint[];
  /** The last run's inputs and outputs. */
  last?: {
    prompt: number[];
    seqLen: number;
    options: { gamma: number; temperature: number; filterThres: number; seed: number };
    base: number[];
    speculative: number[];
    provenance: Provenance[];
    acceptedPerPosition: number[];
    acceptedMean: number;
    costRatio: number;
    predictedSpeedup: number;
    measuredSpeedup: number;
  };
}

const demo: DemoHandle = { state: "starting" };
(globalThis as unknown as { specdecDemo: DemoHandle }).specdecDemo = demo;

const el = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`specdec demo: the page has no #${id}`);
  return e as T;
};
const input = (id: string) => el<HTMLInputElement>(id);

function setState(state: string): void {
  demo.state = state;
  document.body.dataset.state = state;
}

function status(text: string, kind: "" | "ok" | "error" = ""): void {
  const s = el("gpu-status");
  s.textContent = text;
  s.className = `status ${kind}`;
}

function fail(e: unknown): void {
  const msg = e instanceof Error ? e.message : String(e);
  demo.error = msg;
  status(msg, "error");
  setState("error");
  console.error(e);
}

let gpu: Gpu | undefined;
const models: { target?: Decoder; draft?: Decoder } = {};

/** Finds WebGPU and says plainly what is missing when it is not there. */
async function startGpu(): Promise<Gpu | undefined> {
  const nav = navigator as Navigator & { gpu?: GPU };
  if (!nav.gpu) {
    status(
      "This browser has no WebGPU (navigator.gpu is missing" +
        (isSecureContext
          ? ")"
          : "; the page is not a secure context: serve it from localhost or https)") +
        ". Nothing can run here. Use Chrome or Edge 113+, Safari 26+ or Firefox 141+ (Windows); " +
        "on Linux Chrome may need chrome://flags/#enable-unsafe-webgpu.",
      "error",
    );
    setState("no-webgpu");
    return undefined;
  }
  try {
    const g = await requestGpu();
    demo.adapter = g.adapterName;
    status(
      `WebGPU adapter: ${g.adapterName}${g.isSoftware ? " (software fallback: slow)" : ""}` +
        `${g.hasTimestamps ? ", GPU timestamps" : ", no timestamps (wall-clock timing)"}`,
      "ok",
    );
    return g;
  } catch (e) {
    status(
      "WebGPU is present but gave no adapter (a blocklisted GPU or missing driver?). " +
        `Details: ${e instanceof Error ? e.message : e}`,
      "error",
    );
    setState("no-webgpu");
    return undefined;
  }
}

/** Replaces the target or the draft with the model in these bytes. */
async function loadModel(which: "target" | "draft", bytes: Uint8Array, source: string) {
  if (!gpu) return;
  const info = el(`${which}-info`);
  info.textContent = `loading ${source}…`;
  const model = await Decoder.fromSafetensors(gpu, bytes, { label: which, source });
  models[which]?.destroy();
  models[which] = model;
  const c = model.config;
  info.textContent = `${source}: dim ${c.dim}, depth ${c.depth}, heads ${c.heads}×${c.dimHead}, ` +
    `${(bytes.length / 1e6).toFixed(2)} MB`;
}

async function fetchModel(which: "target" | "draft"): Promise<void> {
  const url = input(`${which}-url`).value.trim();
  const res = await fetch(url);
  if (!res.ok) {
    throw new Error(`specdec demo: fetching the ${which} "${url}" gave HTTP ${res.status}`);
  }
  await loadModel(which, new Uint8Array(await res.arrayBuffer()), url);
}

async function loadFromUrls(): Promise<void> {
  setState("loading");
  el<HTMLButtonElement>("run").disabled = true;
  await fetchModel("target");
  await fetchModel("draft");
  el<HTMLButtonElement>("run").disabled = false;
  setState("ready");
}

function setupDrop(which: "target" | "draft"): void {
  const zone = el(`${which}-drop`);
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer?.files[0];
    if (!file) return;
    file.arrayBuffer()
      .then((b) => loadModel(which, new Uint8Array(b), file.name))
      .then(() => {
        if (models.target && models.draft) el<HTMLButtonElement>("run").disabled = false;
      })
      .catch(fail);
  });
}

/** Reads a numeric control, naming it when the value is not a number. */
function num(id: string, integer: boolean): number {
  const raw = input(id).value;
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw new Error(
      `specdec demo: "${id}" must be ${integer ? "an integer" : "a number"}, got "${raw}"`,
    );
  }
  return v;
}

/** Whether a character is a control character other than tab and newline. */
function isControl(ch: string): boolean {
  const c = ch.charCodeAt(0);
  return ch.length === 1 && (c < 32 || c === 127) && ch !== "\n" && ch !== "\t";
}

/** Streams bytes into a <pre> as coloured spans; multi-byte characters are joined across tokens. */
class TokenView {
  #out: HTMLElement;
  #dec = new TextDecoder();
  constructor(id: string) {
    this.#out = el(id);
    this.#out.textContent = "";
  }
  add(bytes: number[], kind: Provenance | "prompt" | ""): void {
    const text = this.#dec.decode(new Uint8Array(bytes), { stream: true })
      // control bytes an undertrained model emits would be invisible
      .replace(/./gsu, (ch) => (isControl(ch) ? "·" : ch));
    if (!text) return;
    const span = document.createElement("span");
    span.textContent = text;
    if (kind) span.className = `tok ${kind}`;
    this.#out.append(span);
  }
}

function meta(id: string, parts: [string, string][]): void {
  el(id).innerHTML = parts.map(([k, v]) => `${k} <b>${v}</b>`).join(" · ");
}

const rate = (n: number, ms: number) => (ms > 0 ? (1000 * n / ms).toFixed(0) : "–");

async function run(): Promise<void> {
  const { target, draft } = models;
  if (!gpu || !target || !draft) throw new Error("specdec demo: load a target and a draft first");
  const prompt = Array.from(new TextEncoder().encode(el<HTMLTextAreaElement>("prompt").value));
  if (prompt.length === 0) throw new Error("specdec demo: the prompt is empty; write a few words");
  const n = num("tokens", true), gamma = num("gamma", true);
  const options = {
    temperature: num("temperature", false),
    filterThres: num("filter", false),
    seed: num("seed", true),
    chunkSteps: num("chunk", true),
  };
  if (n < 1) throw new Error(`specdec demo: "tokens" must be at least 1, got ${n}`);
  const seqLen = prompt.length + n;
  setState("running");
  el<HTMLButtonElement>("run").disabled = true;

  // Warm-up: pipelines compile on first use; the timed runs below should not pay for it.
  const warm = Math.min(seqLen, prompt.length + gamma + 2);
  await baseDecoding(target, [prompt], warm, options);
  await baseDecoding(draft, [prompt], warm, options);
  await speculativeDecoding(target, draft, [prompt], warm, { ...options, gamma });

  // base decoding, streamed
  const baseView = new TokenView("base-out");
  baseView.add(prompt, "prompt");
  let t0 = performance.now(), count = 0;
  const base: DecodingResult = await baseDecoding(target, [prompt], seqLen, {
    ...options,
    timer: new GpuTimer(gpu),
    onTokens(rows) {
      baseView.add(rows[0], "");
      count += rows[0].length;
      meta("base-meta", [["tokens", `${count}/${n}`], [
        "tokens/s",
        rate(count, performance.now() - t0),
      ]]);
    },
  });
  meta("base-meta", [
    ["tokens", String(n)],
    ["tokens/s", rate(n, base.wallMs)],
    ["target forwards", String(base.targetForwards)],
    ["readbacks", String(base.readbacks)],
  ]);

  // speculative decoding, streamed; one step per chunk lets each token's origin be known
  const specView = new TokenView("spec-out");
  specView.add(prompt, "prompt");
  const kinds: Provenance[] = [];
  t0 = performance.now();
  count = 0;
  const perStep = options.chunkSteps === 1;
  const spec: SpeculativeResult = await speculativeDecoding(target, draft, [prompt], seqLen, {
    ...options,
    gamma,
    timer: new GpuTimer(gpu),
    onTokens(rows) {
      const row = rows[0];
      const k = provenance(row.length, gamma, seqLen - prompt.length - count, perStep);
      row.forEach((t, i) => specView.add([t], k[i]));
      kinds.push(...k);
      count += row.length;
      meta("spec-meta", [["tokens", `${count}/${n}`], [
        "tokens/s",
        rate(count, performance.now() - t0),
      ]]);
    },
  });
  meta("spec-meta", [
    ["tokens", String(n)],
    ["tokens/s", rate(n, spec.wallMs)],
    ["target forwards", String(spec.targetForwards)],
    ["draft forwards", String(spec.draftForwards)],
    ["accepted/step", spec.acceptedMean.toFixed(2)],
  ]);

  // c: the cost of a draft forward relative to a target forward, each decoding alone
  const cost = async (m: Decoder) => {
    const timer = new GpuTimer(gpu!);
    const r = await baseDecoding(m, [prompt], seqLen, { ...options, chunkSteps: 128, timer });
    return timer.gpuTimed && r.gpuMs! > 0 ? r.gpuMs! : r.wallMs;
  };
  const c = (await cost(draft)) / (await cost(target));
  const alpha = fitAlpha(spec.acceptedMean, gamma);
  const predicted = predictedSpeedup(alpha, gamma, c);
  const measured = base.wallMs / spec.wallMs;
  const gpuMeasured = base.gpuMs && spec.gpuMs ? base.gpuMs / spec.gpuMs : undefined;
  renderStats(spec, alpha, c, predicted, measured, gpuMeasured);

  demo.last = {
    prompt,
    seqLen,
    options: {
      gamma,
      temperature: options.temperature,
      filterThres: options.filterThres,
      seed: options.seed,
    },
    base: base.tokens[0],
    speculative: spec.tokens[0],
    provenance: kinds,
    acceptedPerPosition: spec.acceptedPerPosition,
    acceptedMean: spec.acceptedMean,
    costRatio: c,
    predictedSpeedup: predicted,
    measuredSpeedup: measured,
  };
  el<HTMLButtonElement>("run").disabled = false;
  setState("done");
}

function renderStats(
  spec: SpeculativeResult,
  alpha: number,
  c: number,
  predicted: number,
  measured: number,
  gpuMeasured: number | undefined,
): void {
  const bars = el("per-position");
  bars.textContent = "";
  spec.acceptedPerPosition.forEach((a, i) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = `<span class="lab">${(100 * a).toFixed(0)}%</span>` +
      `<div class="fill" style="height:${(100 * a).toFixed(1)}%"></div>` +
      `<span class="lab">x<sub>${i + 1}</sub></span>`;
    bars.append(bar);
  });
  const rows: [string, string][] = [
    ["γ (draft tokens per step)", String(spec.gamma)],
    ["accepted per step (mean)", spec.acceptedMean.toFixed(2)],
    ["α (fitted per-token acceptance)", alpha.toFixed(3)],
    ["c (draft / target forward cost)", c.toFixed(3)],
    ["predicted speedup", `${predicted.toFixed(2)}×`],
    ["measured speedup (wall clock)", `${measured.toFixed(2)}×`],
  ];
  if (gpuMeasured !== undefined) {
    rows.push(["measured speedup (GPU time)", `${gpuMeasured.toFixed(2)}×`]);
  }
  el("speedup").innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td class="num">${v}</td></tr>`)
    .join("");
}

/** Trains a tiny pair in the page on its own bundle's text, plotting both losses. */
async function train(): Promise<void> {
  if (!gpu) return;
  const steps = num("train-steps", true);
  const buttons = [el<HTMLButtonElement>("train"), el<HTMLButtonElement>("run")];
  buttons.forEach((b) => b.disabled = true);
  setState("training");
  try {
    const res = await fetch("dist/app.js");
    if (!res.ok) {
      throw new Error(`specdec demo: fetching the training text gave HTTP ${res.status}`);
    }
    const text = new Uint8Array(await res.arrayBuffer());
    const points: LossPoint[] = [];
    const t0 = performance.now();
    const plot = el("loss-plot"), info = el("train-status");
    const pair = await trainTinyPair(gpu, text, steps, (p) => {
      points.push(p);
      if (p.step % 5 === 0 || p.step === steps - 1) {
        plot.innerHTML = lossSvg(points, steps);
        info.textContent = `step ${p.step + 1}/${steps}: loss ${p.target.toFixed(3)}, draft ` +
          `${p.draft.toFixed(3)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`;
      }
    });
    models.target?.destroy();
    models.draft?.destroy();
    Object.assign(models, pair);
    demo.training = points;
    el("target-info").textContent = `trained here: ${steps} steps, loss ${
      points.at(-1)!.target.toFixed(3)
    }`;
    el("draft-info").textContent = `trained here: ${steps} steps, loss ${
      points.at(-1)!.draft.toFixed(3)
    }`;
    setState("ready");
  } finally {
    el<HTMLButtonElement>("train").disabled = false;
    el<HTMLButtonElement>("run").disabled = !(models.target && models.draft);
  }
}

async function main(): Promise<void> {
  setupDrop("target");
  setupDrop("draft");
  gpu = await startGpu();
  if (!gpu) return;
  el("load").addEventListener("click", () => loadFromUrls().catch(fail));
  el("run").addEventListener("click", () => run().catch(fail));
  el("train").addEventListener("click", () => train().catch(fail));
  el<HTMLButtonElement>("train").disabled = false;
  await loadFromUrls();
}

main().catch(fail);
