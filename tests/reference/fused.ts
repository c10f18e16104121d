/**
 * Float64 CPU references for the fused small-M kernels (kernels/fused_linear.ts): compositions
 * of the unfused references, so the fused kernel is checked against the same math.
 *
 * @module
 */
import { geluRef, rmsNormRef } from "./ops.ts";
import { matmulNTRef } from "./matmul.ts";
import { rotaryRef } from "./attention.ts";

type Arr = ArrayLike<number>;

/**
 * `RMSNorm(x) · Wᵀ` in float64: x (M, K), norm (K), w (N, K) → (M, N).
 *
 * @returns (M, N)
 */
export function normLinearRef(x: Arr, norm: Arr, w: Arr, M: number, N: number, K: number) {
  return matmulNTRef(rmsNormRef(x, norm, M, K).y, w, M, N, K);
}

/**
 * `gelu(RMSNorm(x) · Wᵀ + bias)` in float64.
 *
 * @returns (M, N)
 */
export function normLinearGeluRef(
  x: Arr,
  norm: Arr,
  w: Arr,
  bias: Arr,
  M: number,
  N: number,
  K: number,
): Float64Array {
  return geluRef(matmulNTRef(rmsNormRef(x, norm, M, K).y, w, M, N, K, bias));
}

/**
 * The fused qkv step in float64: `qkv = rotary(RMSNorm(x) · Wᵀ)` for tokens t = b·n + i at
 * positions `start[b] + i`, then k and v written into a copy of the cache `(2, B, H, maxLen, D)`
 * at their positions (< maxLen).
 *
 * @returns the rotated qkv `(T, 3, H, D)` and the cache after the writes
 */
export function normQkvKvRef(
  x: Arr,
  norm: Arr,
  w: Arr,
  a: {
    B: number;
    n: number;
    H: number;
    D: number;
    K: number;
    maxLen: number;
    start: Arr;
    invFreq: Arr;
    kv: Arr;
  },
): { qkv: Float64Array; kv: Float64Array } {
  const { B, n, H, D, K, maxLen } = a, T = B * n;
  const positions = Array.from({ length: T }, (_, t) => a.start[Math.floor(t / n)] + (t % n));
  const raw = normLinearRef(x, norm, w, T, 3 * H * D, K);
  const qkv = rotaryRef(raw, positions, a.invFreq, { T, H, D }, maxLen);
  const kv = Float64Array.from(a.kv);
  for (let t = 0; t < T; t++) {
    const b = Math.floor(t / n), pos = positions[t];
    if (pos >= maxLen) continue;
    for (let s = 0; s < 2; s++) {
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < D; d++) {
          kv[(((s * B + b) * H + h) * maxLen + pos) * D + d] =
            qkv[((t * 3 + 1 + s) * H + h) * D + d];
        }
      }
    }
  }
  return { qkv, kv };
}
