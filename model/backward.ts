/**
 * The Decoder's backward pass as a fixed list of dispatches: from dLogits back to every parameter
 * gradient, accumulating (`+=`) into the gradient buffers so micro-batches add up.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { matmulNN, matmulTN } from "../kernels/matmul.ts";
import { rmsNormBackward } from "../kernels/norm.ts";
import { geluBackward, sumRows } from "../kernels/activation.ts";
import { embeddingBackward } from "../kernels/embedding.ts";
import { rotaryBackward } from "../kernels/rotary.ts";
import { attentionBackward } from "../kernels/attention.ts";
import type { FullDecoderConfig } from "./config.ts";
import type { ForwardPlan } from "./decoder.ts";

/**
 * Builds the backward dispatches of a training {@link ForwardPlan}.
 *
 * @param alloc allocates the backward's scratch buffers (the model tracks them to free them)
 * @param gpu the runtime
 * @param config the model's config
 * @param params parameter buffers by checkpoint name
 * @param grads gradient buffers by checkpoint name (accumulated into)
 * @param plan a training forward plan (per-layer activations kept, start = 0)
 * @param dLogits `(T, V)` gradient of the loss w.r.t. the logits
 * @returns the dispatches, in order
 */
export function backwardDispatches(
  alloc: (label: string, bytes: number) => GPUBuffer,
  gpu: Gpu,
  config: FullDecoderConfig,
  params: Map<string, GPUBuffer>,
  grads: Map<string, GPUBuffer>,
  plan: ForwardPlan,
  dLogits: GPUBuffer,
): Dispatch[] {
  if (!plan.training) throw new Error("specdec: backward needs a training forward plan");
  const P = (k: string) => params.get(k)!, G = (k: string) => grads.get(k)!;
  const B = plan.batch, n = plan.n, T = B * n, C = config.dim, H = config.heads, D = config.dimHead;
  const HD = H * D, F = config.ffMult * C, V = config.numTokens, maxLen = plan.cache.maxLen;
  const L = `bwd B${B} n${n}`;
  const buf = (name: string, shape: number[]) =>
    alloc(`${L} ${name} (${shape.join(", ")})`, shape.reduce((a, b) => a * b, 1) * 4);
  const dX = buf("dx stream", [T, C]); // gradient of the residual stream
  const dXn = buf("dxn", [T, C]); // gradient of a norm's output
  const dA = buf("da", [T, F]);
  const dH = buf("dh", [T, F]);
  const dAtt = buf("datt", [T, HD]);
  const dQkv = buf("dqkv", [T, 3, H, D]);
  const acc = { accumulate: true };
  const d: Dispatch[] = [];

  // logits = xf · Wlᵀ
  d.push(
    matmulTN(gpu, { a: dLogits, b: plan.xf, c: G("to_logits.1.weight"), M: V, N: C, K: T, ...acc }),
  );
  d.push(matmulNN(gpu, { a: dLogits, b: P("to_logits.1.weight"), c: dXn, M: T, N: C, K: V }));
  d.push(...rmsNormBackward(gpu, {
    x: plan.xFinal,
    weight: P("to_logits.0.weight"),
    rstd: plan.rstdF,
    dy: dXn,
    dx: dX,
    dWeight: G("to_logits.0.weight"),
    T,
    C,
    accumulateDx: false,
    accumulateDw: true,
  }));
  for (let l = config.depth - 1; l >= 0; l--) {
    const a = plan.layers[l], p = `layers.${l}`;
    // next = xmid + a·W2ᵀ + b2
    d.push(matmulTN(gpu, { a: dX, b: a.a, c: G(`${p}.1.3.weight`), M: C, N: F, K: T, ...acc }));
    d.push(sumRows(gpu, { x: dX, out: G(`${p}.1.3.bias`), M: T, N: C, accumulate: true }));
    d.push(matmulNN(gpu, { a: dX, b: P(`${p}.1.3.weight`), c: dA, M: T, N: F, K: C }));
    d.push(geluBackward(gpu, { x: a.h, dy: dA, dx: dH, n: T * F }));
    // h = xn2 · W1ᵀ + b1
    d.push(matmulTN(gpu, { a: dH, b: a.xn2, c: G(`${p}.1.1.weight`), M: F, N: C, K: T, ...acc }));
    d.push(sumRows(gpu, { x: dH, out: G(`${p}.1.1.bias`), M: T, N: F, accumulate: true }));
    d.push(matmulNN(gpu, { a: dH, b: P(`${p}.1.1.weight`), c: dXn, M: T, N: C, K: F }));
    // xn2 = norm(xmid): dX becomes d(xmid) = d(next) + norm backward
    d.push(...rmsNormBackward(gpu, {
      x: a.xmid,
      weight: P(`${p}.1.0.weight`),
      rstd: a.rstd2,
      dy: dXn,
      dx: dX,
      dWeight: G(`${p}.1.0.weight`),
      T,
      C,
      accumulateDx: true,
      accumulateDw: true,
    }));
    // xmid = x + att · Woᵀ
    d.push(
      matmulTN(gpu, { a: dX, b: a.att, c: G(`${p}.0.to_out.weight`), M: C, N: HD, K: T, ...acc }),
    );
    d.push(matmulNN(gpu, { a: dX, b: P(`${p}.0.to_out.weight`), c: dAtt, M: T, N: HD, K: C }));
    d.push(...attentionBackward(gpu, {
      qkv: a.qkv,
      kv: plan.cache.layers[l],
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
    // qkv = xn · Wqkvᵀ
    d.push(
      matmulTN(gpu, {
        a: dQkv,
        b: a.xn,
        c: G(`${p}.0.to_qkv.weight`),
        M: 3 * HD,
        N: C,
        K: T,
        ...acc,
      }),
    );
    d.push(matmulNN(gpu, { a: dQkv, b: P(`${p}.0.to_qkv.weight`), c: dXn, M: T, N: C, K: 3 * HD }));
    d.push(...rmsNormBackward(gpu, {
      x: a.x,
      weight: P(`${p}.0.norm.weight`),
      rstd: a.rstd,
      dy: dXn,
      dx: dX,
      dWeight: G(`${p}.0.norm.weight`),
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
      dTable: G("token_emb.weight"),
      T,
      C,
      V,
      accumulate: true,
    }),
  );
  return d;
}
