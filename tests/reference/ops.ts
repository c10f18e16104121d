/**
 * Float64 CPU references for the norm, activation, embedding and loss kernels, forward and
 * backward: plain loops, readable first. Inputs are any number arrays (float32 data from the
 * tests); outputs are Float64Array.
 *
 * @module
 */

/** Float32 machine epsilon, the RMSNorm eps. */
export const RMS_EPS_REF = 2 ** -23;
/** Target value meaning "no loss at this row". */
export const IGNORE_REF = 0xffffffff;

type Arr = ArrayLike<number>;

// ---------------------------------------------------------------------------------------------
// erf and GELU

/**
 * erf in float64 via the everywhere-convergent series with positive terms (no cancellation):
 * erf(x) = 2/√π · e^(−x²) · Σ_{n≥0} 2ⁿ x^(2n+1) / (1·3·5···(2n+1)). Above 6, erf is 1 in float64.
 */
export function erfRef(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return -erfRef(-x);
  if (x > 6) return 1; // 1 − erf(6) ≈ 2e-17, under half an ulp of 1
  let term = x, sum = x;
  for (let n = 1; term > 1e-17 * sum; n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x) * sum;
}

/** Exact GELU, 0.5·x·(1 + erf(x/√2)), elementwise. */
export function geluRef(x: Arr): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = 0.5 * x[i] * (1 + erfRef(x[i] / Math.SQRT2));
  return y;
}

/** GELU backward: dx = dy · (Φ(x) + x·φ(x)). */
export function geluBackwardRef(x: Arr, dy: Arr): Float64Array {
  const dx = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const cdf = 0.5 * (1 + erfRef(x[i] / Math.SQRT2));
    const pdf = Math.exp(-0.5 * x[i] * x[i]) / Math.sqrt(2 * Math.PI);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
  return dx;
}

/** Elementwise x + y. */
export function addRef(x: Arr, y: Arr): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i];
  return out;
}

/** Column sums of x (M, N) → (N). */
export function sumRowsRef(x: Arr, M: number, N: number): Float64Array {
  const out = new Float64Array(N);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) out[n] += x[m * N + n];
  return out;
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/**
 * RMSNorm over rows: x (T, C), w (C) → y (T, C) = x · rstd · w, rstd (T) = 1/√(mean(x²) + eps).
 */
export function rmsNormRef(
  x: Arr,
  w: Arr,
  T: number,
  C: number,
  eps: number = RMS_EPS_REF,
): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(T * C); // (T, C)
  const rstd = new Float64Array(T); // (T)
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let c = 0; c < C; c++) y[t * C + c] = x[t * C + c] * r * w[c];
  }
  return { y, rstd };
}

/**
 * RMSNorm backward: given dy (T, C), returns dx (T, C) and dWeight (C):
 * dx = r·w·dy − x · r³/C · Σ_c(w·dy·x), dWeight = Σ_t dy·x·r.
 */
export function rmsNormBackwardRef(
  x: Arr,
  w: Arr,
  dy: Arr,
  T: number,
  C: number,
  eps: number = RMS_EPS_REF,
): { dx: Float64Array; dWeight: Float64Array } {
  const { rstd } = rmsNormRef(x, w, T, C, eps);
  const dx = new Float64Array(T * C); // (T, C)
  const dWeight = new Float64Array(C); // (C)
  for (let t = 0; t < T; t++) {
    const r = rstd[t];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += w[c] * dy[t * C + c] * x[t * C + c];
    for (let c = 0; c < C; c++) {
      const i = t * C + c;
      dx[i] = r * w[c] * dy[i] - (x[i] * r * r * r * dot) / C;
      dWeight[c] += dy[i] * x[i] * r;
    }
  }
  return { dx, dWeight };
}

// ---------------------------------------------------------------------------------------------
// Embedding

/** Lookup: tokens (T), table (V, C) → out (T, C); tokens ≥ V give zero rows. */
export function embeddingRef(tokens: Arr, table: Arr, T: number, C: number): Float64Array {
  const V = Math.floor(table.length / C);
  const out = new Float64Array(T * C); // (T, C)
  for (let t = 0; t < T; t++) {
    const v = tokens[t];
    if (v >= V) continue;
    for (let c = 0; c < C; c++) out[t * C + c] = table[v * C + c];
  }
  return out;
}

/** Backward: dTable (V, C) = Σ_{t: tokens[t] = v} dOut[t] (tokens ≥ V contribute nothing). */
export function embeddingBackwardRef(
  tokens: Arr,
  dOut: Arr,
  T: number,
  C: number,
  V: number,
): Float64Array {
  const dTable = new Float64Array(V * C); // (V, C)
  for (let t = 0; t < T; t++) {
    const v = tokens[t];
    if (v >= V) continue;
    for (let c = 0; c < C; c++) dTable[v * C + c] += dOut[t * C + c];
  }
  return dTable;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/**
 * Softmax cross-entropy: logits (T, V), targets (T) → losses (T) = −log softmax[target]
 * (0 where ignored, NaN for a target ≥ V that isn't IGNORE) and dLogits (T, V), the gradient of
 * scale · Σ losses: scale·(softmax − onehot), zero rows where ignored.
 */
export function crossEntropyRef(
  logits: Arr,
  targets: Arr,
  T: number,
  V: number,
  scale: number,
): { losses: Float64Array; dLogits: Float64Array } {
  const losses = new Float64Array(T); // (T)
  const dLogits = new Float64Array(T * V); // (T, V)
  for (let t = 0; t < T; t++) {
    const target = targets[t];
    if (target === IGNORE_REF) continue;
    if (target >= V) {
      losses[t] = NaN;
      dLogits.fill(NaN, t * V, (t + 1) * V);
      continue;
    }
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[t * V + v]);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[t * V + v] - max);
    losses[t] = max + Math.log(sum) - logits[t * V + target];
    for (let v = 0; v < V; v++) {
      const softmax = Math.exp(logits[t * V + v] - max) / sum;
      dLogits[t * V + v] = scale * (softmax - (v === target ? 1 : 0));
    }
  }
  return { losses, dLogits };
}

/** scale · Σ losses. */
export function sumLossRef(losses: Arr, scale: number): number {
  let s = 0;
  for (let t = 0; t < losses.length; t++) s += losses[t];
  return scale * s;
}

// ---------------------------------------------------------------------------------------------
// Finite differences (for checking the backward references)

/**
 * Central finite-difference gradient of a scalar function f at x (float64): for each i,
 * (f(x + eps·eᵢ) − f(x − eps·eᵢ)) / 2eps.
 */
export function finiteDifferences(
  f: (x: Float64Array) => number,
  x: Arr,
  eps = 1e-6,
): Float64Array {
  const xs = Float64Array.from(x);
  const g = new Float64Array(xs.length);
  for (let i = 0; i < xs.length; i++) {
    const x0 = xs[i];
    xs[i] = x0 + eps;
    const fp = f(xs);
    xs[i] = x0 - eps;
    const fm = f(xs);
    xs[i] = x0;
    g[i] = (fp - fm) / (2 * eps);
  }
  return g;
}

/** Σ a·b, the scalar whose gradient is a backward pass's output given upstream b. */
export function dot(a: Arr, b: Arr): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
