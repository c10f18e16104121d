/**
 * Sampling on the GPU: the reference's top-k filter, temperature, softmax, a counter-based random
 * number generator (Philox4x32-10) and categorical sampling by inverse CDF, one workgroup per row.
 *
 * Semantics, exactly as the reference (lucidrains/speculative-decoding) and the design (§3):
 * - top-k keeps the `k = ceil((1 − filterThres) · V)` largest logits and drops the rest (−inf).
 *   Ties at the k-th largest value keep the LOWEST indices first, so exactly k logits survive
 *   (torch.topk leaves the choice among ties unspecified; this makes it deterministic).
 * - probabilities are `softmax(logits / temperature)` over the kept logits, computed as
 *   `exp((l − max) / T) / Σ`, with a deterministic reduction (no float atomics).
 * - temperature 0 is greedy: a one-hot at the argmax (first index on ties, like torch.argmax).
 * - a uniform is Philox4x32-10 of a 4-word counter under the 2-word key (seed low, seed high),
 *   word 0's top 24 bits / 2²⁴ ∈ [0, 1). Decoding kernels build counters from (row, the row's
 *   position read from a GPU buffer, purpose, index), so the same seed gives the same output and
 *   nothing is written per step by the host.
 * - a categorical sample takes the first index whose running sum of weights exceeds `u · Σw`;
 *   only indices with positive weight can be chosen (f32 rounding at the end falls back to the
 *   last positive one).
 *
 * Draft probabilities (q) and target probabilities (p) come from the very same WGSL
 * ({@link LOGITS_CORE}), so both are computed in the same precision by the same code.
 *
 * @module
 */
import { type Dispatch, f32bits, type Gpu } from "./gpu.ts";

/**
 * Threads per row workgroup: a power of two from 32 to 256, about a quarter of the row, so
 * short vocabularies don't leave most invocations idle at every barrier (64 for V = 256).
 *
 * @param numTokens the row length V
 * @returns the workgroup size
 */
export function samplingWorkgroupSize(numTokens: number): number {
  let wg = 32;
  while (wg * 4 < numTokens && wg < 256) wg *= 2;
  return wg;
}

/** Purpose words of the RNG counter (row, position, purpose, index): distinct random streams. */
export const RNG_PURPOSE: {
  readonly base: 0;
  readonly draft: 1;
  readonly accept: 2;
  readonly extra: 3;
} = {
  /** The token of a base decoding step. */
  base: 0,
  /** Draft token i (index i, from 1) of a speculative step. */
  draft: 1,
  /** The acceptance uniform r_i (index i − 1) of a speculative step. */
  accept: 2,
  /** The correction or bonus token of a speculative step (index 0; 1 for the fallback). */
  extra: 3,
} as const;

/**
 * The top-k of the reference: `k = ceil((1 − filterThres) · numTokens)` (26 of 256 at 0.9).
 *
 * @param numTokens vocabulary size V
 * @param filterThres the filter threshold in [0, 1)
 * @returns k in [1, V]
 */
export function topK(numTokens: number, filterThres: number): number {
  return Math.min(numTokens, Math.max(1, Math.ceil((1 - filterThres) * numTokens)));
}

/**
 * Checks sampling options and throws a clear error on bad values.
 *
 * @param temperature ≥ 0 and finite (0 = greedy)
 * @param filterThres in [0, 1)
 * @throws Error naming the bad option
 */
export function validateSampling(temperature: number, filterThres: number): void {
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0) {
    throw new Error(
      `specdec: temperature must be a finite number ≥ 0 (0 = greedy), got ${temperature}`,
    );
  }
  if (typeof filterThres !== "number" || !(filterThres >= 0 && filterThres < 1)) {
    throw new Error(`specdec: filterThres must be in [0, 1), got ${filterThres}`);
  }
}

/** Splits a seed (an integer in [0, 2⁵³)) into the two key words of Philox. */
export function seedWords(seed: number): [number, number] {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`specdec: seed must be a non-negative safe integer, got ${seed}`);
  }
  return [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}

