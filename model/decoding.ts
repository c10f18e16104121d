/**
 * Decoding: {@link baseDecoding} (one target forward per token) and {@link speculativeDecoding}
 * (Leviathan et al. 2023, Algorithm 1: γ draft forwards, one target forward, accept/reject on the
 * GPU), both with the same engineering so their costs compare fairly.
 *
 * Everything a step needs lives in GPU buffers: one u32 state buffer holds each row's current
 * length `pos`, its tokens `seq (B, seqLen)` and counters `stats`; kernels read positions from
 * it, so the host encodes the same fixed list of dispatches for every step, a chunk of steps per
 * submission, and reads the state back once per chunk while the next chunk already runs. Rows
 * advance at their own rate; finished rows (pos = seqLen) do nothing; rejected tokens leave both
 * KV caches implicitly, since the next forward of a row starts at its new `pos − 1`.
 *
 * Invariant at the start of a step: the target cache holds positions < pos − 1 (the last token
 * is pending), the draft cache positions < pos − 2, and the first forward of the step is already
 * fed: each step's last kernel (sampling, or acceptance) writes the next step's input tokens and
 * start positions, so a step has no feed dispatches (the prefill feeds the first step).
 *
 * Per step: base decoding runs the target's one-token forward and one sampling kernel;
 * speculative decoding runs γ draft forwards (the first over 2 tokens: after a step that
 * accepted everything, the draft has not seen x_γ yet) each followed by its sampling kernel,
 * the target's verification forward over γ + 1 tokens, and one acceptance kernel that computes
 * the target's probabilities only for the rows it reads.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import {
  baseStepKernel,
  draftStepKernel,
  type SamplingOptions,
  seedWords,
  type StateLayout,
  stateOffsets,
  validateSampling,
} from "../kernels/sampling.ts";
import { acceptKernel, seqFeedKernel, speculativeStatsWidth } from "../kernels/speculative.ts";
import { type Decoder, type ForwardPlan, validateTokens } from "./decoder.ts";
import type { KVCache } from "./kv_cache.ts";

/** Options shared by {@link baseDecoding} and {@link speculativeDecoding}. */
export interface DecodingOptions {
  /** Softmax temperature ≥ 0; 0 is greedy (argmax) everywhere. Default 1. */
  temperature?: number;
  /** Top-k threshold in [0, 1): keeps ceil((1 − filterThres) · numTokens) logits. Default 0.9. */
  filterThres?: number;
  /** Seed of the GPU's counter-based generator: same seed, same output. Default 0. */
  seed?: number;
  /** Most decode steps per submission (default 128: at most one readback per 128 steps). */
  chunkSteps?: number;
  /** Called once per chunk with each row's new tokens (empty rows when a row had none). */
  onTokens?: (rows: number[][]) => void;
  /** Adds the GPU time of every submission; the result's `gpuMs` reads it. */
  timer?: GpuTimer;
}

/** Options of {@link speculativeDecoding}. */
export interface SpeculativeOptions extends DecodingOptions {
  /** Draft tokens per step, an integer ≥ 1. Default 5. */
  gamma?: number;
  /** Acceptance lenience > 0: accept while r ≤ p / (lenience · q). 1 (default) keeps the target's law. */
  lenience?: number;
  /**
   * Testing only: `false` samples the correction from p instead of max(0, p − q), a deliberately
   * WRONG sampler the law tests must reject. Default true.
   */
  residual?: boolean;
}

/** What {@link baseDecoding} returns. */
export interface DecodingResult {
  /** The generated tokens of each row (seqLen − prompt length each; the prompt excluded). */
  tokens: number[][];
  /** Steps until every row finished (the most any row needed). */
  steps: number;
  /** Steps encoded and run on the GPU (≥ steps: the last chunk may idle on finished rows). */
  stepsEncoded: number;
  /** Forward passes of the (target) model over the batch, prefill included. */
  targetForwards: number;
  /** GPU→host readbacks during the call (one per chunk). */
  readbacks: number;
  /** Readbacks per generated token (over all rows). */
  readbacksPerToken: number;
  /** Command buffers submitted (one per chunk). */
  submits: number;
  /** Compute dispatches encoded (prefill included). */
  dispatches: number;
  /** Generated tokens over all rows: batch × (seqLen − prompt length). */
  generated: number;
  /** GPU time in milliseconds of all submissions, when a timer was given. */
  gpuMs?: number;
  /** Wall time of the call in milliseconds. */
  wallMs: number;
}

