/**
 * The forward pass as a fixed list of WGSL dispatches over preallocated buffers: embedding, then
 * per block `x += Attn(RMSNorm(x))`, `x += FF(x)`, then the final RMSNorm and the logits.
 *
 * A {@link ForwardPlan} is built once per (KV cache, tokens per row) and encoded any number of
 * times: it reads its tokens and per-row start positions from GPU buffers, so decoding loops never
 * rebuild or rewrite anything per step.
 *
 * @module
 */
import type { Dispatch } from "../kernels/gpu.ts";
import { linearForward } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { add, gelu } from "../kernels/activation.ts";
import { embedding } from "../kernels/embedding.ts";
import { rotary } from "../kernels/rotary.ts";
import { attention, kvWrite, trainingAttention } from "../kernels/attention.ts";
import {
  fusedLinear,
  fusedLinearSupported,
  type FusedSlotCopy,
  STORAGE_UNIFORM,
} from "../kernels/fused_linear.ts";
import { attentionDecode, kvTextureWrite } from "../kernels/attention_decode.ts";
import type { KVCache } from "./kv_cache.ts";
import type { ModelState } from "./state.ts";
import type { LayerWeights } from "./params.ts";
import { sumRows } from "../kernels/activation.ts";

/**
 * What a forward computes, for a model with an exit head (see `DecoderConfig.earlyExitLayer`):
 *
 * - `"full"`: every block and the final head (a training plan adds the exit branch and its head:
 *   `exitLogits`, for the joint loss);
 * - `"draft"`: blocks [0, k), the exit branch's extra blocks and the exit head into `logits`
 *   (the model as its own draft; its keys and values of blocks < k go to the shared cache);
 * - `"verify"`: as `"full"`, plus the extra blocks on a copy of the stream after block k − 1, so
 *   their cache holds every verified position (the exit head is not computed);
 * - `"upper"`: blocks [k, depth) and the final head only, with no embedding: the caller writes
 *   the stream after block k − 1 into `layers[0].x` (self-speculative verification, whose draft
 *   forwards already ran blocks < k and wrote their keys and values).
 */
export type PlanKind = "full" | "draft" | "verify" | "upper";

/** One block of a forward, in order: its weights, its cache layer, activations and output. */
interface BlockStep {
  w: LayerWeights<GPUBuffer>;
  kv: GPUBuffer;
  a: LayerActivations;
  /** Where the block's output goes (training: a fresh buffer; else `a.x`, in place). */
  next: GPUBuffer;
  /** A dispatch run before the block (the copy of the stream into the exit branch). */
  pre?: Dispatch;
}

/** Per-layer activations of one forward (saved per layer when training, shared otherwise). */
export interface LayerActivations {
  /** Residual stream entering the layer `(T, C)` (training only; else the shared stream). */
  x: GPUBuffer;
  /** RMSNorm of x `(T, C)`. */
  xn: GPUBuffer;
  /** 1/rms of x `(T)`. */
  rstd: GPUBuffer;
  /** Fused q, k, v after rotary `(T, 3, H, D)`. */
  qkv: GPUBuffer;
  /** Attention output, heads merged `(T, H·D)`. */
  att: GPUBuffer;
  /** Log-sum-exp of the attention scores `(B, H, n)`. */
  lse: GPUBuffer;
  /** Residual stream after attention `(T, C)` (training only). */
  xmid: GPUBuffer;
  /** RMSNorm of xmid `(T, C)`. */
  xn2: GPUBuffer;
  /** 1/rms of xmid `(T)`. */
  rstd2: GPUBuffer;
  /** FF pre-activation `(T, F)`. */
  h: GPUBuffer;
  /** GELU(h) `(T, F)`. */
  a: GPUBuffer;
}

/**
 * A forward pass of `n` tokens for each of the cache's rows, ready to encode. Fill `tokens` and
 * `start` (by a kernel or `gpu.write`), encode `dispatches`, read `logits`.
 */
