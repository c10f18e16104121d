/**
 * The drafts compared (issue 13): a separate draft model, a distilled draft and the target's own
 * early exit, each with a fixed γ and with the adaptive draft length, on the same prompts. For
 * each configuration and batch size it reports the acceptance α, the mean accepted and drafted
 * tokens per step, the cost ratio c, tokens/s from GPU timestamps and wall time, the speedup over
 * base decoding of the same target, and the speedup predicted from the measured acceptance and c
 * (Leviathan et al. 2022, §3.3: (accepted + 1) / (drafted · c + 1); with a fixed γ this is their
 * (1 − α^(γ+1)) / ((1 − α)(γc + 1)) at α from the accepted mean).
 *
 * Each speculative case runs in `--repeats` pairs with base decoding of the same target, after a
 * warm-up pair: base, then speculative, with seed 7, 8, … per pair. The speedups are the ratios of
 * their total tokens/s, by GPU time (timestamp queries) and by wall time (what a caller waits,
 * readbacks included). On lavapipe a pass's beginning timestamp is written late in command
 * buffers that touch textures (bench/profile_decoding.ts), so the GPU times of the texture path
 * run short by a varying amount: the wall speedup is the one to trust there.
 * Pairing keeps a slow minute of a shared machine (steal time reached 33%
 * on the development VM) from landing on one side only, and the seeds average the acceptance over
 * several sampled texts: at batch 1 one text of 384 tokens gave α anywhere from 0.60 to 0.80 for
 * the same pair. The base row is the total over every pair of its batch size.
 *
 * Usage:
 *   deno run -A bench/speculation_table.ts --config NAME=RUN_DIR[:self] ... [--gammas 2,3,5]
 *     [--adaptive 6:0.3,6:0.5] [--batches 1,8] [--prompt 128] [--seq-len 512] [--repeats 4]
 *     [--temperature 1] [--data corpus.txt[.gz]] [--json out.json]
 * RUN_DIR holds train.ts's checkpoint/target.safetensors and checkpoint/draft.safetensors; with
 * `:self` the target (which must have an exit head) is its own draft. Prompts are windows of
 * `--data` (default: this project's README), the same for every configuration; `--data` also
 * gives the validation cross-entropy of each model (final head, and the exit head) on its last
 * 64 KiB.
 *
 * c is measured like bench/suite.ts: one-token forwards of the draft (or the exit plan) over those
 * of the target, at the batch size, by wall time over 20 forwards per submit, the fastest of 5
 * alternated rounds (bench/wall_time.ts says why not GPU timestamps).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { gunzipSync } from "fflate";
import { requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { Decoder } from "../model/decoder.ts";
import {
  baseDecoding,
  type DecodingResult,
  speculativeDecoding,
  type SpeculativeResult,
} from "../model/decoding.ts";
import { alphaFromAccepted } from "./suite.ts";
import { wallMsPerRun } from "./wall_time.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    config: { type: "string", multiple: true, default: [] },
    gammas: { type: "string", default: "2,3,5" },
    adaptive: { type: "string", default: "6:0.3,6:0.5" },
    batches: { type: "string", default: "1,8" },
    prompt: { type: "string", default: "128" },
    "seq-len": { type: "string", default: "512" },
    repeats: { type: "string", default: "4" },
    temperature: { type: "string", default: "1" },
    data: { type: "string" },
    json: { type: "string" },
  },
});
const ints = (s: string, flag: string) =>
  s.split(",").filter((x) => x).map((x) => {
    const v = Number(x);
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`--${flag}: "${x}" is not a positive integer`);
    }
    return v;
  });
const gammas = ints(values.gammas, "gammas");
const temperature = Number(values.temperature);
if (!(temperature >= 0)) {
  throw new Error(`--temperature: "${values.temperature}" is not a number ≥ 0`);
}
const batches = ints(values.batches, "batches");
const adaptive = values.adaptive.split(",").filter((x) => x).map((x) => {
  const [g, t] = x.split(":").map(Number);
  if (!Number.isInteger(g) || g < 1 || !(t > 0 && t < 1)) {
    throw new Error(`--adaptive: "${x}" is not GAMMA:THRESHOLD with 0 < THRESHOLD < 1`);
  }
  return { gamma: g, threshold: t };
});
const P = Number(values.prompt), L = Number(values["seq-len"]), R = Number(values.repeats);
if (values.config.length === 0) throw new Error("give at least one --config NAME=RUN_DIR[:self]");

const gpu = await requestGpu();
const timer = new GpuTimer(gpu);
const text = await corpus(values.data);
const maxSeqLen = L + 16;

async function corpus(path?: string): Promise<Uint8Array> {
  if (!path) return await Deno.readFile(new URL("../README.md", import.meta.url));
  const raw = await Deno.readFile(path);
  return path.endsWith(".gz") ? gunzipSync(raw) : raw;
}

/** B prompts of P bytes from the first half of the corpus, spread out, the same for all. */
function prompts(B: number): number[][] {
  const half = text.length >> 1;
  return Array.from({ length: B }, (_, b) => {
    const at = Math.floor(((b + 0.5) / B) * (half - P));
    return Array.from(text.subarray(at, at + P));
  });
}

