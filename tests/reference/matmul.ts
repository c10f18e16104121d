/**
 * Float64 CPU references for the matrix-multiply kernels: plain triple loops, readable first.
 * Inputs are any number arrays (float32 data from the tests), row-major; outputs are
 * Float64Array `(M, N)`.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/**
 * `c (M, N) = a (M, K) · bᵀ (+ bias)` with `b (N, K)`: a linear layer's forward, `y = x·Wᵀ + b`.
 *
 * @param a (M, K)
 * @param b (N, K)
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @param bias optional (N), added to every row
 * @returns c (M, N)
 */
export function matmulNTRef(
  a: Arr,
  b: Arr,
  M: number,
  N: number,
  K: number,
  bias?: Arr,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[n * K + k];
      c[m * N + n] = s;
    }
  }
  return c;
}

/**
 * `c (M, N) = a (M, K) · b (K, N) (+ bias)`: a linear layer's input gradient, `dX = dY·W`.
 *
 * @param a (M, K)
 * @param b (K, N)
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @param bias optional (N), added to every row
 * @returns c (M, N)
 */
export function matmulNNRef(
  a: Arr,
  b: Arr,
  M: number,
  N: number,
  K: number,
  bias?: Arr,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[k * N + n];
      c[m * N + n] = s;
    }
  }
  return c;
}

/**
 * `c (M, N) = aᵀ · b (+ bias)` with `a (K, M)`, `b (K, N)`: a linear layer's weight gradient,
 * `dW = dYᵀ·X`.
 *
 * @param a (K, M)
 * @param b (K, N)
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @param bias optional (N), added to every row
 * @returns c (M, N)
 */
export function matmulTNRef(
  a: Arr,
  b: Arr,
  M: number,
  N: number,
  K: number,
  bias?: Arr,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += a[k * M + m] * b[k * N + n];
      c[m * N + n] = s;
    }
  }
  return c;
}
