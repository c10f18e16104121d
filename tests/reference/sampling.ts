/**
 * Float64 CPU references for sampling and speculative acceptance, plain and readable: the
 * Philox4x32-10 generator (bit-exact, with BigInt), the reference's top-k + temperature softmax,
 * inverse-CDF categorical sampling, one row of Leviathan et al.'s Algorithm 1, and a chi-square
 * goodness-of-fit test for checking laws from samples.
 */

const M32 = 0xffffffffn;

/**
 * Philox4x32-10 (Salmon et al. 2011; Random123's default round count).
 *
 * @param ctr 4 counter words
 * @param key 2 key words
 * @returns 4 output words
 */
export function philox4x32(ctr: readonly number[], key: readonly number[]): number[] {
  let [c0, c1, c2, c3] = ctr.map((v) => BigInt(v >>> 0));
  let [k0, k1] = key.map((v) => BigInt(v >>> 0));
  for (let round = 0; round < 10; round++) {
    const p0 = 0xD2511F53n * c0; // 64-bit products
    const p1 = 0xCD9E8D57n * c2;
    const hi0 = p0 >> 32n, lo0 = p0 & M32;
    const hi1 = p1 >> 32n, lo1 = p1 & M32;
    [c0, c1, c2, c3] = [hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0];
    k0 = (k0 + 0x9E3779B9n) & M32;
    k1 = (k1 + 0xBB67AE85n) & M32;
  }
  return [c0, c1, c2, c3].map(Number);
}

/**
 * The uniform in [0, 1) the kernels draw from a counter: the top 24 bits of Philox word 0.
 *
 * @param ctr 4 counter words (row, position, purpose, index in decoding)
 * @param seed the seed (key = low and high 32 bits)
 * @returns the uniform
 */
export function uniformRef(ctr: readonly number[], seed: number): number {
  const key = [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
  return (philox4x32(ctr, key)[0] >>> 8) / 16777216;
}

/** The reference's k = ceil((1 − filterThres) · V). */
export function topKRef(V: number, filterThres: number): number {
  return Math.ceil((1 - filterThres) * V);
}

/**
 * Filtered, tempered probabilities of one logits row, as the reference computes them:
 * keep the k largest logits (ties: lowest index first), softmax(logits / T) over them; T = 0 is a
 * one-hot at the argmax (first index on ties).
 *
 * @param logits `(V)` one row
 * @param filterThres top-k threshold in [0, 1)
 * @param temperature ≥ 0
 * @returns `(V)` float64 probabilities
 */
export function probsRef(
  logits: ArrayLike<number>,
  filterThres: number,
  temperature: number,
): Float64Array {
  const V = logits.length;
  const out = new Float64Array(V);
  if (temperature === 0) {
    let best = 0;
    for (let j = 1; j < V; j++) if (logits[j] > logits[best]) best = j;
    out[best] = 1;
    return out;
  }
  const k = topKRef(V, filterThres);
  // rank by value (descending), then index (ascending)
  const order = Array.from({ length: V }, (_, j) => j)
    .sort((a, b) => logits[b] - logits[a] || a - b);
  const kept = order.slice(0, k);
  const max = logits[order[0]];
  let sum = 0;
  for (const j of kept) {
    out[j] = Math.exp((logits[j] - max) / temperature);
    sum += out[j];
  }
  for (const j of kept) out[j] /= sum;
  return out;
}

/**
 * Why a logits row cannot be sampled, as the kernels report it (decode_state.ts's `ROW_ERROR`
 * bits): 1 = a NaN anywhere, 2 = a +∞ when the temperature is above 0 (softmax would be ∞/∞;
 * greedy takes the first +∞), 4 = every logit −∞ (only reported without NaN or a reported +∞);
 * 0 = the row is fine (−∞ beside a larger logit is a masked token).
 *
 * @param logits `(V)` one row
 * @param temperature ≥ 0
 * @returns the error bits, 0 when fine
 */
export function rowErrorRef(logits: ArrayLike<number>, temperature: number): number {
  const all = Array.from(logits);
  let bits = 0;
  if (all.some((v) => Number.isNaN(v))) bits |= 1;
  if (temperature > 0 && all.some((v) => v === Infinity)) bits |= 2;
  if (bits === 0 && all.every((v) => v === -Infinity)) bits |= 4;
  return bits;
}

/**
 * Inverse-CDF sample: the first j with Σ_{i≤j} w_i > u · Σ w among positive weights (the last
 * positive one if rounding runs off the end), or -1 when every weight is 0.
 *
 * @param weights `(V)` non-negative, need not sum to 1
 * @param u uniform in [0, 1)
 * @returns the index
 */
export function sampleRef(weights: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let j = 0; j < weights.length; j++) total += weights[j];
  const goal = u * total;
  let acc = 0, last = -1;
  for (let j = 0; j < weights.length; j++) {
    if (weights[j] > 0) {
      last = j;
      acc += weights[j];
      if (acc > goal) return j;
    }
  }
  return last;
}