/** What {@link speculativeDecoding} returns. */
export interface SpeculativeResult extends DecodingResult {
  /** Forward passes of the draft model over the batch, prefill included. */
  draftForwards: number;
  /** Mean accepted draft tokens per step (over active row-steps): the reference's num_accepted. */
  acceptedMean: number;
  /** For each draft position i, the fraction of active row-steps whose x_{i+1} was accepted. */
  acceptedPerPosition: number[];
  /** Steps each row was active. */
  rowSteps: number[];
  /** Draft tokens per step. */
  gamma: number;
}

/** Checks an option is an integer ≥ min. */
function integerOption(name: string, v: number, min: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new Error(`specdec: ${name} must be an integer ≥ ${min}, got ${v}`);
  }
  return v;
}

/** Validates the prompt and seqLen against a model; returns batch and prompt length. */
function validatePrompt(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  maxSeqLen: number,
): { B: number; P: number } {
  const { batch, n } = validateTokens(prompt, model.config.numTokens, maxSeqLen, "prompt");
  integerOption("seqLen", seqLen, 1);
  if (n >= seqLen) {
    throw new Error(
      `specdec: the prompt has ${n} tokens, so seqLen (which counts the prompt) must be more than ` +
        `${n}; got ${seqLen}`,
    );
  }
  if (seqLen > maxSeqLen) {
    throw new Error(`specdec: seqLen ${seqLen} is over the model's maxSeqLen ${maxSeqLen}`);
  }
  return { B: batch, P: n };
}

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
  /** Frees the state and scratch buffers and releases the KV caches. */
  destroy(): void;
}

/** What {@link runEngine} measured. */
interface EngineRun {
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
 * tokens per step, so little work runs after the last row finishes.
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

  // Steps still needed after everything encoded so far, estimated from the last known state.
  const stepsNeeded = (): number => {
    const ahead = encoded - knownAt;
    let need = 0;
    for (let b = 0; b < B; b++) {
      const rem = L - pos[b];
      if (rem <= ahead) continue; // done even at one token per step
      const rate = rowSteps[b] > 0 ? Math.max(1, (pos[b] - P) / rowSteps[b]) : e.maxRate;
      need = Math.max(need, Math.ceil((rem - rate * ahead) / rate));
    }
    return Math.min(need, maxChunk, N - encoded); // N steps always suffice
  };