/** The sampling words every row kernel's uniform starts with (see {@link LOGITS_CORE}). */
export interface SamplingOptions {
  /** Vocabulary size V. */
  numTokens: number;
  /** Softmax temperature, ≥ 0; 0 means greedy (argmax). */
  temperature: number;
  /** Top-k threshold in [0, 1): keeps ceil((1 − filterThres)·V) logits. */
  filterThres: number;
}

/** Uniform words `V, k, invT bits, greedy` shared by the row kernels' Params structs. */
function samplingWords({ numTokens, temperature, filterThres }: SamplingOptions): number[] {
  validateSampling(temperature, filterThres);
  const greedy = temperature === 0;
  // like the reference's safe_div: logits / max(T, 1e-10), so 1/T stays finite in f32
  const invT = greedy ? 1 : 1 / Math.max(temperature, 1e-10);
  return [numTokens, topK(numTokens, filterThres), f32bits(invT), +greedy];
}

/** The Params fields every row kernel starts with (the core reads them as `P.V`, …). */
const SAMPLING_FIELDS = `V: u32, k: u32, invT: f32, greedy: u32,`;

/**
 * WGSL: Philox4x32-10 (Salmon et al. 2011, as in Random123) and a 24-bit uniform in [0, 1).
 * The 32×32→64 multiply is done on 16-bit halves since WGSL has no 64-bit integers.
 */
export const PHILOX_WGSL: string = /* wgsl */ `
fn mulhilo(a: u32, b: u32) -> vec2<u32> { // (high, low) words of a·b
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>(p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), a * b);
}
fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = ctr;
  var k = key;
  for (var i = 0u; i < 10u; i++) {
    let m0 = mulhilo(0xD2511F53u, c.x);
    let m1 = mulhilo(0xCD9E8D57u, c.z);
    c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
    k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
  }
  return c;
}
fn uniform01(ctr: vec4<u32>, key: vec2<u32>) -> f32 {
  return f32(philox(ctr, key).x >> 8u) * (1.0 / 16777216.0);
}
`;

/**
 * WGSL shared by every row kernel: workgroup scratch, each thread's contiguous chunk of the row,
 * and `invCdf(t, u)`, the categorical sample over `weight(j, &tie)` that the including kernel
 * defines (called for each j of a chunk in increasing order; `tie` is the tie counter the
 * logits core needs). Needs a uniform `P` with a field `V`.
 */
const rowCommon = (wg: number): string => /* wgsl */ `
const WG: u32 = ${wg}u;
const NONE: u32 = 0xffffffffu;
var<workgroup> wf: array<f32, WG>;      // per-thread partial sums / maxima
var<workgroup> wi: array<u32, WG>;      // per-thread partial indices / counts
var<workgroup> tieBase: array<u32, WG>; // ties at the threshold before each thread's chunk
var<workgroup> wsel: array<u32, 2>;     // radix select broadcast: (prefix, remaining rank)
var<workgroup> wpick: u32;              // the sampled index, broadcast
var<workgroup> wword: u32;              // a word loaded by thread 0, broadcast uniformly

// The contiguous chunk [x, y) of the row that thread t owns (chunks keep index order).
fn chunkOf(t: u32) -> vec2<u32> {
  let c = (P.V + WG - 1u) / WG;
  let lo = min(t * c, P.V);
  return vec2<u32>(lo, min(lo + c, P.V));
}

// Categorical sample: the first j with Σ_{i≤j} w_i > u · Σ w (w_j > 0), NONE if Σ w = 0.
// Thread 0 scans the per-thread chunk sums in order (a sequential f32 sum of non-negative terms
// is monotone, so the search is consistent), then walks the chosen chunk.
fn invCdf(t: u32, u: f32) -> u32 {
  let ch = chunkOf(t);
  var tie = tieBase[t];
  var s = 0.0;
  for (var j = ch.x; j < ch.y; j++) { s += weight(j, &tie); }
  wf[t] = s;
  workgroupBarrier();
  if (t == 0u) {
    var total = 0.0;
    for (var c = 0u; c < WG; c++) { total += wf[c]; }
    let goal = u * total;
    var acc = 0.0;
    var cc = NONE;
    var accC = 0.0;
    for (var c = 0u; c < WG; c++) {
      let w = wf[c];
      if (w > 0.0) {
        cc = c;
        accC = acc;
        if (acc + w > goal) { break; }
      }
      acc += w;
    }
    var pick = NONE;
    if (cc != NONE) {
      let r = chunkOf(cc);
      var tie2 = tieBase[cc];
      var a = accC;
      for (var j = r.x; j < r.y; j++) {
        let w = weight(j, &tie2);
        if (w > 0.0) {
          pick = j;
          a += w;
          if (a > goal) { break; }
        }
      }
    }
    wpick = pick;
  }
  return workgroupUniformLoad(&wpick);
}
`;

