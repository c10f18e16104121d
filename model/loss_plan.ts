/**
 * The loss plan: a training (or evaluation) forward plan followed by next-token cross-entropy and
 * the mean loss, accumulated over micro-batches; optionally distillation toward a teacher's
 * logits added after cross-entropy ({@link buildDistillPlan}).
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { klDivergence } from "../kernels/distill.ts";
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

/** How a student's loss plan is distilled toward a teacher's logits (see {@link buildDistillPlan}). */
export interface DistillSpec {
  /**
   * The teacher's logits of the same tokens: `(N, T, V)` f32, micro-batch m's T rows from
   * element m·T·V (N = 1: the teacher's own logits buffer).
   */
  teacherLogits: GPUBuffer;
  /** Weight w of the KL term: the loss is (1 − w)·CE + w·KL, 0 < w ≤ 1. */
  weight: number;
  /** Softmax temperature τ of both distributions (default 1). */
  temperature?: number;
  /** Micro-batches per step N (the means are over all of them). */
  accumulate: number;
}

/** The distillation dispatches of a training loss plan (see {@link buildDistillPlan}). */
export interface DistillPlan {
  /** Per-row KL(teacher ‖ student) of the micro-batch `(T)`. */
  losses: GPUBuffer;
  /** Mean plain cross-entropy over the step's micro-batches `(1)` (clear it before a step). */
  ce: GPUBuffer;
  /** Mean KL over the step's micro-batches `(1)` (clear it before a step). */
  kl: GPUBuffer;
  /**
   * Per micro-batch m: the dispatches to encode after the loss plan's `dispatches` and before
   * its `backward` (they read the teacher's micro-batch m and add to `dLogits` and `loss`).
   */
  dispatches: Dispatch[][];
  /** Frees the buffers the plan allocated. */
  destroy(): void;
}

/**
 * Adds distillation toward a teacher to a training loss plan whose cross-entropy was built with
 * lossScale (1 − w)/N: after cross-entropy wrote (1 − w)/N·dCE into `dLogits`, a KL kernel adds
 * w/N·dKL (KL(p_teacher ‖ p_student) per row, mean over the micro-batch's T = B·n rows: the last
 * position of a row has no cross-entropy target but a teacher distribution all the same), and
 * `loss` accumulates w/N·KL, so it holds the combined loss (1 − w)·CE + w·KL. Plain CE and KL
 * are also summed apart into `ce` and `kl`, for logs.
 *
 * @param gpu the runtime (allocates the plan's few small buffers)
 * @param lp the student's training loss plan (lossScale (1 − w)/N)
 * @param spec the teacher's logits, the weight, the temperature and N
 * @returns the dispatches and buffers
 * @throws Error when the weight is not in (0, 1] or the teacher's buffer is too small
 */
export function buildDistillPlan(gpu: Gpu, lp: LossPlan, spec: DistillSpec): DistillPlan {
  const { weight: w, accumulate: N } = spec, temperature = spec.temperature ?? 1;
  if (!(w > 0 && w <= 1)) {
    throw new Error(`specdec: distillation weight must be in (0, 1], got ${w}`);
  }
  if (!lp.dLogits) throw new Error("specdec: distillation needs a training loss plan");
  const { batch, n } = lp.plan, T = batch * n, V = lp.plan.logits.size / 4 / T;
  if (spec.teacherLogits.size < N * T * V * 4) {
    throw new Error(
      `specdec: the teacher's logits buffer has ${spec.teacherLogits.size} bytes, fewer than ` +
        `${N} micro-batches of (${T}, ${V}) f32`,
    );
  }
  const label = `distill B${batch} n${n}`;
  const losses = gpu.buffer(`${label} kl losses (${T})`, T * 4);
  const ce = gpu.buffer(`${label} ce (1)`, 4), kl = gpu.buffer(`${label} kl (1)`, 4);
  const ceCount = batch * (n - 1) * N, klCount = T * N;
  const dispatches = Array.from({ length: N }, (_, m) => [
    klDivergence(gpu, {
      student: lp.plan.logits,
      teacher: spec.teacherLogits,
      teacherOffset: m * T * V,
      losses,
      dStudent: lp.dLogits,
      T,
      V,
      temperature,
      scale: w / klCount,
      accumulate: true, // after cross-entropy's (1 − w)·dCE
    }),
    sumLoss(gpu, { losses, out: lp.loss, T, scale: w / klCount, accumulate: true }),
    sumLoss(gpu, { losses: lp.losses, out: ce, T, scale: 1 / ceCount, accumulate: true }),
    sumLoss(gpu, { losses, out: kl, T, scale: 1 / klCount, accumulate: true }),
  ]);
  return {
    losses,
    ce,
    kl,
    dispatches,
    destroy: () => [losses, ce, kl].forEach((b) => b.destroy()),
  };
}
