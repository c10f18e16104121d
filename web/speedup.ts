/**
 * Leviathan, Kalman and Matias (2022), arXiv 2211.17192: with per-token acceptance α, γ draft
 * tokens per step and a draft forward costing c target forwards, a step yields
 * (1 − α^(γ+1)) / (1 − α) tokens on average (eq. 1) and the walltime improvement is
 * (1 − α^(γ+1)) / ((1 − α)(γc + 1)) (theorem 3.8).
 *
 * @module
 */

/**
 * Expected tokens per step, 1 + α + … + α^γ.
 *
 * @param alpha per-token acceptance in [0, 1]
 * @param gamma draft tokens per step
 * @returns tokens per step
 */
export function tokensPerStep(alpha: number, gamma: number): number {
  let s = 0;
  for (let i = 0; i <= gamma; i++) s += alpha ** i;
  return s;
}

/**
 * The α whose expected tokens per step equals the measured one (acceptedMean + 1), by
 * bisection (tokensPerStep is increasing in α).
 *
 * @param acceptedMean measured mean accepted draft tokens per step, in [0, γ]
 * @param gamma draft tokens per step
 * @returns α in [0, 1]
 */
export function fitAlpha(acceptedMean: number, gamma: number): number {
  const want = acceptedMean + 1;
  if (!(want > 1)) return 0;
  if (want >= gamma + 1) return 1;
  let lo = 0, hi = 1;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (tokensPerStep(mid, gamma) < want) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * The predicted walltime speedup of speculative over base decoding.
 *
 * @param alpha per-token acceptance
 * @param gamma draft tokens per step
 * @param c cost of a draft forward relative to a target forward
 * @returns (1 − α^(γ+1)) / ((1 − α)(γc + 1))
 */
export function predictedSpeedup(alpha: number, gamma: number, c: number): number {
  return tokensPerStep(alpha, gamma) / (gamma * c + 1);
}
