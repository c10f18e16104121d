/**
 * The loss plan: a training (or evaluation) forward plan followed by next-token cross-entropy and
 * the mean loss, accumulated over micro-batches.
 *
 * @module
 */
import type { Dispatch } from "../kernels/gpu.ts";
import { crossEntropy, IGNORE, sumLoss } from "../kernels/loss.ts";
import type { ForwardPlan } from "./forward_plan.ts";
import type { ModelState } from "./state.ts";

/** A loss plan: a training forward plus cross-entropy (and, once asked for, the backward pass). */
export interface LossPlan {
  /** The training forward plan. */
  plan: ForwardPlan;
  /** Next-token targets, u32 `(T)`; {@link IGNORE} at each row's last position. */
  targets: GPUBuffer;
  /** Per-position cross-entropy `(T)`. */
  losses: GPUBuffer;
  /** Gradient of the (scaled) mean loss w.r.t. the logits `(T, V)` (training plans only). */
  dLogits?: GPUBuffer;
  /**
   * The mean loss `(1)`, accumulated over micro-batches (clear it before a step); with an exit
   * head, the final head's plus the exit head's (the joint objective).
   */
  loss: GPUBuffer;
  /** The exit head's per-position cross-entropy `(T)` (models with an exit head). */
  exitLosses?: GPUBuffer;
  /** Gradient of the scaled exit loss w.r.t. the exit logits `(T, V)` (training plans). */
  dExitLogits?: GPUBuffer;
  /** Forward + loss dispatches. */
  dispatches: Dispatch[];
  /** Backward dispatches (gradients accumulate into the model's gradients), built on demand. */
  backward?: Dispatch[];
}

/**
 * Next-token targets of a batch: `targets[b·n + i] = tokens[b][i + 1]`, {@link IGNORE} at each
 * row's last position.
 *
 * @param tokens batch × n tokens
 * @param n tokens per row
 * @returns u32 `(batch · n)`
 */
export function nextTokenTargets(tokens: number[][], n: number): Uint32Array<ArrayBuffer> {
  const t = new Uint32Array(tokens.length * n);
  tokens.forEach((row, b) => {
    for (let i = 0; i < n; i++) t[b * n + i] = i + 1 < n ? row[i + 1] : IGNORE;
  });
  return t;
}

/**
 * Adds cross-entropy and the mean loss to a forward plan.
 *
 * @param model config and allocator
 * @param plan the forward plan (a training plan when `training`)
 * @param lossScale multiplier on the mean loss (and its gradient)
 * @param training write dLogits for a backward pass (else evaluation only)
 * @returns the plan
 */
export function buildLossPlan(
  model: ModelState,
  plan: ForwardPlan,
  lossScale: number,
  training: boolean,
): LossPlan {
  const { batch, n } = plan, V = model.config.numTokens, T = batch * n;
  const label = `${model.label} loss B${batch} n${n}`;
  const targets = model.tensor(`${label} targets u32`, [T]);
  const losses = model.tensor(`${label} losses`, [T]);
  const dLogits = training ? model.tensor(`${label} dlogits`, [T, V]) : undefined;
  const loss = model.tensor(`${label} loss`, [1]);
  const count = batch * (n - 1) / lossScale;
  const dispatches = [
    ...plan.dispatches,
    crossEntropy(model.gpu, {
      logits: plan.logits,
      targets,
      losses,
      dLogits,
      T,
      V,
      scale: 1 / count,
    }),
    // accumulates over micro-batches: whoever runs the plan clears `loss` first
    sumLoss(model.gpu, { losses, out: loss, T, scale: 1 / count, accumulate: true }),
  ];
  // the exit head's loss joins the sum (the reference's early-exit training adds the two losses)
  let exitLosses: GPUBuffer | undefined, dExitLogits: GPUBuffer | undefined;
  if (plan.exitLogits) {
    exitLosses = model.tensor(`${label} exit losses`, [T]);
    dExitLogits = training ? model.tensor(`${label} exit dlogits`, [T, V]) : undefined;
    dispatches.push(
      crossEntropy(model.gpu, {
        logits: plan.exitLogits,
        targets,
        losses: exitLosses,
        dLogits: dExitLogits,
        T,
        V,
        scale: 1 / count,
      }),
      sumLoss(model.gpu, { losses: exitLosses, out: loss, T, scale: 1 / count, accumulate: true }),
    );
  }
  return { plan, targets, losses, dLogits, loss, dispatches, exitLosses, dExitLogits };
}
