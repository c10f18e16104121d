/**
 * The Decoder's backward pass as a fixed list of dispatches: from dLogits back to every parameter
 * gradient, accumulating (`+=`) into the gradient buffers so micro-batches add up.
 *
 * @module
 */
import type { Dispatch } from "../kernels/gpu.ts";
import { inputGradient, weightGradient } from "../kernels/matmul.ts";
import { rmsNormBackward } from "../kernels/norm.ts";
import { add, geluBackward, sumRows } from "../kernels/activation.ts";
import { embeddingBackward } from "../kernels/embedding.ts";
import { rotaryBackward } from "../kernels/rotary.ts";
import { attentionBackward } from "../kernels/attention.ts";
import type { ForwardPlan, LayerActivations } from "./forward_plan.ts";
import type { LayerWeights } from "./params.ts";
import type { ModelState } from "./state.ts";

/**
 * Builds the backward dispatches of a training {@link ForwardPlan}.
 *
 * Shapes: B rows, T = B·n tokens, C = dim, H heads of D = dimHead, F = ffMult·C, V = numTokens.
 *
 * @param model parameters, gradients (accumulated into), config and allocator
 * @param plan a training forward plan (per-layer activations kept, start = 0)
 * @param dLogits `(T, V)` gradient of the loss w.r.t. the logits
 * @param dExitLogits `(T, V)` gradient of the loss w.r.t. the exit logits (a model with an exit
 *   head: its gradient reaches the blocks below the exit through the stream entering block k)
 * @returns the dispatches, in order
 */
export function backwardDispatches(
  model: ModelState,
  plan: ForwardPlan,
  dLogits: GPUBuffer,
  dExitLogits?: GPUBuffer,
): Dispatch[] {
  if (!plan.training) throw new Error("specdec: backward needs a training forward plan");
  const { gpu, config, weights } = model, grads = model.gradWeights;
  const B = plan.batch, n = plan.n, T = B * n, C = config.dim, H = config.heads, D = config.dimHead;
  const HD = H * D, F = config.ffMult * C, V = config.numTokens, maxLen = plan.cache.maxLen;
  const label = `${model.label} bwd B${B} n${n}`;
  const buf = (name: string, shape: number[]) => model.tensor(`${label} ${name}`, shape);
  const dX = buf("dx stream", [T, C]); // gradient of the residual stream
  const dXn = buf("dxn", [T, C]); // gradient of a norm's output
  const dA = buf("da", [T, F]);
  const dH = buf("dh", [T, F]);
  const dAtt = buf("datt", [T, HD]);
  const dQkv = buf("dqkv", [T, 3, H, D]);
  const acc = { accumulate: true };
  const d: Dispatch[] = [];

  // logits = xf · logitsWeightᵀ
  d.push(
    ...weightGradient(gpu, {
      a: dLogits,
      b: plan.xf,
      c: grads.logitsWeight,
      M: V,
      N: C,
      K: T,
      ...acc,
    }),
  );
  d.push(...inputGradient(gpu, { a: dLogits, b: weights.logitsWeight, c: dXn, M: T, N: C, K: V }));
  d.push(...rmsNormBackward(gpu, {
    x: plan.xFinal,
    weight: weights.finalNorm,
    rstd: plan.rstdF,
    dy: dXn,
    dx: dX,
    dWeight: grads.finalNorm,
    T,
    C,
    accumulateDx: false,
    accumulateDw: true,
  }));
  const steps = exitBackward(model, plan, dExitLogits, dX, d);
  for (const s of steps) {
    const { a, w, g, kv, dX } = s;
    if (s.pre) d.push(s.pre);
    // next = xmid + a · ffOutᵀ + ffOutBias
    d.push(...weightGradient(gpu, { a: dX, b: a.a, c: g.ffOut, M: C, N: F, K: T, ...acc }));
    d.push(sumRows(gpu, { x: dX, out: g.ffOutBias, M: T, N: C, accumulate: true }));
    d.push(...inputGradient(gpu, { a: dX, b: w.ffOut, c: dA, M: T, N: F, K: C }));
    d.push(geluBackward(gpu, { x: a.h, dy: dA, dx: dH, n: T * F }));
    // h = xn2 · ffInᵀ + ffInBias
    d.push(...weightGradient(gpu, { a: dH, b: a.xn2, c: g.ffIn, M: F, N: C, K: T, ...acc }));
    d.push(sumRows(gpu, { x: dH, out: g.ffInBias, M: T, N: F, accumulate: true }));
    d.push(...inputGradient(gpu, { a: dH, b: w.ffIn, c: dXn, M: T, N: C, K: F }));
    // xn2 = norm(xmid): dX becomes d(xmid) = d(next) + norm backward
    d.push(...rmsNormBackward(gpu, {
      x: a.xmid,
      weight: w.ffNorm,
      rstd: a.rstd2,
      dy: dXn,
      dx: dX,
      dWeight: g.ffNorm,
      T,
      C,
      accumulateDx: true,
      accumulateDw: true,
    }));
    // xmid = x + att · attnOutᵀ
    d.push(...weightGradient(gpu, { a: dX, b: a.att, c: g.attnOut, M: C, N: HD, K: T, ...acc }));
    d.push(...inputGradient(gpu, { a: dX, b: w.attnOut, c: dAtt, M: T, N: HD, K: C }));
    d.push(...attentionBackward(gpu, {
      qkv: a.qkv,
      kv,
      out: a.att,
      dOut: dAtt,
      lse: a.lse,
      dqkv: dQkv,
      B,
      n,
      H,
      D,
      maxLen,
    }));
    d.push(
      rotaryBackward(gpu, {
        dqkv: dQkv,
        cos: plan.cos,
        sin: plan.sin,
        start: plan.start,
        B,
        n,
        H,
        D,
        maxLen,
      }),
    );
    // qkv = xn · qkvᵀ
    d.push(...weightGradient(gpu, { a: dQkv, b: a.xn, c: g.qkv, M: 3 * HD, N: C, K: T, ...acc }));
    d.push(...inputGradient(gpu, { a: dQkv, b: w.qkv, c: dXn, M: T, N: C, K: 3 * HD }));
    // xn = norm(x): dX becomes d(x) = d(xmid) + norm backward
    d.push(...rmsNormBackward(gpu, {
      x: a.x,
      weight: w.norm,
      rstd: a.rstd,
      dy: dXn,
      dx: dX,
      dWeight: g.norm,
      T,
      C,
      accumulateDx: true,
      accumulateDw: true,
    }));
  }
  d.push(
    embeddingBackward(gpu, {
      tokens: plan.tokens,
      dOut: dX,
      dTable: grads.tokenEmbedding,
      T,
      C,
      V,
      accumulate: true,
    }),
  );
  return d;
}