export interface ForwardPlan {
  /** The cache the plan writes keys and values into. */
  cache: KVCache;
  /** Rows. */
  batch: number;
  /** Tokens per row. */
  n: number;
  /** Whether per-layer activations are kept for a backward pass. */
  training: boolean;
  /**
   * Whether the fused small-n path was built (5 dispatches per layer: norm + qkv + rotary +
   * kvWrite, attention, out-projection + residual, norm + ffIn + GELU, ffOut + residual; the
   * final norm in the logits GEMV). The per-layer `xn`, `rstd`, `xn2`, `rstd2`, `h`, k and v of
   * `qkv`, `xf` and `rstdF` are then not written.
   */
  fused: boolean;
  /** Input tokens, u32 `(B, n)`. */
  tokens: GPUBuffer;
  /** Absolute position of each row's first token, u32 `(B)`; attends keys 0..start+i. */
  start: GPUBuffer;
  /** Output logits, f32 `(B, n, V)` (a `"draft"` plan's are the exit head's). */
  logits: GPUBuffer;
  /** What the plan computes (see {@link PlanKind}). */
  kind: PlanKind;
  /**
   * Where the dispatches of a `"draft"` plan split: `[0, lower)` the embedding and blocks < k
   * (the stream after block k − 1 is then in `layers[0].x`), `[lower, head)` the extra blocks,
   * `[head, end)` the exit head. On the fused path `slotCopy` rebuilds dispatch `lower − 1`
   * (block k − 1's ffOut GEMV, whose epilogue finishes the stream) so that it also stores each
   * row's stream into its slot of a verification's input (kernels/fused_linear.ts's slot copy:
   * `state` holds pos (B), `start (B)` the rows' positions, `hidden (B, slots, C)`), saving the
   * copy dispatch after it.
   */
  draftSplit?: {
    lower: number;
    head: number;
    slotCopy?: (
      copy: { state: GPUBuffer; start: GPUBuffer; hidden: GPUBuffer; slots: number; L: number },
    ) => Dispatch;
  };
  /** The exit head's logits `(B, n, V)`: a training plan of a model with an exit head. */
  exitLogits?: GPUBuffer;
  /** The exit branch's extra blocks' activations (training plans only). */
  exitLayers: LayerActivations[];
  /** Residual stream entering the exit head `(T, C)` (training plans with an exit head). */
  xExit?: GPUBuffer;
  /** Exit head RMSNorm output `(T, C)`. */
  xfExit?: GPUBuffer;
  /** 1/rms of xExit `(T)`. */
  rstdExit?: GPUBuffer;
  /** Per-layer activations (one shared entry when not training). */
  layers: LayerActivations[];
  /** Residual stream after the last layer `(T, C)`. */
  xFinal: GPUBuffer;
  /** Final RMSNorm output `(T, C)`. */
  xf: GPUBuffer;
  /** 1/rms of xFinal `(T)`. */
  rstdF: GPUBuffer;
  /** Rotary tables `(maxLen, D/2)` for the cache's length. */
  cos: GPUBuffer;
  /** See cos. */
  sin: GPUBuffer;
  /** The forward's dispatches, in order. */
  dispatches: Dispatch[];
}

/**
 * Builds the dispatches of a forward pass of `n` tokens per row into `cache`.
 *
 * Shapes: B rows, T = B·n tokens, C = dim, H heads of D = dimHead, F = ffMult·C, V = numTokens.
 *
 * @param model parameters, config and allocator
 * @param cache where keys and values go (its batch is the plan's batch)
 * @param n tokens per row
 * @param training keep every layer's activations (and the residual stream before each add) for
 *   the backward pass; otherwise one shared set, with the residual adds fused into the matmuls
 * @param fused build the fused path (default: {@link useFusedPath}); ignored when training or
 *   where the fused kernels do not serve the sizes
 * @param kind what it computes, for a model with an exit head (default `"full"`)
 * @returns the plan
 */