/**
 * WGSL core of the filtered, tempered probabilities of one logits row (needs a binding `logits`
 * and a uniform `P` with `V, k, invT, greedy`). `analyze(base, t)` (uniform control flow) finds
 * the row's max and argmax, the top-k threshold by a radix select (up to 4 passes of 8 bits)
 * on order-preserving keys, and the softmax sum; then `logitProb(j, &tie)` is the probability of j (walk chunks in
 * order). `weight` for `invCdf` is `logitProb`.
 */
export const LOGITS_CORE: string = /* wgsl */ `
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> wflag: u32;
var<private> rBase: u32; // offset of the row in logits
var<private> rMask: u32; // high bits of the order key the threshold fixes (radix passes done)
var<private> rThr: u32;  // those bits of the k-th largest logit's order key
var<private> rKeep: u32; // logits at the threshold that are kept (lowest indices first)
var<private> rMax: f32;  // the row's max logit
var<private> rSum: f32;  // Σ over kept logits of exp((l − max) / T)
var<private> rArg: u32;  // argmax, first index on ties

// Maps f32 to u32 so that unsigned order is float order.
fn orderKey(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// exp((l_j − max) / T) if j survives the top-k filter, else 0.
fn keptExp(j: u32, tie: ptr<function, u32>) -> f32 {
  let l = logits[rBase + j];
  let key = orderKey(l) & rMask;
  var keep = key > rThr;
  if (key == rThr) {
    keep = *tie < rKeep;
    *tie = *tie + 1u;
  }
  if (!keep) { return 0.0; }
  return exp((l - rMax) * P.invT);
}

fn logitProb(j: u32, tie: ptr<function, u32>) -> f32 {
  if (P.greedy != 0u) { return select(0.0, 1.0, j == rArg); }
  return keptExp(j, tie) / rSum;
}

// Reductions go through thread 0 in chunk order: few barriers (cheap on software adapters),
// deterministic, and "first index on ties" for free.
fn analyze(base: u32, t: u32) {
  rBase = base;
  let ch = chunkOf(t);
  // max and argmax (first index wins ties)
  var bv = 0.0;
  var bi = NONE;
  for (var j = ch.x; j < ch.y; j++) {
    let v = logits[base + j];
    if (bi == NONE || v > bv) { bv = v; bi = j; }
  }
  wf[t] = bv;
  wi[t] = bi;
  workgroupBarrier();
  if (t == 0u) {
    var v = wf[0];
    var i = wi[0];
    for (var c = 1u; c < WG; c++) {
      if (wi[c] != NONE && (i == NONE || wf[c] > v)) { v = wf[c]; i = wi[c]; }
    }
    wsel[0] = bitcast<u32>(v);
    wsel[1] = i;
  }
  workgroupBarrier();
  rMax = bitcast<f32>(wsel[0]);
  rArg = wsel[1];
  rMask = 0u; // no filter: every key matches the threshold and rKeep keeps them all
  rThr = 0u;
  rKeep = NONE;
  tieBase[t] = 0u;
  rSum = 1.0;
  if (P.greedy != 0u) { return; }
  if (P.k < P.V) {
    // radix select of the k-th largest key, 8 bits per pass from the top, stopping as soon as
    // every candidate left in the chosen bin is kept
    // hist starts zeroed (workgroup memory is zero-initialised) and each pass clears it
    var prefix = 0u;
    var mask = 0u;
    var kk = P.k;
    var done = 0u;
    for (var ps = 0u; ps < 4u; ps++) {
      let shift = 24u - 8u * ps;
      for (var j = ch.x; j < ch.y; j++) {
        let key = orderKey(logits[base + j]);
        if ((key & mask) == prefix) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }
      }
      workgroupBarrier();
      if (t == 0u) {
        var acc = 0u;
        var sel = 0u;
        var selCount = 0u;
        var found = false;
        for (var i = 0u; i < 256u; i++) {
          let d = 255u - i;
          let c = atomicExchange(&hist[d], 0u); // read and clear for the next pass
          if (!found) {
            if (acc + c >= kk) { found = true; sel = d; selCount = c; } else { acc += c; }
          }
        }
        wsel[0] = prefix | (sel << shift);
        wsel[1] = kk - acc;
        wflag = select(0u, 1u, selCount == kk - acc);
      }
      done = workgroupUniformLoad(&wflag);
      prefix = wsel[0];
      kk = wsel[1];
      mask = mask | (255u << shift);
      if (done != 0u) { break; }
    }
    rThr = prefix;
    rMask = mask;
    rKeep = kk;
    if (done != 0u) {
      rKeep = NONE; // all candidates at the threshold are kept
    } else {
      // more logits equal the k-th largest than are kept: count ties before each chunk
      var ties = 0u;
      for (var j = ch.x; j < ch.y; j++) {
        if ((orderKey(logits[base + j]) & rMask) == rThr) { ties++; }
      }
      wi[t] = ties;
      workgroupBarrier();
      if (t == 0u) {
        var acc = 0u;
        for (var c = 0u; c < WG; c++) { tieBase[c] = acc; acc += wi[c]; }
      }
      workgroupBarrier();
    }
  }
  // softmax denominator over the kept logits
  var tie = tieBase[t];
  var s = 0.0;
  for (var j = ch.x; j < ch.y; j++) { s += keptExp(j, &tie); }
  wf[t] = s;
  workgroupBarrier();
  if (t == 0u) {
    var total = 0.0;
    for (var c = 0u; c < WG; c++) { total += wf[c]; }
    wsel[0] = bitcast<u32>(total);
  }
  workgroupBarrier();
  rSum = bitcast<f32>(wsel[0]);
}

fn weight(j: u32, tie: ptr<function, u32>) -> f32 { return logitProb(j, tie); }
`;

