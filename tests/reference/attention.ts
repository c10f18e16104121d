/**
 * Float64 CPU references for the rotary and attention kernels: plain loops, readable first.
 *
 * Layouts match the kernels: fused `qkv (T, 3, H, D)`, heads `(T, H, D)`, token t = b·n + i.
 * Attention references take q, k, v already split per head `(T, H, D)` and, for cached use, the
 * earlier keys as a cache `(B, H, maxLen, D)` of which positions `< start[b]` are used.
 */

/** Sizes of a fused qkv activation. */
export interface QkvSizes {
  /** Tokens. */
  T: number;
  /** Heads. */
  H: number;
  /** dimHead (even). */
  D: number;
}

/**
 * The rotary embedding of q and k in `qkv (T, 3, H, D)` (v copied unchanged), in float64 from the
 * float32 angle `fround(pos · invFreq[i])`, like torch builds it.
 *
 * @param qkv `(T, 3, H, D)` input
 * @param positions `(T)` absolute position of each token
 * @param invFreq `(D/2)` inverse frequencies
 * @param maxLen positions ≥ maxLen are left unrotated (like the kernel)
 * @returns `(T, 3, H, D)` float64
 */
export function rotaryRef(
  qkv: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  { T, H, D }: QkvSizes,
  maxLen = Infinity,
): Float64Array {
  return rotate(qkv, positions, invFreq, { T, H, D }, maxLen, 1);
}

/**
 * The backward of {@link rotaryRef}: the transposed rotation of dq and dk (dv unchanged).
 *
 * @param dqkv `(T, 3, H, D)` gradient of the rotated qkv
 * @param positions `(T)` absolute position of each token
 * @param invFreq `(D/2)` inverse frequencies
 * @param maxLen positions ≥ maxLen were not rotated and pass through
 * @returns `(T, 3, H, D)` gradient of the input qkv, float64
 */
export function rotaryBackwardRef(
  dqkv: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  { T, H, D }: QkvSizes,
  maxLen = Infinity,
): Float64Array {
  return rotate(dqkv, positions, invFreq, { T, H, D }, maxLen, -1);
}

/** x·cos + rotate_half(x)·(sign·sin) on q and k: sign −1 is the transpose (backward). */
function rotate(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  { T, H, D }: QkvSizes,
  maxLen: number,
  sign: number,
): Float64Array {
  const half = D / 2;
  const y = Float64Array.from(x); // (T, 3, H, D); v (s = 2) stays as it is
  for (let t = 0; t < T; t++) {
    if (positions[t] >= maxLen) continue;
    for (let s = 0; s < 2; s++) { // q and k
      for (let h = 0; h < H; h++) {
        const base = ((t * 3 + s) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const angle = Math.fround(positions[t] * invFreq[i]);
          const c = Math.cos(angle), sn = sign * Math.sin(angle);
          const x1 = x[base + i], x2 = x[base + i + half];
          // [x1, x2]·cos + [−x2, x1]·sin
          y[base + i] = x1 * c - x2 * sn;
          y[base + i + half] = x2 * c + x1 * sn;
        }
      }
    }
  }
  return y;
}

/** Splits `qkv (T, 3, H, D)` into q, k, v, each `(T, H, D)` float64. */
export function splitQkv(qkv: ArrayLike<number>, { T, H, D }: QkvSizes): {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
} {
  const q = new Float64Array(T * H * D), k = new Float64Array(T * H * D);
  const v = new Float64Array(T * H * D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      for (let d = 0; d < D; d++) {
        const dst = (t * H + h) * D + d;
        q[dst] = qkv[((t * 3 + 0) * H + h) * D + d];
        k[dst] = qkv[((t * 3 + 1) * H + h) * D + d];
        v[dst] = qkv[((t * 3 + 2) * H + h) * D + d];
      }
    }
  }
  return { q, k, v };
}

/** Inputs of {@link attentionRef}. */
export interface AttentionRefArgs {
  /** `(T, H, D)` queries of this forward, T = B·n. */
  q: ArrayLike<number>;
  /** `(T, H, D)` keys of this forward (after rotary). */
  k: ArrayLike<number>;
  /** `(T, H, D)` values of this forward. */
  v: ArrayLike<number>;
  /** Rows. */
  B: number;
  /** Tokens per row. */
  n: number;
  /** Heads. */
  H: number;
  /** dimHead. */
  D: number;
  /** `(B)` position of each row's first token (default all 0). */
  start?: ArrayLike<number>;
  /** `(B, H, maxLen, D)` earlier keys: positions `< start[b]` are used. */
  cacheK?: ArrayLike<number>;
  /** `(B, H, maxLen, D)` earlier values. */
  cacheV?: ArrayLike<number>;
  /** Positions per row of cacheK / cacheV. */
  maxLen?: number;
}