export function buildForwardPlan(
  model: ModelState,
  cache: KVCache,
  n: number,
  training: boolean,
  fused?: boolean,
  kind: PlanKind = "full",
): ForwardPlan {
  const { gpu, config, weights } = model;
  const B = cache.batch, T = B * n, C = config.dim, H = config.heads, D = config.dimHead;
  const HD = H * D, F = config.ffMult * C, V = config.numTokens, maxLen = cache.maxLen;
  const label = `${model.label} fwd B${B} n${n}`;
  const buf = (name: string, shape: number[]) => model.tensor(`${label} ${name}`, shape);
  // inputs of the fused GEMVs, which read them through uniform bindings on software adapters:
  // padded to the 64 KiB of a binding, so the kernels' pipelines do not depend on T
  const input = (name: string, shape: number[]) =>
    training ? buf(name, shape) : model.alloc(
      `${label} ${name} (${shape.join(", ")}) padded`,
      Math.max(shape.reduce((a, b) => a * b, 1) * 4, 65536),
      undefined,
      STORAGE_UNIFORM,
    );
  const tokens = buf("tokens u32", [B, n]);
  const start = buf("start u32", [B]);
  const logits = buf("logits", [B, n, V]);
  const stream = training ? null : input("x", [T, C]);
  const activations = (l: number | string): LayerActivations => ({
    x: stream ?? buf(`l${l} x`, [T, C]),
    xn: buf(`l${l} xn`, [T, C]),
    rstd: buf(`l${l} rstd`, [T]),
    qkv: buf(`l${l} qkv`, [T, 3, H, D]),
    att: input(`l${l} att`, [T, HD]),
    lse: buf(`l${l} lse`, [B, H, n]),
    xmid: stream ?? buf(`l${l} xmid`, [T, C]),
    xn2: buf(`l${l} xn2`, [T, C]),
    rstd2: buf(`l${l} rstd2`, [T]),
    h: buf(`l${l} h`, [T, F]),
    a: input(`l${l} a`, [T, F]),
  });
  const layers = training ? Array.from({ length: config.depth }, (_, l) => activations(l)) : [
    activations(0),
  ];
  const xFinal = stream ?? buf("x final", [T, C]);
  const xf = buf("xf", [T, C]);
  const rstdF = buf("rstd final", [T]);
  const exit = exitSteps(model, cache, kind, training, n, layers, xFinal, activations, input);
  const { cos, sin } = model.rotaryTables(maxLen);
  const useFused = !training && (fused ?? useFusedPath(n)) &&
    fusedLinearSupported(C, 3 * HD, D) && fusedLinearSupported(C, F) &&
    fusedLinearSupported(HD, C) && fusedLinearSupported(F, C);

  const d: Dispatch[] = [];
  // the embedding lookup folds into the first block's qkv GEMV where the fused path reads the
  // table from a texture (software adapters): one dispatch fewer per forward
  const embedTex = useFused && kind !== "upper" && exit.steps.length > 0 && !exit.steps[0].pre
    ? model.weightTexture(weights.tokenEmbedding, V, C)
    : undefined;
  // an "upper" plan's input stream is written by the caller
  if (kind !== "upper" && !embedTex) {
    d.push(embedding(gpu, { tokens, table: weights.tokenEmbedding, out: layers[0].x, T, C }));
  }
  let lower = -1; // a draft plan's dispatches before the extra blocks
  let slotCopy: ((copy: FusedSlotCopy) => Dispatch) | undefined; // its last one, with a slot copy
  for (const [i, s] of (useFused ? exit.steps : []).entries()) {
    const { w, a, kv } = s, x = a.x;
    if (kind === "draft" && i === config.earlyExitLayer) lower = d.length;
    if (s.pre) d.push(s.pre);
    // the cache's texture copy (software adapters): the decode attention reads K/V from it
    const kvTex = cache.textures?.[cache.layers.indexOf(kv)];
    // x += attention(rotary(norm(x)·qkvᵀ)) · attnOutᵀ: k, v straight into the cache
    d.push(fusedLinear(gpu, {
      x,
      embed: i === 0 && embedTex ? { tokens, table: embedTex } : undefined,
      norm: w.norm,
      w: w.qkv,
      wTex: model.weightTexture(w.qkv, 3 * HD, C),
      M: T,
      N: 3 * HD,
      K: C,
      epilogue: { kind: "rotaryKv", qkv: a.qkv, kv, kvTex, start, cos, sin, B, n, H, D, maxLen },
    }));
    const sizes = { B, n, H, D, maxLen };
    d.push(
      kvTex
        ? attentionDecode(gpu, { qkv: a.qkv, kvTex, start, out: a.att, lse: a.lse, ...sizes })
        : attention(gpu, { qkv: a.qkv, kv, start, out: a.att, lse: a.lse, ...sizes }),
    );
    d.push(fusedLinear(gpu, {
      x: a.att,
      w: w.attnOut,
      wTex: model.weightTexture(w.attnOut, C, HD),
      M: T,
      N: C,
      K: HD,
      epilogue: { kind: "accumulate", out: x },
    }));
    // x += gelu(norm(x)·ffInᵀ + ffInBias)·ffOutᵀ + ffOutBias
    d.push(fusedLinear(gpu, {
      x,
      norm: w.ffNorm,
      w: w.ffIn,
      wTex: model.weightTexture(w.ffIn, F, C),
      M: T,
      N: F,
      K: C,
      epilogue: { kind: "biasGelu", bias: w.ffInBias, out: a.a },
    }));
    const ffOut = (slotCopy?: FusedSlotCopy) =>
      fusedLinear(gpu, {
        x: a.a,
        w: w.ffOut,
        wTex: model.weightTexture(w.ffOut, C, F),
        M: T,
        N: C,
        K: F,
        epilogue: { kind: "accumulate", bias: w.ffOutBias, out: x, slotCopy },
      });
    d.push(ffOut());
    // the dispatch that finishes block k − 1 of a draft plan: a caller may rebuild it with a
    // slot copy (model/self_speculative.ts)
    if (kind === "draft" && i === config.earlyExitLayer - 1) slotCopy = ffOut;
  }
  for (const [i, s] of (useFused ? [] : exit.steps).entries()) {
    const { w, a, kv, next } = s;
    if (kind === "draft" && i === config.earlyExitLayer) lower = d.length;
    if (s.pre) d.push(s.pre);
    // attention block: x += att · attnOutᵀ, att = attention(rotary(norm(x) · qkvᵀ))
    d.push(rmsNorm(gpu, { x: a.x, weight: w.norm, y: a.xn, rstd: a.rstd, T, C }));
    d.push(...linearForward(gpu, { a: a.xn, b: w.qkv, c: a.qkv, M: T, N: 3 * HD, K: C }));
    d.push(rotary(gpu, { qkv: a.qkv, cos, sin, start, B, n, H, D, maxLen }));
    d.push(kvWrite(gpu, { qkv: a.qkv, kv, start, B, n, H, D, maxLen }));
    // keep the cache's texture copy in step: a later fused step reads it
    // (training forwards never decode from their cache: no texture copy there)
    const kvTex = training ? undefined : cache.textures?.[cache.layers.indexOf(kv)];
    if (kvTex) d.push(kvTextureWrite(gpu, { qkv: a.qkv, kvTex, start, B, n, H, D, maxLen }));
    const attend = { qkv: a.qkv, kv, start, out: a.att, lse: a.lse, B, n, H, D, maxLen };
    // training (start 0): on software adapters keys and values come from a texture copy of qkv
    d.push(...(training ? trainingAttention(gpu, attend) : [attention(gpu, attend)]));
    if (training) {
      // xmid = x + att·attnOutᵀ, into a fresh buffer so x survives for the backward pass
      d.push(...linearForward(gpu, { a: a.att, b: w.attnOut, c: a.xmid, M: T, N: C, K: HD }));
      d.push(add(gpu, { x: a.xmid, y: a.x, n: T * C }));
    } else {
      d.push(
        ...linearForward(gpu, {
          a: a.att,
          b: w.attnOut,
          c: a.x,
          M: T,
          N: C,
          K: HD,
          accumulate: true,
        }),
      );
    }
    // feed-forward block: next = xmid + gelu(norm(xmid) · ffInᵀ + ffInBias) · ffOutᵀ + ffOutBias
    d.push(rmsNorm(gpu, { x: a.xmid, weight: w.ffNorm, y: a.xn2, rstd: a.rstd2, T, C }));
    d.push(
      ...linearForward(gpu, { a: a.xn2, b: w.ffIn, bias: w.ffInBias, c: a.h, M: T, N: F, K: C }),
    );
    d.push(gelu(gpu, { x: a.h, y: a.a, n: T * F }));
    if (training) {
      d.push(
        ...linearForward(gpu, { a: a.a, b: w.ffOut, bias: w.ffOutBias, c: next, M: T, N: C, K: F }),
      );
      d.push(add(gpu, { x: next, y: a.xmid, n: T * C }));
    } else {
      d.push(...linearForward(gpu, {
        a: a.a,
        b: w.ffOut,
        bias: w.ffOutBias,
        c: a.x,
        M: T,
        N: C,
        K: F,
        accumulate: true,
      }));
    }
  }
  // RMSNorm then the projection (no bias), fused into one GEMV where it can be
  const head = (
    x: GPUBuffer,
    norm: GPUBuffer,
    w: GPUBuffer,
    out: GPUBuffer,
    y: GPUBuffer,
    r: GPUBuffer,
  ) => {
    if (useFused && fusedLinearSupported(C, V)) {
      d.push(fusedLinear(gpu, {
        x,
        norm,
        w,
        wTex: model.weightTexture(w, V, C),
        M: T,
        N: V,
        K: C,
        epilogue: { kind: "none", out },
      }));
    } else {
      d.push(rmsNorm(gpu, { x, weight: norm, y, rstd: r, T, C }));
      d.push(...linearForward(gpu, { a: y, b: w, c: out, M: T, N: V, K: C }));
    }
  };
  const draftSplit = kind === "draft"
    ? { lower: lower < 0 ? d.length : lower, head: d.length, slotCopy }
    : undefined;
  if (kind === "draft") {
    head(xFinal, weights.exitNorm!, weights.exitWeight!, logits, xf, rstdF);
  } else {
    head(xFinal, weights.finalNorm, weights.logitsWeight, logits, xf, rstdF);
  }
  if (exit.exitLogits) {
    head(
      exit.xExit!,
      weights.exitNorm!,
      weights.exitWeight!,
      exit.exitLogits,
      exit.xfExit!,
      exit.rstdExit!,
    );
  }
  if (useFused) {
    // the weight textures the fused GEMVs read are copied again, when the weights may have
    // changed, as the plan's first dispatch is encoded (a separate submit queued before it)
    d[0] = { ...d[0], prepare: () => model.syncWeightTextures() };
  }
  return {
    kind,
    draftSplit,
    exitLogits: exit.exitLogits,
    exitLayers: exit.exitLayers,
    xExit: exit.xExit,
    xfExit: exit.xfExit,
    rstdExit: exit.rstdExit,
    cache,
    batch: B,
    n,
    training,
    fused: useFused,
    tokens,
    start,
    logits,
    layers,
    xFinal,
    xf,
    rstdF,
    cos,
    sin,
    dispatches: d,
  };
}