/** Assembles a row kernel: params struct, bindings, shared WGSL and the main body. */
function rowKernel(
  wg: number,
  fields: string,
  bindings: string,
  core: string,
  body: string,
): string {
  return /* wgsl */ `
struct Params { ${SAMPLING_FIELDS} ${fields} }
@group(0) @binding(0) var<uniform> P: Params;
${bindings}
${rowCommon(wg)}
${PHILOX_WGSL}
${core}
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
${body}
}`;
}

const probsCode = (wg: number): string =>
  rowKernel(
    wg,
    "rows: u32,",
    /* wgsl */ `
@group(0) @binding(1) var<storage, read> logits: array<f32>;      // (R, V)
@group(0) @binding(2) var<storage, read_write> probs: array<f32>; // (R, V)`,
    LOGITS_CORE,
    /* wgsl */ `
  if (row >= P.rows) { return; }
  analyze(row * P.V, t);
  let ch = chunkOf(t);
  var tie = tieBase[t];
  for (var j = ch.x; j < ch.y; j++) { probs[row * P.V + j] = logitProb(j, &tie); }`,
  );

/**
 * Filtered, tempered probabilities of each logits row: `probs = softmax(topk(logits) / T)`, or a
 * one-hot at the argmax when the temperature is 0. One workgroup per row.
 *
 * @param gpu the runtime
 * @param args `logits (R, V)` f32 in, `probs (R, V)` f32 out, `rows` R and the sampling options
 * @returns the dispatch
 */
