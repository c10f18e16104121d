/**
 * The decoding engine shared by base and speculative decoding: a decode ready to run (its state
 * buffer and the fixed dispatches of the prefill and of one step), the host loop that runs it in
 * chunks of steps with one readback per chunk, and the pieces both engine builders use.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import {
  type RowError,
  rowErrors,
  seqFeedKernel,
  type StateLayout,
  stateOffsets,
} from "../kernels/decode_state.ts";
import type { Decoder, ForwardPlan } from "./decoder.ts";
import type { PlanKind } from "./forward_plan.ts";
import type { KVCache } from "./kv_cache.ts";
import { type DecodingOptions, integerOption } from "./decoding_options.ts";
import type { DecodingResult } from "./decoding_results.ts";

/** A named, consecutive part of a decode step (for profiles). */
export interface StepPart {
  /** What the part computes, e.g. `"draft forward n=1"` or `"accept"`. */
  name: string;
  /** Its dispatches, in order. */
  dispatches: Dispatch[];
}

/**
 * A decode ready to run: its state buffer and the fixed dispatches of the prefill and of one
 * step. {@link baseDecoding} and {@link speculativeDecoding} build one, run it and destroy it;
 * profiles (bench/profile_decoding.ts) encode its parts themselves.
 */
export interface DecodingEngine {
  /** The runtime. */
  gpu: Gpu;
  /** Label of its submissions. */
  label: string;
  /** Where pos, stats and seq live in `state`. */
  layout: StateLayout;
  /** Prompt length P. */
  promptLen: number;
  /** The state buffer `[pos (B) | stats (B, W) | seq (B, L)]` u32. */
  state: GPUBuffer;
  /** Dispatches run once before the first step (the prompt's prefill). */
  prefill: Dispatch[];
  /** Dispatches of one decode step: the concatenation of `parts`. */
  step: Dispatch[];
  /** The step's parts, in order. */
  parts: StepPart[];
  /** Most tokens a row can gain in one step (1, or gamma + 1). */
  maxRate: number;
  /** How errors name the models (default "the model" and "the draft model"). */
  modelNames?: { target: string; draft: string };
  /** Frees the state and scratch buffers and releases the KV caches. */
  destroy(): void;
}

/** What {@link runEngine} measured. */
export interface EngineRun {
  tokens: number[][];
  rowSteps: number[];
  stats: Uint32Array;
  stepsEncoded: number;
  readbacks: number;
  submits: number;
  dispatches: number;
  gpuMs?: number;
}

/**
 * The host loop: submits chunks of steps, reads the state back once per chunk while the next
 * chunk runs, and stops when every row reached seqLen. Chunk sizes come from each row's observed
 * tokens per step (on software adapters erring towards enough), so little work runs after the
 * last row finishes and few readbacks find the GPU idle.
 */