  submit(Math.min(maxChunk, Math.ceil(N / e.maxRate)), e.prefill);
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

/** The initial state: pos = prompt length, stats 0, seq = prompt then zeros. */
function initialState(gpu: Gpu, layout: StateLayout, prompt: number[][], label: string): GPUBuffer {
  const o = stateOffsets(layout);
  const s = new Uint32Array(o.words);
  prompt.forEach((row, b) => {
    s[o.pos + b] = row.length;
    s.set(row, o.seq + b * layout.seqLen);
  });
  return gpu.upload(`${label} state [pos (B) | stats (B, W) | seq (B, L)] u32`, s);
}

/** Prefill dispatches: the first P − 1 prompt tokens of each row at start 0 (none when P = 1). */
function prefillDispatches(
  model: Decoder,
  cache: KVCache,
  state: GPUBuffer,
  layout: StateLayout,
  P: number,
): Dispatch[] {
  if (P < 2) return [];
  const plan = model.forwardPlan(cache, P - 1);
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

/** Per-token view of a result. */
/**
 * Builds an engine inside an error scope, runs it, frees it, and assembles the result fields both
 * decoders share (`extra` adds the rest from the same run).
 */
async function decode<T extends DecodingResult>(
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
function cleanupList(): { add: (f: () => void) => void; run: () => void } {
  const fs: (() => void)[] = [];
  return { add: (f) => void fs.push(f), run: () => fs.splice(0).forEach((f) => f()) };
}

/**
 * Builds the engine of {@link baseDecoding}: per step, one target forward of one token per row
 * and one kernel that samples (filtered, tempered) into the state and feeds the next step.
 *
 * @param model the model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options temperature, filterThres and seed (the rest is ignored here)
 * @returns the engine; call `destroy()` when done
 * @throws Error on bad input, as {@link baseDecoding}
 */
export function baseDecodingEngine(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: DecodingOptions = {},
): DecodingEngine {
  const { temperature = 1, filterThres = 0.9, seed = 0 } = options;
  validateSampling(temperature, filterThres);
  seedWords(seed);
  const { B, P } = validatePrompt(model, prompt, seqLen, model.config.maxSeqLen);
  const gpu = model.gpu, L = seqLen, V = model.config.numTokens;
  const layout: StateLayout = { batch: B, seqLen: L, statsWidth: 1 };
  const label = "base decoding";
  const cleanup = cleanupList();
  try {
    const state = initialState(gpu, layout, prompt, label);
    cleanup.add(() => state.destroy());
    const { cache, release } = model.caches.acquire(B, L);
    cleanup.add(release);
    const plan = model.forwardPlan(cache, 1);
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const parts: StepPart[] = [
      { name: "target forward n=1", dispatches: plan.dispatches },
      {
        // samples, and feeds the next step's forward (no feed dispatch per step)
        name: "sample",
        dispatches: [baseStepKernel(gpu, {
          ...sampling,
          logits: plan.logits,
          state,
          layout,
          n: 1,
          seed,
          feedTokens: plan.tokens,
          feedStart: plan.start,
        })],
      },
    ];
    // the first step's feed: the prompt's last token
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: plan.tokens,
      start: plan.start,
      n: 1,
      back: 1,
    });
    return {
      gpu,
      label,
      layout,
      promptLen: P,
      state,
      prefill: [...prefillDispatches(model, cache, state, layout, P), feed],
      step: parts.flatMap((p) => p.dispatches),
      parts,
      maxRate: 1,
      destroy: cleanup.run,
    };
  } catch (e) {
    cleanup.run();
    throw e;
  }
}

/**
 * Autoregressive sampling like the reference's `base_decoding`: one target forward (one token per
 * row) per step, top-k filter, temperature and categorical sampling on the GPU.
 *
 * @param model the model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included (> prompt length, ≤ the model's maxSeqLen)
 * @param options temperature (0 = greedy), filterThres, seed, chunking, streaming and timing
 * @returns the generated tokens and the cost counters
 * @throws Error on bad input (empty or ragged prompt, tokens out of range, seqLen too small or
 *   too large, bad sampling options)
 * @example
 * ```ts
 * import { baseDecoding, Decoder, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 2 }, { seed: 0 });
 * const out = await baseDecoding(model, [[72, 101]], 16, { temperature: 0 });
 * console.log(out.tokens[0].length, out.readbacksPerToken); // 14 …
 * ```
 */
export async function baseDecoding(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: DecodingOptions = {},
): Promise<DecodingResult> {
  return await decode<DecodingResult>(
    "baseDecoding",
    model.gpu,
    seqLen,
    options,
    () => baseDecodingEngine(model, prompt, seqLen, options),
    () => ({}),
  );
}

/**
 * Builds the engine of {@link speculativeDecoding}: per step, γ draft forwards each followed by
 * its sampling kernel, the target's verification forward of γ + 1 tokens per row and the
 * acceptance kernel (which computes the target probabilities it needs from the logits).
 *
 * @param target the large model whose law the output follows
 * @param draft the small model proposing tokens
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options gamma, temperature, filterThres, lenience, seed and residual
 * @returns the engine; call `destroy()` when done
 * @throws Error on bad input, as {@link speculativeDecoding}
 */
export function speculativeDecodingEngine(
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions = {},
): DecodingEngine {
  const { temperature = 1, filterThres = 0.9, seed = 0, lenience = 1, gamma = 5 } = options;
  integerOption("gamma", gamma, 1);
  validateSampling(temperature, filterThres);
  if (typeof lenience !== "number" || !Number.isFinite(lenience) || lenience <= 0) {
    throw new Error(`specdec: lenience must be a finite number > 0, got ${lenience}`);
  }
  seedWords(seed);
  if (target.config.numTokens !== draft.config.numTokens) {
    throw new Error(
      `specdec: target and draft must share the vocabulary; target has numTokens ` +
        `${target.config.numTokens}, draft ${draft.config.numTokens}`,
    );
  }
  if (target.gpu !== draft.gpu) {
    throw new Error("specdec: target and draft must be on the same Gpu");
  }
  const maxSeqLen = Math.min(target.config.maxSeqLen, draft.config.maxSeqLen);
  const { B, P } = validatePrompt(target, prompt, seqLen, maxSeqLen);
  const gpu = target.gpu, L = seqLen, V = target.config.numTokens, G = gamma;
  const layout: StateLayout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) };
  const label = "speculative decoding";
  // in-flight writes reach position L + γ − 1 for rows about to finish
  const maxLen = L + G + 1;
  const cleanup = cleanupList();
  try {
    const buffer = (name: string, bytes: number) => {
      const b = gpu.buffer(`${label} ${name}`, bytes);
      cleanup.add(() => b.destroy());
      return b;
    };
    const state = initialState(gpu, layout, prompt, label);
    cleanup.add(() => state.destroy());
    const q = buffer(`q (${B}, ${G}, ${V})`, B * G * V * 4);
    const drafts = buffer(`draft tokens u32 (${B}, ${G})`, B * G * 4);
    const { cache: tc, release: releaseT } = target.caches.acquire(B, maxLen);
    cleanup.add(releaseT);
    const { cache: dc, release: releaseD } = draft.caches.acquire(B, maxLen);
    cleanup.add(releaseD);
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const d2 = draft.forwardPlan(dc, 2), d1 = draft.forwardPlan(dc, 1);
    const tp = target.forwardPlan(tc, G + 1);
    const common = { ...sampling, state, layout, q, draft: drafts, gamma: G, seed };
    // Draft step i samples x_i and feeds the next forward: the next draft step's, or (the last
    // one) the target's verification; acceptance feeds the next step's first draft forward, which
    // re-feeds seq[pos − 2] (idempotent) and feeds seq[pos − 1]. No feed dispatches per step.
    const draftStep = (i: number, plan: ForwardPlan) =>
      draftStepKernel(gpu, {
        ...common,
        logits: plan.logits,
        n: plan.n,
        i,
        ...(i < G
          ? { feedTokens: d1.tokens, feedStart: d1.start }
          : { targetTokens: tp.tokens, targetStart: tp.start }),
      });
    const parts: StepPart[] = [
      { name: "draft forward n=2", dispatches: d2.dispatches },
      { name: "draft sample", dispatches: [draftStep(1, d2)] },
    ];
    for (let i = 2; i <= G; i++) {
      parts.push(
        { name: "draft forward n=1", dispatches: d1.dispatches },
        { name: "draft sample", dispatches: [draftStep(i, d1)] },
      );
    }
    parts.push(
      { name: `target forward n=${G + 1}`, dispatches: tp.dispatches },
      {
        // p_i only for the rows acceptance reads, from the target's logits: no probs dispatch
        name: "accept",
        dispatches: [acceptKernel(gpu, {
          ...sampling,
          state,
          layout,
          logits: tp.logits,
          q,
          draft: drafts,
          gamma: G,
          lenience,
          seed,
          residual: options.residual ?? true,
          feedTokens: d2.tokens,
          feedStart: d2.start,
        })],
      },
    );
    // the first step's draft feed
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: d2.tokens,
      start: d2.start,
      n: 2,
      back: 2,
    });
    return {
      gpu,
      label,
      layout,
      promptLen: P,
      state,
      prefill: [
        ...prefillDispatches(target, tc, state, layout, P),
        ...prefillDispatches(draft, dc, state, layout, P),
        feed,
      ],
      step: parts.flatMap((x) => x.dispatches),
      parts,
      maxRate: G + 1,
      destroy: cleanup.run,
    };
  } catch (e) {
    cleanup.run();
    throw e;
  }
}

