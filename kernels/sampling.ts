/**
 * Sampling on the GPU: the reference's top-k filter, temperature, softmax, a counter-based random
 * number generator (Philox4x32-10) and categorical sampling by inverse CDF, one workgroup per row.
 * This module holds the semantics, their host-side options and the WGSL every sampling kernel
 * includes ({@link PHILOX_WGSL}, {@link rowCommonWgsl}, {@link LOGITS_CORE}); the kernels are the
 * decode step kernels (decode_step.ts) and the acceptance kernel (speculative.ts).
 *
 * Semantics, exactly as the reference (lucidrains/speculative-decoding), with its unspecified
 * corners made deterministic:
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
 * - non-finite logits (the policy of decode_state.ts's `ROW_ERROR`, as PyTorch's `multinomial`
 *   refuses NaN and Inf probabilities): `analyze` reports a NaN anywhere in the row (even one the
 *   filter would drop), +∞ unless greedy (softmax would be ∞/∞), and a row whose max is −∞
 *   (nothing has positive probability). −∞ beside a larger logit is a masked token (probability
 *   0). Greedy takes the first +∞ as the argmax. A kernel that gets a report writes no token: it
 *   stops the row and records why, and the host throws.
 *
 * Draft probabilities (q) and target probabilities (p) come from the very same WGSL
 * ({@link LOGITS_CORE}), so both are computed in the same precision by the same code.
 *
 * ## The chunk cache (software adapters)
 *
 * Each of a row's 8 threads reads its chunk of logits (32 at V = 256) in every pass: the max,
 * up to 8 radix-select passes, the tie count, the softmax sum, `invCdf`. On lavapipe a storage
 * load is a per-lane loop with a bounds test (~5 to 7 ns a word a lane, kernels/fused_linear.ts),
 * a private array read costs next to nothing, so the first pass now keeps the chunk in a private
 * array (`samplingCacheLength`: chunks up to {@link SAMPLING_CACHE_CAP} words) and the others read
 * it there; the same values in the same order, so the same bits (tests/sampling_cache_test.ts).
 * Measured with scratch/samp_bench.ts (400 copies of one dispatch in one submit, minus an empty
 * submit, / 400, median of 5 rounds; B = 1, V = 256, top-k 0.9, temperature 1, γ = 4; old and
 * new alternated 4 times, the median of the 4 kept; load average 2.8 to 2.9), µs per dispatch,
 * old → new: base step sample 79 → 58, a draft step sample (which also writes q) 79 → 60,
 * acceptance (5 rows analyzed, the bonus sampled) 269 → 191. About 25 µs of each is the fixed
 * cost of a dispatch, so the base step's work went from ~55 to ~33 µs. Looping to the
 * constant chunk length (an index provably the same in all lanes) instead of the thread's
 * length measured no faster, so the loops keep their plain form.
 *
 * @module
 */

/**
 * Threads per row workgroup. On hardware: a power of two from 32 to 128, about a quarter of the
 * row, so short vocabularies don't leave most invocations idle at every barrier (64 for
 * V = 256); at most 128 keeps the radix select's per-thread digit counts (16 words a thread)
 * and the other partials under 12 KiB of workgroup memory. On software adapters: 8, one SIMD
 * group of lavapipe's 256-bit JIT, which runs a workgroup's invocations 8 at a time on one CPU
 * thread: wider groups only add coroutine switches at every barrier and longer serial scans over
 * the per-thread partials.
 *
 * @param numTokens the row length V
 * @param software whether the adapter is a software one (default false)
 * @returns the workgroup size
 */
export function samplingWorkgroupSize(numTokens: number, software = false): number {
  if (software) return 8;
  let wg = 32;
  while (wg * 4 < numTokens && wg < 128) wg *= 2;
  return wg;
}