async function runEngine(e: DecodingEngine, options: DecodingOptions): Promise<EngineRun> {
  const { gpu, layout, promptLen: P } = e;
  const { batch: B, seqLen: L, statsWidth: W } = layout;
  const off = stateOffsets(layout);
  const N = L - P;
  const maxChunk = integerOption("chunkSteps", options.chunkSteps ?? 128, 1);
  const readbacks0 = gpu.readbacks;
  let encoded = 0, submits = 0, dispatches = 0;
  // the last state read back, and how many steps had been encoded when it was captured
  let pos = new Array<number>(B).fill(P);
  let rowSteps = new Array<number>(B).fill(0);
  let knownAt = 0;
  let words: Uint32Array | undefined;
  const pending: { words: Promise<Uint32Array>; at: number }[] = [];

  const submit = (steps: number, first: Dispatch[] = []) => {
    const list: Dispatch[] = [...first];
    for (let s = 0; s < steps; s++) list.push(...e.step);
    gpu.run(`${e.label} ${steps} steps`, list, options.timer);
    submits++;
    dispatches += list.length;
    encoded += steps;
    // the copy is queued now, behind this chunk and ahead of any later one
    pending.push({ words: gpu.readU32(e.state), at: encoded });
  };

  // How optimistic the step estimates are. A step too many costs one step of finished rows doing
  // nothing; a step too few, a readback's round trip with the GPU idle. On the software adapter
  // the round trip (~11 ms) is worth about three speculative steps (five to ten base steps), so
  // a row's rate is taken a little low there (90% of its observed tokens per step; halfway
  // between 1 and maxRate before any is observed): speculative decodes ran 4–9% faster by wall
  // time. Elsewhere, where a round trip is short beside the steps it would save and unmeasured,
  // the observed rate (maxRate before any) as before.
  const generous = gpu.isSoftware;
  const unknownRate = generous ? (1 + e.maxRate) / 2 : e.maxRate;
  const observed = generous ? 0.9 : 1;
  // Steps still needed after everything encoded so far, estimated from the last known state.
  const stepsNeeded = (): number => {
    const ahead = encoded - knownAt;
    let need = 0;
    for (let b = 0; b < B; b++) {
      const rem = L - pos[b];
      if (rem <= ahead) continue; // done even at one token per step
      const rate = rowSteps[b] > 0
        ? Math.max(1, observed * (pos[b] - P) / rowSteps[b])
        : unknownRate;
      need = Math.max(need, Math.ceil((rem - rate * ahead) / rate));
    }
    return Math.min(need, maxChunk, N - encoded); // N steps always suffice
  };

  submit(Math.min(maxChunk, Math.ceil(N / unknownRate)), e.prefill);
  const seen = new Array<number>(B).fill(P);
  while (true) {
    // keep the GPU busy while this chunk's readback travels
    if (pending.length < 2) {
      const c = stepsNeeded();
      if (c > 0) submit(c);
    }
    const next = pending.shift()!;
    words = await next.words;
    knownAt = next.at;
    const errors = rowErrors(layout, words);
    if (errors.length > 0) {
      await Promise.allSettled(pending.map((p) => p.words)); // nothing left in flight
      throw new Error(rowErrorMessage(e, errors, words));
    }
    pos = Array.from(words.subarray(off.pos, off.pos + B));
    rowSteps = Array.from({ length: B }, (_, b) => words![off.stats + b * W]);
    if (options.onTokens) {
      const rows = pos.map((p, b) =>
        Array.from(words!.subarray(off.seq + b * L + seen[b], off.seq + b * L + p))
      );
      if (rows.some((r) => r.length > 0)) options.onTokens(rows);
      pos.forEach((p, b) => seen[b] = p);
    }
    if (pos.every((p) => p >= L)) break;
    if (knownAt >= N) {
      // Every step emits at least one token per unfinished row, so N steps finish every row: the
      // GPU did not run them (a WebGPU error that the enclosing error scope reports, or a lost
      // device). Stop instead of submitting steps that never advance.
      await Promise.allSettled(pending.map((p) => p.words));
      const stuck = pos.flatMap((p, b) => p < L ? [`row ${b} at position ${p}`] : []);
      throw new Error(
        `specdec: ${e.label}: ${knownAt} steps ran but ${stuck.join(", ")} did not reach ` +
          `seqLen ${L}; the GPU did not run the steps`,
      );
    }
    if (pending.length === 0) submit(Math.max(1, stepsNeeded()));
  }
  await Promise.all(pending.map((p) => p.words)); // leftover chunks only idled
  const readbacks = gpu.readbacks - readbacks0;
  const gpuMs = options.timer ? await options.timer.read() : undefined;
  const final = words!;
  return {
    tokens: Array.from(
      { length: B },
      (_, b) => Array.from(final.subarray(off.seq + b * L + P, off.seq + (b + 1) * L)),
    ),
    rowSteps,
    stats: final.slice(off.stats, off.seq),
    stepsEncoded: encoded,
    readbacks,
    submits,
    dispatches,
    gpuMs,
  };
}

/**
 * The error for rows the kernels stopped: the first row's model, position and step in words, and
 * how many other rows failed.
 */