export function probsKernel(
  gpu: Gpu,
  args: SamplingOptions & { logits: GPUBuffer; probs: GPUBuffer; rows: number },
): Dispatch {
  return gpu.kernel({
    label: `probs (${args.rows}, ${args.numTokens})`,
    code: probsCode(samplingWorkgroupSize(args.numTokens)),
    buffers: [args.logits, args.probs],
    params: [...samplingWords(args), args.rows],
    workgroups: args.rows,
  });
}

const sampleCode = (wg: number): string =>
  rowKernel(
    wg,
    "rows: u32, seedLo: u32, seedHi: u32,",
    /* wgsl */ `
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // (R, V)
@group(0) @binding(2) var<storage, read> counters: array<u32>;     // (R, 4) Philox counters
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>; // (R)`,
    LOGITS_CORE,
    /* wgsl */ `
  if (row >= P.rows) { return; }
  analyze(row * P.V, t);
  var tok = rArg;
  if (P.greedy == 0u) {
    let c = vec4<u32>(counters[4u * row], counters[4u * row + 1u], counters[4u * row + 2u],
                      counters[4u * row + 3u]);
    tok = invCdf(t, uniform01(c, vec2<u32>(P.seedLo, P.seedHi)));
  }
  if (t == 0u) { tokens[row] = tok; }`,
  );

/**
 * Samples one token per logits row from `softmax(topk(logits) / T)` (argmax at T = 0), with the
 * uniform of each row drawn from Philox under `seed` at that row's counter. The building block
 * the decoding kernels specialise; handy for tests and benchmarks.
 *
 * @param gpu the runtime
 * @param args `logits (R, V)` f32, `counters (R, 4)` u32 Philox counters, `tokens (R)` u32 out,
 *   `rows`, `seed` and the sampling options
 * @returns the dispatch
 */
export function sampleKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    counters: GPUBuffer;
    tokens: GPUBuffer;
    rows: number;
    seed: number;
  },
): Dispatch {
  return gpu.kernel({
    label: `sample (${args.rows}, ${args.numTokens})`,
    code: sampleCode(samplingWorkgroupSize(args.numTokens)),
    buffers: [args.logits, args.counters, args.tokens],
    params: [...samplingWords(args), args.rows, ...seedWords(args.seed)],
    workgroups: args.rows,
  });
}

const RANDOM_CODE = /* wgsl */ `
struct Params { rows: u32, seedLo: u32, seedHi: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> counters: array<u32>;  // (R, 4)
@group(0) @binding(2) var<storage, read_write> out: array<u32>; // (R, 4)
${PHILOX_WGSL}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = g.x + g.y * nwg.x * 64u;
  if (r >= P.rows) { return; }
  let c = vec4<u32>(counters[4u * r], counters[4u * r + 1u], counters[4u * r + 2u], counters[4u * r + 3u]);
  let o = philox(c, vec2<u32>(P.seedLo, P.seedHi));
  out[4u * r] = o.x; out[4u * r + 1u] = o.y; out[4u * r + 2u] = o.z; out[4u * r + 3u] = o.w;
}`;

/**
 * The raw Philox4x32-10 words of each counter under `seed` (to check the GPU generator bit for
 * bit against a CPU implementation).
 *
 * @param gpu the runtime
 * @param args `counters (R, 4)` u32 in, `out (R, 4)` u32 out, `rows`, `seed`
 * @returns the dispatch
 */
export function philoxKernel(
  gpu: Gpu,
  args: { counters: GPUBuffer; out: GPUBuffer; rows: number; seed: number },
): Dispatch {
  return gpu.kernel({
    label: `philox (${args.rows})`,
    code: RANDOM_CODE,
    buffers: [args.counters, args.out],
    params: [args.rows, ...seedWords(args.seed)],
    workgroups: Math.ceil(args.rows / 64),
  });
}