/** One row of a speculative step, for {@link speculativeRowRef}. */
export interface SpeculativeRowInput {
  /** Target probabilities p_1..p_{γ+1}, `(γ + 1, V)` rows. */
  p: ArrayLike<number>[];
  /** Draft probabilities q_1..q_γ, `(γ, V)` rows. */
  q: ArrayLike<number>[];
  /** Draft tokens x_1..x_γ. */
  draft: number[];
  /** Acceptance uniforms r_1..r_γ. */
  r: number[];
  /** Uniform for the correction or bonus token. */
  uExtra: number;
  /** Uniform for the fallback (residual all zero): sample from p instead. */
  uFallback: number;
  /** Lenience (1 = exact). */
  lenience: number;
  /** Temperature 0: accept while x_i is the target's argmax. */
  greedy: boolean;
  /** false: the deliberately wrong variant that samples corrections from p, not max(0, p − q). */
  residual?: boolean;
}

/**
 * Leviathan et al. Algorithm 1 for one row: accept x_i while r_i ≤ p_i(x_i) / (lenience·q_i(x_i))
 * (greedy: while p_i(x_i) > 0, p one-hot); at the first rejection i sample from
 * norm(max(0, p_i − q_i)) (from p_i if that is all zero); if all γ pass, the bonus from p_{γ+1}.
 *
 * @param row the step's inputs
 * @returns accepted draft tokens a and the extra token
 */
export function speculativeRowRef(row: SpeculativeRowInput): { accepted: number; token: number } {
  const gamma = row.draft.length;
  let a = 0;
  while (a < gamma) {
    const x = row.draft[a];
    const ok = row.greedy
      ? row.p[a][x] > 0
      : row.r[a] <= row.p[a][x] / (row.lenience * row.q[a][x]);
    if (!ok) break;
    a++;
  }
  if (a === gamma) return { accepted: a, token: sampleRef(row.p[gamma], row.uExtra) };
  const w = Array.from(
    row.p[a],
    (pv, j) => row.residual === false ? pv : Math.max(0, pv - row.q[a][j]),
  );
  let token = sampleRef(w, row.uExtra);
  if (token < 0) token = sampleRef(row.p[a], row.uFallback);
  return { accepted: a, token };
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative). */
export function lnGamma(x: number): number {
  const c = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/**
 * The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a): series for
 * x < a + 1, continued fraction (modified Lentz) otherwise.
 */
export function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  const lead = -x + a * Math.log(x) - lnGamma(a);
  if (x < a + 1) {
    let sum = 1 / a, term = sum;
    for (let n = 1; n < 1000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return 1 - sum * Math.exp(lead);
  }
  const tiny = 1e-300;
  let b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) break;
  }
  return Math.exp(lead) * h;
}

/** Result of {@link chiSquare}. */
export interface ChiSquareResult {
  /** Pearson's statistic Σ (O − E)² / E over the (pooled) cells. */
  stat: number;
  /** Degrees of freedom: cells − 1. */
  dof: number;
  /** P(χ²_dof ≥ stat). */
  pValue: number;
}

/**
 * Pearson's chi-square goodness-of-fit test of counts against an exact law. Cells whose expected
 * count is below `minExpected` are pooled into one cell (merged into the smallest other cell if
 * the pool is still too small). A count in a cell of probability 0 gives p-value 0.
 *
 * @param observed counts per cell
 * @param probs the law, summing to 1
 * @param minExpected pooling threshold (default 5)
 * @returns statistic, degrees of freedom and p-value
 */
export function chiSquare(
  observed: ArrayLike<number>,
  probs: ArrayLike<number>,
  minExpected = 5,
): ChiSquareResult {
  let n = 0;
  for (let i = 0; i < observed.length; i++) n += observed[i];
  const cells: { o: number; e: number }[] = [];
  const pool = { o: 0, e: 0 };
  for (let i = 0; i < observed.length; i++) {
    const e = n * probs[i];
    if (e === 0) {
      if (observed[i] > 0) return { stat: Infinity, dof: 1, pValue: 0 };
      continue;
    }
    if (e < minExpected) {
      pool.o += observed[i];
      pool.e += e;
    } else cells.push({ o: observed[i], e });
  }
  if (pool.e > 0) {
    if (pool.e >= minExpected || cells.length === 0) cells.push(pool);
    else {
      cells.sort((a, b) => a.e - b.e);
      cells[0] = { o: cells[0].o + pool.o, e: cells[0].e + pool.e };
    }
  }
  let stat = 0;
  for (const c of cells) stat += (c.o - c.e) ** 2 / c.e;
  const dof = Math.max(1, cells.length - 1);
  return { stat, dof, pValue: gammaQ(dof / 2, stat / 2) };
}