/** One block of the backward pass: its activations, weights, gradients, cache layer, stream. */
interface BackwardStep {
  a: LayerActivations;
  w: LayerWeights<GPUBuffer>;
  g: LayerWeights<GPUBuffer>;
  kv: GPUBuffer;
  /** The gradient of the block's output on entry, of its input on exit (updated in place). */
  dX: GPUBuffer;
  /** Dispatches before the block (the exit branch's gradient joining the main stream's). */
  pre?: Dispatch;
}

/**
 * The blocks in backward order. With an exit head: first the exit head's backward (pushed to
 * `d`) and the extra blocks' on their own stream gradient, then the main blocks from the last;
 * before block k − 1, the exit branch's gradient is added to the main stream's (both flow into
 * the stream entering block k).
 */
function exitBackward(
  model: ModelState,
  plan: ForwardPlan,
  dExitLogits: GPUBuffer | undefined,
  dX: GPUBuffer,
  d: Dispatch[],
): BackwardStep[] {
  const { gpu, config, weights } = model, grads = model.gradWeights, depth = config.depth;
  const main: BackwardStep[] = [];
  for (let l = depth - 1; l >= 0; l--) {
    main.push({
      a: plan.layers[l],
      w: weights.layers[l],
      g: grads.layers[l],
      kv: plan.cache.layers[l],
      dX,
    });
  }
  const k = config.earlyExitLayer;
  if (k === 0) return main;
  if (!dExitLogits || !plan.exitLogits) {
    throw new Error("specdec: the backward pass of a model with an exit head needs dExitLogits");
  }
  const T = plan.batch * plan.n, C = config.dim, V = config.numTokens;
  const label = `${model.label} bwd B${plan.batch} n${plan.n}`;
  const dXe = model.tensor(`${label} dx exit stream`, [T, C]);
  const dXn = model.tensor(`${label} dxn exit`, [T, C]);
  // exitLogits = exitXf · exitWeightᵀ, exitXf = norm(xExit)
  d.push(
    ...weightGradient(gpu, {
      a: dExitLogits,
      b: plan.xfExit!,
      c: grads.exitWeight!,
      M: V,
      N: C,
      K: T,
      accumulate: true,
    }),
    ...inputGradient(gpu, { a: dExitLogits, b: weights.exitWeight!, c: dXn, M: T, N: C, K: V }),
    ...rmsNormBackward(gpu, {
      x: plan.xExit!,
      weight: weights.exitNorm!,
      rstd: plan.rstdExit!,
      dy: dXn,
      dx: dXe,
      dWeight: grads.exitNorm!,
      T,
      C,
      accumulateDx: false,
      accumulateDw: true,
    }),
  );
  const E = weights.exitLayers.length;
  const branch: BackwardStep[] = [];
  for (let j = E - 1; j >= 0; j--) {
    branch.push({
      a: plan.exitLayers[j],
      w: weights.exitLayers[j],
      g: grads.exitLayers[j],
      kv: plan.cache.layers[depth + j],
      dX: dXe,
    });
  }
  // main[depth − k] is block k − 1: the stream it produced also fed the exit branch
  main[depth - k].pre = add(gpu, { x: dX, y: dXe, n: T * C });
  return [...branch, ...main];
}