/** Mean next-byte cross-entropy (nats) of logits (rows, n, V) for the windows. */
function crossEntropy(logits: Float32Array, windows: number[][], V: number): number {
  let sum = 0, count = 0;
  const n = windows[0].length;
  for (let r = 0; r < windows.length; r++) {
    for (let t = 0; t + 1 < n; t++) {
      const row = logits.subarray((r * n + t) * V, (r * n + t + 1) * V);
      const m = Math.max(...row);
      let z = 0;
      for (const x of row) z += Math.exp(x - m);
      sum += Math.log(z) + m - row[windows[r][t + 1]];
      count++;
    }
  }
  return sum / count;
}

async function load(file: string): Promise<Decoder> {
  return await Decoder.fromSafetensors(gpu, await Deno.readFile(file), {
    maxSeqLen,
    label: file,
    source: file,
  });
}

/** c: one-token draft forward over one-token target forward, at batch B, mid-context. */
async function costRatio(target: Decoder, draft: Decoder | "self", B: number): Promise<number> {
  const tc = target.createCache(B, maxSeqLen);
  const dc = draft === "self" ? tc : draft.createCache(B, maxSeqLen);
  const tp = target.forwardPlan(tc, 1);
  const dp = draft === "self"
    ? target.forwardPlan(tc, 1, false, "draft")
    : draft.forwardPlan(dc, 1);
  for (const p of [tp, dp]) gpu.write(p.start, new Uint32Array(B).fill(L >> 1));
  const [d, t] = await wallMsPerRun(gpu, [dp.dispatches, tp.dispatches]);
  tc.destroy();
  if (dc !== tc) dc.destroy();
  return d / t;
}

/** Tokens and milliseconds (GPU, or wall without timestamps; and wall) summed over runs. */
interface Totals {
  tokens: number;
  ms: number;
  wallMs: number;
  dispatches: number;
  readbacks: number;
  accepted: number;
  drafted: number;
}
const totals = (): Totals => ({
  tokens: 0,
  ms: 0,
  wallMs: 0,
  dispatches: 0,
  readbacks: 0,
  accepted: 0,
  drafted: 0,
});
function add(t: Totals, x: DecodingResult, spec?: SpeculativeResult): void {
  t.tokens += x.generated;
  t.ms += x.gpuMs ?? x.wallMs;
  t.wallMs += x.wallMs;
  t.dispatches += x.dispatches;
  t.readbacks += x.readbacksPerToken * x.generated;
  if (spec) {
    t.accepted += spec.acceptedMean;
    t.drafted += spec.draftedMean;
  }
}

/**
 * Base and speculative decoding in R pairs after a warm-up pair, each pair with its own seed
 * (7, 8, …: a different sampled text, so acceptance is averaged over R texts rather than read off
 * one) and base right before or after speculative, in turn (so a slow minute of this shared
 * machine hits both, and neither always runs first).
 * Speedup = the speculative tokens/s over base tokens/s, each from its R runs' totals.
 */
async function paired(
  base: () => (seed: number) => Promise<DecodingResult>,
  spec: () => (seed: number) => Promise<SpeculativeResult>,
): Promise<{ b: Totals; s: Totals }> {
  const fb = base(), fs = spec();
  await fb(6);
  await fs(6);
  const b = totals(), s = totals();
  for (let r = 0; r < R; r++) {
    // alternate the order within pairs, so whatever one run leaves behind (a collection, a
    // slower minute starting) falls on each side equally
    if (r % 2 === 0) add(b, await fb(7 + r));
    const x = await fs(7 + r);
    add(s, x, x);
    if (r % 2 === 1) add(b, await fb(7 + r));
  }
  return { b, s };
}