/**
 * Where the decoding state lives in its single u32 buffer (so one readback per chunk gets
 * everything): `[pos (B) | stats (B, statsWidth) | seq (B, seqLen)]`.
 */
export interface StateLayout {
  /** Rows B. */
  batch: number;
  /** Sequence length L (prompt + generated). */
  seqLen: number;
  /** u32 counters per row (base: 1 = steps; speculative: 2 + gamma). */
  statsWidth: number;
}

/** Word offsets of the parts of the state buffer and its total size in words. */
export function stateOffsets(
  layout: StateLayout,
): { pos: number; stats: number; seq: number; words: number } {
  const { batch: B, seqLen: L, statsWidth: W } = layout;
  return { pos: 0, stats: B, seq: B + B * W, words: B + B * W + B * L };
}

/** Uniform words (B, L, statsOff, seqOff, statsWidth) of a state layout. */
function layoutWords(layout: StateLayout): number[] {
  const o = stateOffsets(layout);
  return [layout.batch, layout.seqLen, o.stats, o.seq, layout.statsWidth];
}

const LAYOUT_FIELDS = `B: u32, L: u32, statsOff: u32, seqOff: u32, statsW: u32,`;

const baseStepCode = (wg: number): string =>
  rowKernel(
    wg,
    `${LAYOUT_FIELDS} n: u32, seedLo: u32, seedHi: u32,`,
    /* wgsl */ `
@group(0) @binding(1) var<storage, read> logits: array<f32>;      // (B, n, V)
@group(0) @binding(2) var<storage, read_write> state: array<u32>; // [pos (B) | stats (B, W) | seq (B, L)]`,
    LOGITS_CORE,
    /* wgsl */ `
  let b = row;
  if (b >= P.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= P.L) { return; } // finished rows do nothing
  analyze((b * P.n + P.n - 1u) * P.V, t);
  var tok = rArg;
  if (P.greedy == 0u) {
    tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.base}u, 0u), vec2<u32>(P.seedLo, P.seedHi)));
  }
  if (t == 0u) {
    state[P.seqOff + b * P.L + pos] = tok;
    state[b] = pos + 1u;
    state[P.statsOff + b * P.statsW] += 1u;
  }`,
  );

/**
 * One base decoding step's sampling: for each unfinished row b (pos[b] < L), samples a token
 * from the last logits row of b, writes it at seq[b, pos[b]], advances pos[b] and counts the
 * step in stats[b, 0]. The uniform's counter is (b, pos[b], base, 0).
 *
 * @param gpu the runtime
 * @param args `logits (B, n, V)` f32, the `state` buffer and its `layout`, `n`, `seed` and the
 *   sampling options
 * @returns the dispatch
 */
export function baseStepKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    state: GPUBuffer;
    layout: StateLayout;
    n: number;
    seed: number;
  },
): Dispatch {
  return gpu.kernel({
    label: `base step sample (${args.layout.batch}, ${args.numTokens})`,
    code: baseStepCode(samplingWorkgroupSize(args.numTokens)),
    buffers: [args.logits, args.state],
    params: [...samplingWords(args), ...layoutWords(args.layout), args.n, ...seedWords(args.seed)],
    workgroups: args.layout.batch,
  });
}

