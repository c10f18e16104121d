/**
 * Float64 CPU reference of the distillation loss (kernels/distill.ts): plain loops, the textbook
 * formula, readable first.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** log softmax(row / τ) of one row, in float64 with the max subtracted. */
function logSoftmax(x: Arr, base: number, V: number, tau: number): Float64Array {
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, x[base + v] / tau);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(x[base + v] / tau - max);
  const out = new Float64Array(V);
  for (let v = 0; v < V; v++) out[v] = x[base + v] / tau - max - Math.log(sum);
  return out;
}

/**
 * KL(p_t ‖ p_s) per row with p = softmax(logits / τ): student and teacher (T, V) →
 * losses (T) = Σ_v p_t (log p_t − log p_s) (terms with p_t = 0 count 0), and dStudent (T, V),
 * the gradient of scale · Σ losses w.r.t. the student: scale/τ · (p_s − p_t).
 */
export function klDivergenceRef(
  student: Arr,
  teacher: Arr,
  T: number,
  V: number,
  tau = 1,
  scale = 1,
): { losses: Float64Array; dStudent: Float64Array } {
  const losses = new Float64Array(T);
  const dStudent = new Float64Array(T * V);
  for (let r = 0; r < T; r++) {
    const ls = logSoftmax(student, r * V, V, tau), lt = logSoftmax(teacher, r * V, V, tau);
    let kl = 0;
    for (let v = 0; v < V; v++) {
      const pt = Math.exp(lt[v]);
      if (pt > 0) kl += pt * (lt[v] - ls[v]);
      dStudent[r * V + v] = scale / tau * (Math.exp(ls[v]) - pt);
    }
    losses[r] = kl;
  }
  return { losses, dStudent };
}