function rowErrorMessage(e: DecodingEngine, errors: RowError[], words: Uint32Array): string {
  const { stats } = stateOffsets(e.layout), W = e.layout.statsWidth;
  const names = e.modelNames ?? { target: "the model", draft: "the draft model" };
  const x = errors[0];
  const step = words[stats + x.row * W] + 1; // the failed step was not counted
  const where = x.source === "draft"
    ? `, draft token ${x.index} of the step`
    : e.maxRate > 1
    ? `, verification row ${x.index}`
    : "";
  const more = errors.length > 1
    ? ` (rows ${errors.slice(1).map((r) => r.row).join(", ")} failed too)`
    : "";
  return `specdec: ${e.label}: ${names[x.source]} produced logits that cannot be sampled ` +
    `(${x.reasons.join(", ")}) for row ${x.row} at position ${x.position} (the row's step ` +
    `${step}${where})${more}; no token was drawn from them and decoding stopped. NaN is never a ` +
    `valid logit, nor +Inf unless temperature is 0; check the model's weights (a damaged ` +
    `checkpoint?) and its inputs`;
}

/** The initial state: pos = prompt length, stats 0, seq = prompt then zeros. */
export function initialState(
  gpu: Gpu,
  layout: StateLayout,
  prompt: number[][],
  label: string,
): GPUBuffer {
  const o = stateOffsets(layout);
  const s = new Uint32Array(o.words);
  prompt.forEach((row, b) => {
    s[o.pos + b] = row.length;
    s.set(row, o.seq + b * layout.seqLen);
  });
  return gpu.upload(`${label} state [pos (B) | stats (B, W) | seq (B, L)] u32`, s);
}

/**
 * Prefill dispatches: the first P − 1 prompt tokens of each row at start 0 (none when P = 1).
 * `adopt` ties the prefill's plan to a pooled cache (freed with it); `kind` is the forward's
 * (`"verify"`: a model whose exit branch has blocks of its own, so their cache keeps up).
 */
export function prefillDispatches(
  model: Decoder,
  cache: KVCache,
  state: GPUBuffer,
  layout: StateLayout,
  P: number,
  adopt?: (plan: ForwardPlan) => void,
  kind: PlanKind = "full",
): Dispatch[] {
  if (P < 2) return [];
  const plan = model.forwardPlan(cache, P - 1, false, kind);
  adopt?.(plan);
  return [
    seqFeedKernel(model.gpu, {
      state,
      layout,
      tokens: plan.tokens,
      start: plan.start,
      n: P - 1,
      back: P,
    }),
    ...plan.dispatches,
  ];
}

/**
 * Builds an engine inside an error scope, runs it, frees it, and assembles the result fields both
 * decoders share (`extra` adds the rest from the same run).
 */
export async function decode<T extends DecodingResult>(
  label: string,
  gpu: Gpu,
  seqLen: number,
  options: DecodingOptions,
  makeEngine: () => DecodingEngine,
  extra: (e: DecodingEngine, run: EngineRun) => Omit<T, keyof DecodingResult>,
): Promise<T> {
  const t0 = performance.now();
  let engine: DecodingEngine | undefined;
  try {
    const run = await gpu.scoped(label, () => runEngine(engine = makeEngine(), options));
    const P = engine!.promptLen, generated = engine!.layout.batch * (seqLen - P);
    return {
      tokens: run.tokens,
      steps: Math.max(...run.rowSteps),
      stepsEncoded: run.stepsEncoded,
      targetForwards: run.stepsEncoded + (P > 1 ? 1 : 0),
      readbacks: run.readbacks,
      readbacksPerToken: run.readbacks / generated,
      submits: run.submits,
      dispatches: run.dispatches,
      generated,
      gpuMs: run.gpuMs,
      wallMs: performance.now() - t0,
      ...extra(engine!, run),
    } as T;
  } finally {
    engine?.destroy();
  }
}

/** Collects destructors; runs them (in order) on `destroy`. */
export function cleanupList(): { add: (f: () => void) => void; run: () => void } {
  const fs: (() => void)[] = [];
  return { add: (f) => void fs.push(f), run: () => fs.splice(0).forEach((f) => f()) };
}