/**
 * The blocks of a forward in order, with the exit branch where the plan's kind puts it: training
 * plans run the extra blocks after block k − 1 on fresh buffers (the exit head reads their
 * output); `"draft"` plans stop after block k − 1 and run the extra blocks in place; `"verify"`
 * plans copy the stream after block k − 1 and run the extra blocks on the copy; `"upper"` plans
 * run only blocks [k, depth).
 */
function exitSteps(
  model: ModelState,
  cache: KVCache,
  kind: PlanKind,
  training: boolean,
  n: number,
  layers: LayerActivations[],
  xFinal: GPUBuffer,
  activations: (l: number | string) => LayerActivations,
  input: (name: string, shape: number[]) => GPUBuffer,
): {
  steps: BlockStep[];
  exitLayers: LayerActivations[];
  exitLogits?: GPUBuffer;
  xExit?: GPUBuffer;
  xfExit?: GPUBuffer;
  rstdExit?: GPUBuffer;
} {
  const { config, weights } = model, depth = config.depth, k = config.earlyExitLayer;
  const E = weights.exitLayers.length, T = cache.batch * n, C = config.dim;
  if (kind !== "full" && k === 0) {
    throw new Error(`specdec: a "${kind}" forward plan needs a model with an exit head`);
  }
  if (training && kind !== "full") {
    throw new Error(`specdec: a training forward plan is "full", not "${kind}"`);
  }
  if (cache.layers.length < depth + E) {
    throw new Error(
      `specdec: the KV cache has ${cache.layers.length} layers, the model needs ${depth + E} ` +
        `(${depth} blocks and ${E} exit blocks): make it with the model's createCache`,
    );
  }
  const main = (l: number): BlockStep => ({
    w: weights.layers[l],
    kv: cache.layers[l],
    a: layers[training ? l : 0],
    next: training ? (l + 1 < depth ? layers[l + 1].x : xFinal) : layers[0].x,
  });
  const label = `${model.label} fwd B${cache.batch} n${n}`;
  const buf = (name: string, shape: number[]) => model.tensor(`${label} ${name}`, shape);
  const branch: BlockStep[] = [];
  const exitLayers: LayerActivations[] = [];
  let xExit: GPUBuffer | undefined;
  if (training && k > 0) {
    for (let j = 0; j < E; j++) exitLayers.push(activations(`e${j}`));
    if (E > 0) exitLayers[0].x = layers[k].x; // the branch reads the stream entering block k
    xExit = E > 0 ? buf("exit x", [T, C]) : layers[k].x;
    exitLayers.forEach((a, j) =>
      branch.push({
        w: weights.exitLayers[j],
        kv: cache.layers[depth + j],
        a,
        next: j + 1 < E ? exitLayers[j + 1].x : xExit!,
      })
    );
  } else if (kind === "draft") {
    weights.exitLayers.forEach((w, j) =>
      branch.push({ w, kv: cache.layers[depth + j], a: layers[0], next: layers[0].x })
    );
  } else if (kind === "verify" && E > 0) {
    const xe = input("exit x", [T, C]);
    const a = { ...layers[0], x: xe, xmid: xe };
    weights.exitLayers.forEach((w, j) =>
      branch.push({ w, kv: cache.layers[depth + j], a, next: xe })
    );
    // the copy: column sums of a one-row matrix
    branch[0].pre = sumRows(model.gpu, { x: layers[0].x, out: xe, M: 1, N: T * C });
  }
  const firstAbove = kind === "draft" ? depth : k;
  const steps = [
    ...Array.from({ length: kind === "upper" ? 0 : k > 0 ? k : depth }, (_, l) => main(l)),
    ...branch,
    ...Array.from({ length: k > 0 ? depth - firstAbove : 0 }, (_, i) => main(firstAbove + i)),
  ];
  if (!training || k === 0) return { steps, exitLayers };
  return {
    steps,
    exitLayers,
    exitLogits: buf("exit logits", [cache.batch, n, config.numTokens]),
    xExit,
    xfExit: buf("exit xf", [T, C]),
    rstdExit: buf("exit rstd", [T]),
  };
}

/** Most tokens per row of a forward that takes the fused path by default. */
export const FUSED_MAX_N = 16;

/**
 * Whether inference forwards of `n` tokens per row take the fused path by default: decode
 * steps, draft steps and verification (n ≤ {@link FUSED_MAX_N}), unless the environment sets
 * `SPECDEC_FUSED=0` (to compare with the unfused kernels side by side). Per-row results do not
 * depend on n or the batch on either path, and on software adapters both give the same bits.
 *
 * @param n tokens per row
 * @returns whether to fuse
 */
export function useFusedPath(n: number): boolean {
  return n <= FUSED_MAX_N && fusedEnv() !== "0";
}

/** `SPECDEC_FUSED` where an environment is readable without a prompt, else undefined. */
function fusedEnv(): string | undefined {
  const deno = (globalThis as { Deno?: typeof Deno }).Deno;
  try {
    const q = deno?.permissions.querySync({ name: "env", variable: "SPECDEC_FUSED" });
    return q?.state === "granted" ? deno!.env.get("SPECDEC_FUSED") : undefined;
  } catch {
    return undefined; // no environment: the default
  }
}
