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
import { linear } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { add, gelu } from "../kernels/activation.ts";
import { embedding } from "../kernels/embedding.ts";
import { rotary } from "../kernels/rotary.ts";
import { attention, kvWrite } from "../kernels/attention.ts";
import { fusedLinear, fusedLinearSupported, STORAGE_UNIFORM } from "../kernels/fused_linear.ts";
import { attentionDecode, kvTextureWrite } from "../kernels/attention_decode.ts";
import type { KVCache } from "./kv_cache.ts";
import type { ModelState } from "./state.ts";

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
  /** Output logits, f32 `(B, n, V)`. */
  logits: GPUBuffer;
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
 * @returns the plan
 */
export function buildForwardPlan(
  model: ModelState,
  cache: KVCache,
  n: number,
  training: boolean,
  fused?: boolean,
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
  const activations = (l: number): LayerActivations => ({
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
  const { cos, sin } = model.rotaryTables(maxLen);
  const useFused = !training && (fused ?? useFusedPath(n)) &&
    fusedLinearSupported(C, 3 * HD, D) && fusedLinearSupported(C, F) &&
    fusedLinearSupported(HD, C) && fusedLinearSupported(F, C);

  const d: Dispatch[] = [];
  d.push(embedding(gpu, { tokens, table: weights.tokenEmbedding, out: layers[0].x, T, C }));
  for (let l = 0; useFused && l < config.depth; l++) {
    const w = weights.layers[l], a = layers[0], kv = cache.layers[l], x = a.x;
    // the cache's texture copy (software adapters): the decode attention reads K/V from it
    const kvTex = cache.textures?.[l];
    // x += attention(rotary(norm(x)·qkvᵀ)) · attnOutᵀ: k, v straight into the cache
    d.push(fusedLinear(gpu, {
      x,
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
    d.push(fusedLinear(gpu, {
      x: a.a,
      w: w.ffOut,
      wTex: model.weightTexture(w.ffOut, C, F),
      M: T,
      N: C,
      K: F,
      epilogue: { kind: "accumulate", bias: w.ffOutBias, out: x },
    }));
  }
  for (let l = 0; !useFused && l < config.depth; l++) {
    const w = weights.layers[l], a = layers[training ? l : 0], kv = cache.layers[l];
    const next = training ? (l + 1 < config.depth ? layers[l + 1].x : xFinal) : a.x;
    // attention block: x += att · attnOutᵀ, att = attention(rotary(norm(x) · qkvᵀ))
    d.push(rmsNorm(gpu, { x: a.x, weight: w.norm, y: a.xn, rstd: a.rstd, T, C }));
    d.push(linear(gpu, { a: a.xn, b: w.qkv, c: a.qkv, M: T, N: 3 * HD, K: C }));
    d.push(rotary(gpu, { qkv: a.qkv, cos, sin, start, B, n, H, D, maxLen }));
    d.push(kvWrite(gpu, { qkv: a.qkv, kv, start, B, n, H, D, maxLen }));
    // keep the cache's texture copy in step: a later fused step reads it
    const kvTex = cache.textures?.[l];
    if (kvTex) d.push(kvTextureWrite(gpu, { qkv: a.qkv, kvTex, start, B, n, H, D, maxLen }));
    d.push(
      attention(gpu, { qkv: a.qkv, kv, start, out: a.att, lse: a.lse, B, n, H, D, maxLen }),
    );
    if (training) {
      // xmid = x + att·attnOutᵀ, into a fresh buffer so x survives for the backward pass
      d.push(linear(gpu, { a: a.att, b: w.attnOut, c: a.xmid, M: T, N: C, K: HD }));
      d.push(add(gpu, { x: a.xmid, y: a.x, n: T * C }));
    } else {
      d.push(
        linear(gpu, { a: a.att, b: w.attnOut, c: a.x, M: T, N: C, K: HD, accumulate: true }),
      );
    }
    // feed-forward block: next = xmid + gelu(norm(xmid) · ffInᵀ + ffInBias) · ffOutᵀ + ffOutBias
    d.push(rmsNorm(gpu, { x: a.xmid, weight: w.ffNorm, y: a.xn2, rstd: a.rstd2, T, C }));
    d.push(
      linear(gpu, { a: a.xn2, b: w.ffIn, bias: w.ffInBias, c: a.h, M: T, N: F, K: C }),
    );
    d.push(gelu(gpu, { x: a.h, y: a.a, n: T * F }));
    if (training) {
      d.push(linear(gpu, { a: a.a, b: w.ffOut, bias: w.ffOutBias, c: next, M: T, N: C, K: F }));
      d.push(add(gpu, { x: next, y: a.xmid, n: T * C }));
    } else {
      d.push(linear(gpu, {
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
  if (useFused && fusedLinearSupported(C, V)) {
    d.push(fusedLinear(gpu, {
      x: xFinal,
      norm: weights.finalNorm,
      w: weights.logitsWeight,
      wTex: model.weightTexture(weights.logitsWeight, V, C),
      M: T,
      N: V,
      K: C,
      epilogue: { kind: "none", out: logits },
    }));
  } else {
    d.push(rmsNorm(gpu, { x: xFinal, weight: weights.finalNorm, y: xf, rstd: rstdF, T, C }));
    d.push(linear(gpu, { a: xf, b: weights.logitsWeight, c: logits, M: T, N: V, K: C }));
  }
  if (useFused) {
    // the weight textures the fused GEMVs read are copied again, when the weights may have
    // changed, as the plan's first dispatch is encoded (a separate submit queued before it)
    const first = d[0];
    d[0] = {
      label: first.label,
      pipeline: first.pipeline,
      bindGroup: first.bindGroup,
      get workgroups(): [number, number, number] {
        model.syncWeightTextures();
        return first.workgroups;
      },
    };
  }
  return {
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
