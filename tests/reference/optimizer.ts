/**
 * Float64 reference of `torch.nn.utils.clip_grad_norm_` (norm_type 2) and `torch.optim.Adam`
 * (no weight decay, no amsgrad), written as plain loops to be read beside torch's source.
 *
 * @module
 */

/** Adam hyperparameters of the reference (torch's defaults where omitted). */
export interface AdamRefOptions {
  /** Learning rate. */
  lr: number;
  /** First-moment decay (0.9). */
  beta1?: number;
  /** Second-moment decay (0.999). */
  beta2?: number;
  /** Denominator epsilon (1e-8). */
  eps?: number;
}

/** Adam state: torch's `state["step"]`, `exp_avg` and `exp_avg_sq`, one array per parameter. */
export interface AdamRefState {
  /** Steps taken. */
  step: number;
  /** First moments m, `(size)` per parameter. */
  expAvg: Float64Array[];
  /** Second moments v, `(size)` per parameter. */
  expAvgSq: Float64Array[];
}

/**
 * A fresh state: step 0, zero moments.
 *
 * @param sizes element count of each parameter
 * @returns the state
 */
export function adamRefState(sizes: number[]): AdamRefState {
  return {
    step: 0,
    expAvg: sizes.map((n) => new Float64Array(n)),
    expAvgSq: sizes.map((n) => new Float64Array(n)),
  };
}

/** What {@link clipGradNormRef} returns. */
export interface ClipRefResult {
  /** Global L2 norm of all gradients before clipping (what torch returns). */
  totalNorm: number;
  /** The factor applied: min(maxNorm / (totalNorm + 1e-6), 1), NaN kept. */
  clipCoef: number;
  /** The clipped gradients, `(size)` per parameter. */
  grads: Float64Array[];
}

/**
 * torch.nn.utils.clip_grad_norm_(params, maxNorm): total = sqrt(Σ_params Σ g²),
 * coef = maxNorm / (total + 1e-6), every gradient multiplied by clamp(coef, max=1).
 *
 * @param grads the gradients, `(size)` per parameter
 * @param maxNorm the max norm (Infinity: no clipping, the norm is still computed)
 * @returns norm, coefficient and the clipped gradients (new arrays)
 */
export function clipGradNormRef(grads: ArrayLike<number>[], maxNorm: number): ClipRefResult {
  let sumSq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sumSq += g[i] * g[i];
  const totalNorm = Math.sqrt(sumSq);
  // Math.min keeps NaN, like torch.clamp.
  const clipCoef = Number.isFinite(maxNorm) ? Math.min(maxNorm / (totalNorm + 1e-6), 1) : 1;
  return {
    totalNorm,
    clipCoef,
    grads: grads.map((g) => Float64Array.from(g, (x) => x * clipCoef)),
  };
}

/**
 * One torch.optim.Adam step, in place on `params` and `state`:
 * t += 1; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
 * p −= lr / (1 − β1^t) · m / (sqrt(v) / sqrt(1 − β2^t) + eps).
 *
 * @param params parameter values, `(size)` per parameter, updated
 * @param grads gradients (already clipped), `(size)` per parameter
 * @param state moments and step count, updated
 * @param options hyperparameters
 */
export function adamStepRef(
  params: Float64Array[],
  grads: ArrayLike<number>[],
  state: AdamRefState,
  options: AdamRefOptions,
): void {
  const { lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8 } = options;
  state.step += 1;
  const t = state.step;
  const biasCorrection1 = 1 - beta1 ** t;
  const biasCorrection2 = 1 - beta2 ** t;
  const stepSize = lr / biasCorrection1;
  for (let k = 0; k < params.length; k++) {
    const p = params[k], g = grads[k], m = state.expAvg[k], v = state.expAvgSq[k];
    for (let i = 0; i < p.length; i++) {
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(biasCorrection2) + eps;
      p[i] -= stepSize * m[i] / denom;
    }
  }
}