/**
 * Speculative decoding (Leviathan et al. 2023, Algorithm 1) as in the reference's
 * `speculative_decoding`: each step the draft samples γ tokens x_1..x_γ from q (filtered,
 * tempered), the target scores all γ + 1 positions in one forward, and each row accepts x_i while
 * `r_i ≤ p(x_i) / (lenience · q(x_i))`; at the first rejection it samples from
 * `norm(max(0, p − q))`, and if all γ pass it samples a bonus token from p. With lenience 1 the
 * output has exactly the target's law; temperature 0 gives exactly the target's greedy output.
 * Rows advance at their own rates with no realignment; rejected tokens leave both KV caches by
 * rolling each row's position back.
 *
 * @param target the large model whose law the output follows
 * @param draft the small model proposing tokens (same numTokens, same GPU)
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included (> prompt length, ≤ both models' maxSeqLen)
 * @param options gamma, temperature (0 = greedy), filterThres, lenience, seed, chunking,
 *   streaming and timing
 * @returns the generated tokens, acceptance statistics and cost counters
 * @throws Error on bad input (gamma, temperature, filterThres, lenience, mismatched models,
 *   empty or ragged prompt, tokens out of range, seqLen too small or too large)
 * @example
 * ```ts
 * import { Decoder, requestGpu, speculativeDecoding } from "@x/specdec";
 * const gpu = await requestGpu();
 * const target = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 4 }, { seed: 0 });
 * const draft = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 1 }, { seed: 1 });
 * const out = await speculativeDecoding(target, draft, [[72, 101]], 32, { gamma: 4 });
 * console.log(out.tokens[0].length, out.acceptedMean, out.targetForwards);
 * ```
 */