interface Row {
  config: string;
  batch: number;
  decoding: string;
  gamma?: number;
  threshold?: number;
  alpha?: number;
  acceptedMean?: number;
  draftedMean?: number;
  c?: number;
  gpuTokensPerSec: number;
  wallTokensPerSec: number;
  speedup: number;
  wallSpeedup: number;
  predicted?: number;
  dispatchesPerToken: number;
  readbacksPerToken: number;
}
const rows: Row[] = [];
const fixed = (x: number | undefined, d = 2) => x === undefined ? "–" : x.toFixed(d);
console.log(
  `${gpu.adapterName}; prompt ${P} → ${L}; each speculative case paired with base decoding, ${R} pairs (seeds 7..${
    6 + R
  }) after a warm-up pair, totals; corpus ${values.data ?? "README.md"}`,
);
for (const spec of values.config) {
  const m = spec.match(/^([^=]+)=(.+?)(:self)?$/);
  if (!m) throw new Error(`--config: "${spec}" is not NAME=RUN_DIR or NAME=RUN_DIR:self`);
  const [, name, dir, self] = m;
  const target = await load(`${dir}/checkpoint/target.safetensors`);
  const draft = self ? target : await load(`${dir}/checkpoint/draft.safetensors`);
  // validation cross-entropy on the corpus's last 64 KiB: 8 windows of up to 256 bytes
  const tail = text.subarray(Math.max(0, text.length - 65536));
  const w = Math.min(256, maxSeqLen, tail.length);
  const windows = Array.from({ length: 8 }, (_, i) => {
    const at = Math.floor((i / 8) * (tail.length - w));
    return Array.from(tail.subarray(at, at + w));
  });
  const V = target.config.numTokens;
  const ceT = crossEntropy(await target.logits(windows), windows, V);
  const ceD = self
    ? crossEntropy(await target.exitLogits(windows), windows, V)
    : crossEntropy(await draft.logits(windows), windows, V);
  console.log(
    `\n## ${name}: ${dir}${
      self ? " (early exit after layer " + target.config.earlyExitLayer + ")" : ""
    }\n` +
      `validation cross-entropy (nats/byte): target ${ceT.toFixed(3)}, draft ${ceD.toFixed(3)}\n`,
  );
  console.log(
    "| B | decoding | γ | threshold | α | accepted | drafted | c | tokens/s (GPU) | tokens/s (wall) | speedup (GPU) | speedup (wall) | predicted | dispatches/token |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const B of batches) {
    const c = await costRatio(target, self ? "self" : draft, B);
    const pr = prompts(B);
    const tps = (t: Totals) => t.tokens / (t.ms / 1000);
    const wtps = (t: Totals) => t.tokens / (t.wallMs / 1000);
    const perToken = (t: Totals) => t.dispatches / (t.tokens / B);
    const print = (r: Row) =>
      console.log(
        `| ${B} | ${r.decoding} | ${r.gamma ?? "–"} | ${r.threshold ?? "–"} | ${fixed(r.alpha)} | ${
          fixed(r.acceptedMean)
        } | ${fixed(r.draftedMean)} | ${fixed(r.c)} | ${r.gpuTokensPerSec.toFixed(0)} | ${
          r.wallTokensPerSec.toFixed(0)
        } | ${r.speedup.toFixed(2)} | ${r.wallSpeedup.toFixed(2)} | ${fixed(r.predicted)} | ${
          r.dispatchesPerToken.toFixed(1)
        } |`,
      );
    const cases = [
      ...gammas.map((gamma) => ({ gamma, threshold: 0 })),
      ...adaptive,
    ];
    const baseAll = totals();
    const specRows: Row[] = [];
    for (const { gamma, threshold } of cases) {
      const { b, s } = await paired(
        () => (seed) => baseDecoding(target, pr, L, { seed, timer, temperature }),
        () => (seed) =>
          speculativeDecoding(target, draft, pr, L, {
            gamma,
            seed,
            timer,
            temperature,
            draftThreshold: threshold,
          }),
      );
      for (const k of Object.keys(b) as (keyof Totals)[]) baseAll[k] += b[k];
      const acceptedMean = s.accepted / R, draftedMean = s.drafted / R;
      const row: Row = {
        config: name,
        batch: B,
        decoding: self ? "self-speculative" : "speculative",
        gamma,
        threshold: threshold || undefined,
        alpha: threshold ? undefined : alphaFromAccepted(acceptedMean, gamma),
        acceptedMean,
        draftedMean,
        c,
        gpuTokensPerSec: tps(s),
        wallTokensPerSec: wtps(s),
        speedup: tps(s) / tps(b),
        wallSpeedup: wtps(s) / wtps(b),
        predicted: (acceptedMean + 1) / (draftedMean * c + 1),
        dispatchesPerToken: perToken(s),
        readbacksPerToken: s.readbacks / s.tokens,
      };
      specRows.push(row);
    }
    const baseRow: Row = {
      config: name,
      batch: B,
      decoding: "base",
      gpuTokensPerSec: tps(baseAll),
      wallTokensPerSec: wtps(baseAll),
      speedup: 1,
      wallSpeedup: 1,
      dispatchesPerToken: perToken(baseAll),
      readbacksPerToken: baseAll.readbacks / baseAll.tokens,
    };
    for (const r of [baseRow, ...specRows]) {
      rows.push(r);
      print(r);
    }
  }
  if (draft !== target) draft.destroy();
  target.destroy();
}
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(rows, null, 2) + "\n");