/**
 * The longest chunk of a row a sampling thread keeps in a private array (64 f32, 256 bytes a
 * thread): every chunk at V ≤ 512 on software adapters. Longer chunks are read from storage in
 * every pass, as before: a private array of thousands of words per invocation (V = 50 257 has
 * chunks of 6 283) would sit on lavapipe's coroutine stacks, and the forward of such a vocabulary
 * costs far more than its sampling anyway.
 */
export const SAMPLING_CACHE_CAP: number = 64;

/**
 * How many logits each sampling thread keeps in a private array ({@link rowCommonWgsl}): the
 * chunk length `ceil(V / WG)` on software adapters when it is at most
 * {@link SAMPLING_CACHE_CAP}, else 0 (every pass reads storage). On hardware adapters 0: there a
 * storage load is one cached vector load, while a dynamically indexed private array of 4 to 64
 * words per thread may go to scratch memory; nothing was measured there, so that path is the one
 * that always ran.
 *
 * @param numTokens the row length V
 * @param software whether the adapter is a software one (default false)
 * @returns the chunk length to cache, or 0
 * @example
 * ```ts
 * import { samplingCacheLength } from "./sampling.ts";
 * samplingCacheLength(256, true); // 32: 8 threads of 32 logits
 * samplingCacheLength(50257, true); // 0: chunks of 6 283 stay in storage
 * ```
 */