export async function speculativeDecoding(
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions = {},
): Promise<SpeculativeResult> {
  return await decode<SpeculativeResult>(
    "speculativeDecoding",
    target.gpu,
    seqLen,
    options,
    () => speculativeDecodingEngine(target, draft, prompt, seqLen, options),
    (engine, run) => {
      const P = engine.promptLen, B = engine.layout.batch, W = engine.layout.statsWidth;
      const G = engine.maxRate - 1;
      let rowStepsTotal = 0, accepted = 0;
      const at = new Array<number>(G).fill(0);
      for (let b = 0; b < B; b++) {
        rowStepsTotal += run.stats[b * W];
        accepted += run.stats[b * W + 1];
        for (let i = 0; i < G; i++) at[i] += run.stats[b * W + 2 + i];
      }
      return {
        draftForwards: G * run.stepsEncoded + (P > 1 ? 1 : 0),
        acceptedMean: accepted / rowStepsTotal,
        acceptedPerPosition: at.map((a) => a / rowStepsTotal),
        rowSteps: run.rowSteps,
        gamma: G,
      };
    },
  );
}

/** Per-generated-token costs of a decoding result, for benchmarks and reports. */
export interface DecodingCosts {
  /** Generated tokens over all rows. */
  tokens: number;
  /** Readbacks per generated token. */
  readbacksPerToken: number;
  /** Compute dispatches per generated token. */
  dispatchesPerToken: number;
  /** Target forward passes per generated token per row (batch forwards / tokens per row). */
  targetForwardsPerToken: number;
  /** Draft forward passes per generated token per row (0 for base decoding). */
  draftForwardsPerToken: number;
  /** GPU milliseconds per generated token (when timed). */
  gpuMsPerToken?: number;
  /** Wall milliseconds per generated token. */
  wallMsPerToken: number;
}

/**
 * Per-token costs of a {@link baseDecoding} or {@link speculativeDecoding} result, so the two
 * compare on the same footing.
 *
 * @param r a decoding result
 * @returns costs per generated token
 * @example
 * ```ts
 * import { baseDecoding, Decoder, decodingCosts, requestGpu } from "@x/specdec";
 * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 64, depth: 2 });
 * console.log(decodingCosts(await baseDecoding(model, [[1, 2]], 32)));
 * ```
 */
export function decodingCosts(r: DecodingResult | SpeculativeResult): DecodingCosts {
  const perRow = r.generated / r.tokens.length;
  return {
    tokens: r.generated,
    readbacksPerToken: r.readbacksPerToken,
    dispatchesPerToken: r.dispatches / r.generated,
    targetForwardsPerToken: r.targetForwards / perRow,
    draftForwardsPerToken: ("draftForwards" in r ? r.draftForwards : 0) / perRow,
    gpuMsPerToken: r.gpuMs === undefined ? undefined : r.gpuMs / r.generated,
    wallMsPerToken: r.wallMs / r.generated,
  };
}