/**
 * Causal attention in float64: query (b, i) at position `start[b] + i` attends the row's keys at
 * positions `0..start[b]+i`, where positions `< start[b]` come from the cache and the rest are
 * this forward's own tokens. Scores `q·k / √D`, softmax, weighted sum of values.
 *
 * @param a queries, keys, values, sizes and optionally per-row starts with a cache
 * @returns `out (T, H, D)` and `lse (B, H, n)` (logsumexp of the scaled scores)
 */
export function attentionRef(a: AttentionRefArgs): { out: Float64Array; lse: Float64Array } {
  const { q, k, v, B, n, H, D } = a;
  const maxLen = a.maxLen ?? 0;
  const scale = 1 / Math.sqrt(D);
  const out = new Float64Array(B * n * H * D); // (T, H, D)
  const lse = new Float64Array(B * H * n); // (B, H, n)
  for (let b = 0; b < B; b++) {
    const st = a.start?.[b] ?? 0;
    // the key (or value) vector of row b, head h at absolute position j, as an offset and array
    const keyAt = (src: "k" | "v", h: number, j: number): [ArrayLike<number>, number] =>
      j < st
        ? [src === "k" ? a.cacheK! : a.cacheV!, ((b * H + h) * maxLen + j) * D]
        : [src === "k" ? k : v, ((b * n + (j - st)) * H + h) * D];
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < n; i++) {
        const qOff = ((b * n + i) * H + h) * D;
        const last = st + i; // causal: keys 0..last
        const scores = new Float64Array(last + 1);
        for (let j = 0; j <= last; j++) {
          const [arr, off] = keyAt("k", h, j);
          let s = 0;
          for (let d = 0; d < D; d++) s += q[qOff + d] * arr[off + d];
          scores[j] = s * scale;
        }
        const max = Math.max(...scores);
        let sum = 0;
        for (let j = 0; j <= last; j++) sum += Math.exp(scores[j] - max);
        lse[(b * H + h) * n + i] = max + Math.log(sum);
        for (let j = 0; j <= last; j++) {
          const p = Math.exp(scores[j] - max) / sum;
          const [arr, off] = keyAt("v", h, j);
          for (let d = 0; d < D; d++) out[qOff + d] += p * arr[off + d];
        }
      }
    }
  }
  return { out, lse };
}

/**
 * The backward of {@link attentionRef} with `start = 0` (training): from `dOut (T, H, D)` the
 * gradients of q, k and v, each `(T, H, D)`. Recomputes the softmax and backpropagates through
 * it explicitly: dS = P ⊙ (dP − rowsum(P ⊙ dP)).
 *
 * @param a `q`, `k`, `v`, `dOut` `(T, H, D)` and sizes
 * @returns `dq`, `dk`, `dv`, each `(T, H, D)` float64
 */
export function attentionBackwardRef(a: {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  dOut: ArrayLike<number>;
  B: number;
  n: number;
  H: number;
  D: number;
}): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { q, k, v, dOut, B, n, H, D } = a;
  const scale = 1 / Math.sqrt(D);
  const dq = new Float64Array(B * n * H * D), dk = new Float64Array(B * n * H * D);
  const dv = new Float64Array(B * n * H * D);
  const at = (b: number, i: number, h: number) => ((b * n + i) * H + h) * D; // row of (T, H, D)
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < n; i++) {
        // forward again: P[j] for j ≤ i
        const P = new Float64Array(i + 1);
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[at(b, i, h) + d] * k[at(b, j, h) + d];
          P[j] = s * scale;
        }
        const max = Math.max(...P);
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += P[j] = Math.exp(P[j] - max);
        for (let j = 0; j <= i; j++) P[j] /= sum;
        // dP[j] = dOut_i · v_j;  dv_j += P[j] dOut_i
        const dP = new Float64Array(i + 1);
        for (let j = 0; j <= i; j++) {
          for (let d = 0; d < D; d++) {
            dP[j] += dOut[at(b, i, h) + d] * v[at(b, j, h) + d];
            dv[at(b, j, h) + d] += P[j] * dOut[at(b, i, h) + d];
          }
        }
        // softmax backward: dS[j] = P[j] (dP[j] − Σ P dP)
        let dot = 0;
        for (let j = 0; j <= i; j++) dot += P[j] * dP[j];
        for (let j = 0; j <= i; j++) {
          const dS = P[j] * (dP[j] - dot) * scale;
          for (let d = 0; d < D; d++) {
            dq[at(b, i, h) + d] += dS * k[at(b, j, h) + d];
            dk[at(b, j, h) + d] += dS * q[at(b, i, h) + d];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}