export function samplingCacheLength(numTokens: number, software = false): number {
  if (!software) return 0;
  const c = Math.ceil(numTokens / samplingWorkgroupSize(numTokens, software));
  return c <= SAMPLING_CACHE_CAP ? c : 0;
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
 * A value as an error message shows it: strings quoted (`"abc"`, so `"1"` is not mistaken for
 * 1), numbers as they print, anything else by its type (`null`, `an array of 3`, `an object`).
 *
 * @param v any value
 * @returns its description
 */
export function showValue(v: unknown): string {
  if (typeof v === "string") {
    return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)}`;
  }
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  return `${typeof v === "function" ? "a function" : "an object"}`;
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
      `specdec: temperature must be a finite number ≥ 0 (0 = greedy), got ${
        showValue(temperature)
      }`,
    );
  }
  if (typeof filterThres !== "number" || !(filterThres >= 0 && filterThres < 1)) {
    throw new Error(
      `specdec: filterThres must be in [0, 1), got ${showValue(filterThres)}`,
    );
  }
}

/** Splits a seed (an integer in [0, 2⁵³)) into the two key words of Philox. */
export function seedWords(seed: number): [number, number] {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`specdec: seed must be a non-negative safe integer, got ${showValue(seed)}`);
  }
  return [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}

/** The Philox key of a seed as the `seedLo, seedHi` params of a kernel. */
export function seedParams(seed: number): { seedLo: number; seedHi: number } {
  const [seedLo, seedHi] = seedWords(seed);
  return { seedLo, seedHi };
}

/** The options every row kernel's params start with (see {@link samplingParams}). */
export interface SamplingOptions {
  /** Vocabulary size V. */
  numTokens: number;
  /** Softmax temperature, ≥ 0; 0 means greedy (argmax). */
  temperature: number;
  /** Top-k threshold in [0, 1): keeps ceil((1 − filterThres)·V) logits. */
  filterThres: number;
}

/**
 * The params `V: u32, k: u32, invT: f32, greedy: u32` that {@link LOGITS_CORE} reads, from
 * validated sampling options.
 *
 * @param options vocabulary size, temperature and filter threshold
 * @returns the params fields by name
 * @throws Error on a bad temperature or filterThres
 */
export function samplingParams(
  { numTokens, temperature, filterThres }: SamplingOptions,
): { V: number; k: number; invT: number; greedy: number } {
  validateSampling(temperature, filterThres);
  const greedy = temperature === 0;
  // like the reference's safe_div: logits / max(T, 1e-10), so 1/T stays finite in f32
  const invT = greedy ? 1 : 1 / Math.max(temperature, 1e-10);
  return { V: numTokens, k: topK(numTokens, filterThres), invT, greedy: +greedy };
}

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

/** Own-chunk access that reads storage every time (no cache). */
const STORAGE_CHUNK = /* wgsl */ `
fn keepOwn(i: u32, v: f32) {}                                  // no cache
fn ownLogit(i: u32) -> f32 { return logits[rBase + rLo + i]; } // logit i of this thread's chunk`;

/**
 * Own-chunk access through a private copy of the chunk, written by `analyze`'s first pass and
 * indexed by the position in the chunk, the same in every lane of an own-chunk loop.
 */
const cachedChunk = (ch: number): string => /* wgsl */ `
const CH: u32 = ${ch}u;                              // logits a thread keeps: ceil(V / WG)
var<private> rL: array<f32, CH>;                     // (CH) this thread's chunk of the row
fn keepOwn(i: u32, v: f32) { rL[i] = v; }            // analyze's first pass fills the cache
fn ownLogit(i: u32) -> f32 { return rL[i]; }         // logit i of this thread's chunk`;

/**
 * WGSL shared by every row kernel (one workgroup of `wg` threads per row): workgroup scratch,
 * each thread's contiguous chunk of the row, its logits (`ownLogit(i)`, i < the chunk's length
 * n = chunkOf(t).y − chunkOf(t).x, walked in order), and `invCdf(t, u)`, the categorical
 * sample over `weight(j, l, &tie)` that the including kernel defines (called for each j of a
 * chunk in increasing order with its logit l; `tie` is the tie counter {@link LOGITS_CORE}
 * needs). Needs `params.V`, and {@link LOGITS_CORE} (`logits`, `rBase`, `rLo`).
 *
 * With `cacheLength` > 0 each thread keeps its chunk in a private array of that length, loaded
 * once per row by `analyze` ({@link samplingCacheLength}; the kernel must then be run with
 * `params.V` = the V it was computed from, as the kernel builders do); with 0 every pass reads
 * storage. The two give the same bits.
 *
 * @param wg threads per workgroup ({@link samplingWorkgroupSize})
 * @param cacheLength logits each thread caches ({@link samplingCacheLength}), 0 for none
 * @returns the WGSL
 * @throws Error on a cache length that is not an integer in [0, {@link SAMPLING_CACHE_CAP}]
 */
export function rowCommonWgsl(wg: number, cacheLength = 0): string {
  if (!Number.isInteger(cacheLength) || cacheLength < 0 || cacheLength > SAMPLING_CACHE_CAP) {
    throw new Error(
      `specdec: the sampling cache length must be an integer in [0, ${SAMPLING_CACHE_CAP}], got ${
        showValue(cacheLength)
      }`,
    );
  }
  return /* wgsl */ `
const WG: u32 = ${wg}u;
${cacheLength > 0 ? cachedChunk(cacheLength) : STORAGE_CHUNK}
const NONE: u32 = 0xffffffffu;
var<workgroup> wf: array<f32, WG>;      // per-thread partial sums of invCdf
var<workgroup> tieBase: array<u32, WG>; // ties at the threshold before each thread's chunk
var<workgroup> wpick: u32;              // the sampled index, broadcast
var<workgroup> wword: u32;              // a word loaded by thread 0, broadcast uniformly

// The contiguous chunk [x, y) of the row that thread t owns (chunks keep index order).
fn chunkOf(t: u32) -> vec2<u32> {
  let c = (params.V + WG - 1u) / WG;
  let lo = min(t * c, params.V);
  return vec2<u32>(lo, min(lo + c, params.V));
}

// Categorical sample: the first j with Σ_{i≤j} w_i > u · Σ w (w_j > 0), NONE if Σ w = 0.
// Thread 0 scans the per-thread chunk sums in order (a sequential f32 sum of non-negative terms
// is monotone, so the search is consistent), then walks the chosen chunk.
fn invCdf(t: u32, u: f32) -> u32 {
  let ch = chunkOf(t);
  let n = ch.y - ch.x;
  var tie = tieBase[t];
  var s = 0.0;
  for (var i = 0u; i < n; i++) { s += weight(ch.x + i, ownLogit(i), &tie); }
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
        let w = weight(j, logits[rBase + j], &tie2); // another thread's chunk: storage
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
}

/**
 * WGSL core of the filtered, tempered probabilities of one logits row (needs a storage buffer
 * `logits` and `params.V, k, invT, greedy`; see {@link samplingParams}). `analyze(base, t)`
 * (uniform control flow) finds the row's max and argmax, the top-k threshold by a radix select on
 * order-preserving keys, and the softmax sum; then `probOf(j, l, &tie)` is the probability of j
 * whose logit is l (walk chunks in order; `ownLogit(i)` for the thread's own chunk, storage
 * otherwise). `probAt(x)` is the probability of one index x. The including kernel defines
 * `weight(j, l, &tie)` for `invCdf` (`probOf`, or the acceptance kernel's residual).
 *
 * `analyze`'s first pass is the only one that reads the thread's chunk from storage; with a
 * chunk cache ({@link rowCommonWgsl}) it keeps the chunk in a private array that the radix
 * passes, the tie count, the softmax sum and `invCdf`'s own-chunk pass read. Reads of another
 * thread's chunk (`invCdf`'s walk of the chosen chunk, `probAt`) stay storage reads.
 *
 * `analyze` returns 0, or the `ROW_ERROR` bits (decode_state.ts) of logits that cannot be sampled
 * (NaN; +∞ unless greedy; a max of −∞), uniform over the workgroup; then nothing else of the row
 * was computed and the caller must not sample it. Non-finite values are found from their bits,
 * which no float optimisation can fold away, while the max is searched (no extra pass).
 *
 * The radix select takes 4 bits per pass from the top (up to 8 passes, stopping as soon as
 * every candidate left in the chosen digit is kept): each thread counts its chunk's candidates
 * per digit in registers (byte counters, four digits per register; no atomics), the 16 totals
 * are summed over threads in a fixed order, and every thread picks the digit itself. Reductions
 * over the per-thread partials (max, sums) are done by every thread in the same order, so all
 * agree without a broadcast barrier.
 */
export const LOGITS_CORE: string = /* wgsl */ `
var<workgroup> wMaxV: array<f32, WG>;     // per-thread max
var<workgroup> wMaxI: array<u32, WG>;     // per-thread argmax (NONE for an empty chunk)
var<workgroup> wCnt: array<u32, 16 * WG>; // (16 digits, WG threads) candidate counts of a pass
var<workgroup> wTot: array<u32, 16>;      // (16 digits) candidate counts of a pass
var<workgroup> wTies: array<u32, WG>;     // per-thread ties at the threshold
var<workgroup> wSum: array<f32, WG>;      // per-thread softmax partial sums
var<workgroup> wBad: array<u32, WG>;      // per-thread ROW_ERROR bits (NaN, +Inf seen)
var<workgroup> wflag: u32;                // "the select is done" / the row's errors, broadcast
var<private> rBase: u32; // offset of the row in logits
var<private> rLo: u32;   // start of this thread's chunk (chunkOf(t).x)
var<private> rMask: u32; // high bits of the order key the threshold fixes (radix passes done)
var<private> rThr: u32;  // those bits of the k-th largest logit's order key
var<private> rKeep: u32; // logits at the threshold that are kept (lowest indices first)
var<private> rMax: f32;  // the row's max logit
var<private> rSum: f32;  // Σ over kept logits of exp((l − max) / T)
var<private> rArg: u32;  // argmax, first index on ties

const BYTE_SHIFTS = vec4<u32>(0u, 8u, 16u, 24u); // the four byte counters of a u32

const BAD_NAN: u32 = 1u;    // ROW_ERROR.nan
const BAD_POS_INF: u32 = 2u; // ROW_ERROR.posInf
const BAD_NO_MAX: u32 = 4u;  // ROW_ERROR.noMax

// BAD_NAN / BAD_POS_INF of one logit, from its bits (a comparison could be folded away).
fn nonFinite(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(0u, BAD_NAN, (b & 0x7fffffffu) > 0x7f800000u) |
    select(0u, BAD_POS_INF, b == 0x7f800000u);
}

// Maps f32 to u32 so that unsigned order is float order; −0 maps as +0, since the two compare
// equal (the reference's sort, torch.topk): at the top-k threshold they are ties.
fn orderKey(x: f32) -> u32 {
  let b0 = bitcast<u32>(x);
  let b = select(b0, 0u, b0 == 0x80000000u);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// exp((l − max) / T) for the next logit l of an in-order walk if it survives the top-k filter,
// else 0.
fn keptExpOf(l: f32, tie: ptr<function, u32>) -> f32 {
  let key = orderKey(l) & rMask;
  var keep = key > rThr;
  if (key == rThr) {
    keep = *tie < rKeep;
    *tie = *tie + 1u;
  }
  if (!keep) { return 0.0; }
  return exp((l - rMax) * params.invT);
}

// p(j) of the analyzed row whose logit is l (walk chunks in order).
fn probOf(j: u32, l: f32, tie: ptr<function, u32>) -> f32 {
  if (params.greedy != 0u) { return select(0.0, 1.0, j == rArg); }
  return keptExpOf(l, tie) / rSum;
}


// Uniform control flow. Barriers sit where a thread reads what others wrote; the first one
// keeps a second call from overwriting partials a slow thread still reads. Returns 0, or the
// row's ROW_ERROR bits (uniform): then the row must not be sampled.
fn analyze(base: u32, t: u32) -> u32 {
  workgroupBarrier();
  rBase = base;
  let ch = chunkOf(t);
  rLo = ch.x;
  let n = ch.y - ch.x;
  // max and argmax (first index wins ties), and any NaN or +Inf; the chunk's only storage reads
  var bv = 0.0;
  var bi = NONE;
  var bad = 0u;
  for (var i = 0u; i < n; i++) {
    let j = ch.x + i;
    let v = logits[base + j];
    keepOwn(i, v);
    bad |= nonFinite(v);
    if (bi == NONE || v > bv) { bv = v; bi = j; }
  }
  wMaxV[t] = bv;
  wMaxI[t] = bi;
  wBad[t] = bad;
  tieBase[t] = 0u;
  workgroupBarrier();
  var v = wMaxV[0];
  var i = wMaxI[0];
  for (var c = 1u; c < WG; c++) {
    if (wMaxI[c] != NONE && (i == NONE || wMaxV[c] > v)) { v = wMaxV[c]; i = wMaxI[c]; }
  }
  rMax = v;
  rArg = i;
  rMask = 0u; // no filter: every key matches the threshold and rKeep keeps them all
  rThr = 0u;
  rKeep = NONE;
  rSum = 1.0;
  if (t == 0u) {
    var all = 0u;
    for (var c = 0u; c < WG; c++) { all |= wBad[c]; }
    if (params.greedy != 0u) { all &= ~BAD_POS_INF; } // argmax: the first +∞ wins
    // without NaN, a max of −∞ means every logit is −∞ (with NaN the max means nothing)
    if (all == 0u && bitcast<u32>(v) == 0xff800000u) { all = BAD_NO_MAX; }
    wflag = all;
  }
  let rowBad = workgroupUniformLoad(&wflag);
  if (rowBad != 0u || params.greedy != 0u) { return rowBad; }
  if (params.k < params.V) {
    var prefix = 0u;
    var mask = 0u;
    var kk = params.k;
    var done = 0u;
    for (var ps = 0u; ps < 8u; ps++) {
      let shift = 28u - 4u * ps;
      // this thread's candidates per digit d, at component d & 3 of n_(d >> 2)
      var n0 = vec4<u32>();
      var n1 = vec4<u32>();
      var n2 = vec4<u32>();
      var n3 = vec4<u32>();
      // byte counters, four digits per register: at most 255 keys between flushes
      for (var i0 = 0u; i0 < n; i0 += 255u) {
        var c0 = 0u;
        var c1 = 0u;
        var c2 = 0u;
        var c3 = 0u;
        for (var i = i0; i < min(i0 + 255u, n); i++) {
          let key = orderKey(ownLogit(i));
          // the digit, or 16 (no counter) for keys outside the candidates: no branch
          let d = select(16u, (key >> shift) & 15u, (key & mask) == prefix);
          let one = 1u << (8u * (d & 3u));
          let r = d >> 2u;
          c0 += select(0u, one, r == 0u);
          c1 += select(0u, one, r == 1u);
          c2 += select(0u, one, r == 2u);
          c3 += select(0u, one, r == 3u);
        }
        n0 += (vec4<u32>(c0) >> BYTE_SHIFTS) & vec4<u32>(255u);
        n1 += (vec4<u32>(c1) >> BYTE_SHIFTS) & vec4<u32>(255u);
        n2 += (vec4<u32>(c2) >> BYTE_SHIFTS) & vec4<u32>(255u);
        n3 += (vec4<u32>(c3) >> BYTE_SHIFTS) & vec4<u32>(255u);
      }
      for (var e = 0u; e < 4u; e++) {
        wCnt[e * WG + t] = n0[e];
        wCnt[(4u + e) * WG + t] = n1[e];
        wCnt[(8u + e) * WG + t] = n2[e];
        wCnt[(12u + e) * WG + t] = n3[e];
      }
      workgroupBarrier();
      for (var d = t; d < 16u; d += WG) {
        var total = 0u;
        for (var c = 0u; c < WG; c++) { total += wCnt[d * WG + c]; }
        wTot[d] = total;
      }
      workgroupBarrier();
      // the digit of the kk-th largest candidate, from the top; every thread finds the same
      var acc = 0u;
      var sel = 0u;
      var selCount = 0u;
      for (var e = 0u; e < 16u; e++) {
        let d = 15u - e;
        let count = wTot[d];
        if (acc + count >= kk) { sel = d; selCount = count; break; }
        acc += count;
      }
      prefix = prefix | (sel << shift);
      kk = kk - acc;
      mask = mask | (15u << shift);
      if (t == 0u) { wflag = select(0u, 1u, selCount == kk); }
      done = workgroupUniformLoad(&wflag);
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
      for (var i = 0u; i < n; i++) {
        if ((orderKey(ownLogit(i)) & rMask) == rThr) { ties++; }
      }
      wTies[t] = ties;
      workgroupBarrier();
      var before = 0u;
      for (var c = 0u; c < t; c++) { before += wTies[c]; }
      tieBase[t] = before;
    }
  }
  // softmax denominator over the kept logits, summed over threads in order by every thread
  var tie = tieBase[t];
  var s = 0.0;
  for (var i = 0u; i < n; i++) { s += keptExpOf(ownLogit(i), &tie); }
  wSum[t] = s;
  workgroupBarrier();
  var total = 0.0;
  for (var c = 0u; c < WG; c++) { total += wSum[c]; }
  rSum = total;
  return 0u;
}

// p(x) of the analyzed row for one index x, as probOf gives it when walking the row in order
// (the ties at the threshold before x are counted; usually none matter).
fn probAt(x: u32) -> f32 {
  if (params.greedy != 0u) { return select(0.0, 1.0, x == rArg); }
  var tie = 0u;
  if (rKeep != NONE) {
    for (var j = 0u; j < x; j++) {
      if ((orderKey(logits[rBase + j]) & rMask) == rThr) { tie++; }
    }
  }
  return keptExpOf(logits[rBase + x], &tie) / rSum;
}
`;