/** The draft sampling kernel, with or without writing the next draft forward's feed. */
const draftStepCode = (wg: number, feed: boolean): string =>
  rowKernel(
    wg,
    `${LAYOUT_FIELDS} n: u32, seedLo: u32, seedHi: u32, i: u32, gamma: u32,`,
    /* wgsl */ `
@group(0) @binding(1) var<storage, read> logits: array<f32>;      // (B, n, V)
@group(0) @binding(2) var<storage, read> state: array<u32>;       // [pos (B) | …]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;     // (B, gamma, V)
@group(0) @binding(4) var<storage, read_write> draft: array<u32>; // (B, gamma)
${
      feed
        ? `@group(0) @binding(5) var<storage, read_write> feedTokens: array<u32>; // (B)
@group(0) @binding(6) var<storage, read_write> feedStart: array<u32>;  // (B)`
        : ""
    }`,
    LOGITS_CORE,
    /* wgsl */ `
  let b = row;
  if (b >= P.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= P.L) { return; } // finished rows do nothing
  // the logits row of interest: with n = 2 the forward started at max(pos − 2, 0)
  var r = 0u;
  if (P.n == 2u && pos >= 2u) { r = 1u; }
  analyze((b * P.n + r) * P.V, t);
  let qBase = (b * P.gamma + P.i - 1u) * P.V;
  let ch = chunkOf(t);
  var tie = tieBase[t];
  for (var j = ch.x; j < ch.y; j++) { q[qBase + j] = logitProb(j, &tie); }
  var tok = rArg;
  if (P.greedy == 0u) {
    tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.draft}u, P.i), vec2<u32>(P.seedLo, P.seedHi)));
  }
  if (t == 0u) {
    draft[b * P.gamma + P.i - 1u] = tok;
    ${
      feed
        ? `feedTokens[b] = tok;            // the next draft forward feeds x_i
    feedStart[b] = pos + P.i - 1u;     // at its position`
        : ""
    }
  }`,
  );

/**
 * Draft step i (1-based) of a speculative step: for each unfinished row b, computes q_i from
 * the draft's logits row of interest (with `n = 2` the forward started at max(pos − 2, 0), so the
 * row is pos − 1 − start; with `n = 1` it is the only row), stores q_i at `q[b, i − 1]`, samples
 * x_i (counter (b, pos, draft, i)) into `draft[b, i − 1]`, and, when `feedTokens`/`feedStart` are
 * given, feeds x_i at position pos + i − 1 to the next draft forward.
 *
 * @param gpu the runtime
 * @param args `logits (B, n, V)`, `state` (pos read), `q (B, gamma, V)` and `draft (B, gamma)`
 *   out, optional `feedTokens (B)`/`feedStart (B)` u32 out, `n` (1 or 2), `i`, `gamma`, `seed`
 *   and the sampling options
 * @returns the dispatch
 */
export function draftStepKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    state: GPUBuffer;
    layout: StateLayout;
    q: GPUBuffer;
    draft: GPUBuffer;
    feedTokens?: GPUBuffer;
    feedStart?: GPUBuffer;
    n: number;
    i: number;
    gamma: number;
    seed: number;
  },
): Dispatch {
  const feed = !!(args.feedTokens && args.feedStart);
  return gpu.kernel({
    label: `draft step ${args.i} sample (${args.layout.batch}, ${args.numTokens})`,
    code: draftStepCode(samplingWorkgroupSize(args.numTokens), feed),
    buffers: [
      args.logits,
      args.state,
      args.q,
      args.draft,
      ...(feed ? [args.feedTokens!, args.feedStart!] : []),
    ],
    params: [
      ...samplingWords(args),
      ...layoutWords(args.layout),
      args.n,
      ...seedWords(args.seed),
      args.i,
      args.gamma,
    ],
    workgroups: args.layout.batch,
  });
}

/** WGSL pieces the acceptance kernel (speculative.ts) reuses. */
export const ROW_WGSL: {
  common: (wg: number) => string;
  philox: string;
  samplingFields: string;
  layoutFields: string;
} = {
  common: rowCommon,
  philox: PHILOX_WGSL,
  samplingFields: SAMPLING_FIELDS,
  layoutFields: LAYOUT_FIELDS,
};

/** Uniform word helpers the acceptance kernel (speculative.ts) reuses. */
export const ROW_WORDS: {
  sampling: (o: SamplingOptions) => number[];
  layout: (l: StateLayout) => number[];
} = { sampling: samplingWords, layout: layoutWords };
