/**
 * The whole Decoder in plain float64 TypeScript: the yardstick for the GPU model. Readable first:
 * one loop nest per op, shapes in comments. Parameters come as a name → values record using the
 * checkpoint names (torch layout, Linear weights `[out, in]`).
 */
import { geluRef, rmsNormRef } from "./ops.ts";
import { matmulNTRef } from "./matmul.ts";

/** Model shape for the reference. */
export interface RefConfig {
  numTokens: number;
  dim: number;
  depth: number;
  heads: number;
  dimHead: number;
  ffMult: number;
  /** The exit head's layer k (0 or absent: none). */
  earlyExitLayer?: number;
  /** The exit branch's extra blocks (default 0). */
  earlyExitExtraBlocks?: number;
}

type Arr = ArrayLike<number>;
type Params = Record<string, Arr>;

/** y (T, N) = x (T, K) · Wᵀ (+ bias (N)), W (N, K) as torch.nn.Linear stores it. */
const linear = (x: Float64Array, W: Arr, T: number, K: number, N: number, bias?: Arr) =>
  matmulNTRef(x, W, T, N, K, bias);

/** y (T, C) = x · rsqrt(mean(x²) + eps) · w, eps = float32 epsilon (torch's RMSNorm default). */
const rmsNorm = (x: Float64Array, w: Arr, T: number, C: number) => rmsNormRef(x, w, T, C).y;

/**
 * Reference forward: logits (B, n, V) for tokens (B × n), all positions starting at 0.
 *
 * @param p parameters by checkpoint name (`rotary_emb.inv_freq` used when present)
 * @param c model shape
 * @param tokens batch × n tokens
 * @returns logits, flat (B, n, V)
 */
export function decoderLogitsRef(p: Params, c: RefConfig, tokens: number[][]): Float64Array {
  return decoderHeadsRef(p, c, tokens).logits;
}

/**
 * Reference forward with both heads: the final logits and, for a model with an exit head, the
 * exit logits (B, n, V): the stream after block k, through the extra blocks
 * (`early_exit_transformer_blocks.{j}.*`), then `to_early_exit_logits` (RMSNorm, Linear).
 *
 * @param p parameters by checkpoint name
 * @param c model shape (with `earlyExitLayer`, `earlyExitExtraBlocks`)
 * @param tokens batch × n tokens
 * @returns `logits` and (with an exit head) `exitLogits`, flat (B, n, V)
 */
export function decoderHeadsRef(
  p: Params,
  c: RefConfig,
  tokens: number[][],
): { logits: Float64Array; exitLogits?: Float64Array } {
  const B = tokens.length, n = tokens[0].length, T = B * n;
  const C = c.dim, V = c.numTokens, k = c.earlyExitLayer ?? 0;

  // x (T, C) = token embedding
  let x = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const tok = tokens[Math.floor(t / n)][t % n];
    for (let j = 0; j < C; j++) x[t * C + j] = p["token_emb.weight"][tok * C + j];
  }
  let exitLogits: Float64Array | undefined;
  for (let l = 0; l < c.depth; l++) {
    if (l === k && k > 0) {
      // the exit branch reads the stream entering block k
      let xe = Float64Array.from(x);
      for (let j = 0; j < (c.earlyExitExtraBlocks ?? 0); j++) {
        xe = blockRef(xe, p, `early_exit_transformer_blocks.${j}`, c, B, n);
      }
      const xfe = rmsNorm(xe, p["to_early_exit_logits.0.weight"], T, C);
      exitLogits = linear(xfe, p["to_early_exit_logits.1.weight"], T, C, V);
    }
    x = blockRef(x, p, `layers.${l}`, c, B, n);
  }
  const xf = rmsNorm(x, p["to_logits.0.weight"], T, C);
  return { logits: linear(xf, p["to_logits.1.weight"], T, C, V), exitLogits };
}

/** One block `x += Attn(RMSNorm(x))`, `x += FF(x)` with the weights under `prefix`. */
function blockRef(
  xIn: Float64Array,
  p: Params,
  prefix: string,
  c: RefConfig,
  B: number,
  n: number,
): Float64Array<ArrayBuffer> {
  const T = B * n, C = c.dim, H = c.heads, D = c.dimHead, HD = H * D, F = c.ffMult * C;
  const half = D / 2;
  const inv = p["rotary_emb.inv_freq"] ??
    Array.from({ length: half }, (_, i) => Math.fround(1 / 10000 ** ((2 * i) / D)));
  let x = Float64Array.from(xIn);
  {
    // this block's weights, spelled out in torch's names here (independently of model/params.ts)
    const w = {
      norm: p[`${prefix}.0.norm.weight`], // (C)
      qkv: p[`${prefix}.0.to_qkv.weight`], // (3·H·D, C)
      attnOut: p[`${prefix}.0.to_out.weight`], // (C, H·D)
      ffNorm: p[`${prefix}.1.0.weight`], // (C)
      ffIn: p[`${prefix}.1.1.weight`], // (F, C)
      ffInBias: p[`${prefix}.1.1.bias`], // (F)
      ffOut: p[`${prefix}.1.3.weight`], // (C, F)
      ffOutBias: p[`${prefix}.1.3.bias`], // (C)
    };
    // attention block: x += attnOut(attn(rotary(qkv(norm(x)))))
    const xn = rmsNorm(x, w.norm, T, C);
    const qkv = linear(xn, w.qkv, T, C, 3 * HD); // (T, 3, H, D)
    // rotary on q (s=0) and k (s=1) at position i within the row; angle float32 like torch
    for (let t = 0; t < T; t++) {
      const pos = t % n;
      for (let s = 0; s < 2; s++) {
        for (let h = 0; h < H; h++) {
          const o = t * 3 * HD + s * HD + h * D;
          const v = qkv.slice(o, o + D);
          for (let d = 0; d < D; d++) {
            const f = Math.fround(pos * inv[d % half]);
            const rot = d < half ? -v[d + half] : v[d - half]; // rotate_half
            qkv[o + d] = v[d] * Math.cos(f) + rot * Math.sin(f);
          }
        }
      }
    }
    // causal softmax attention per (row, head), scores scaled by D^-0.5
    const att = new Float64Array(T * HD); // (T, H, D)
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < n; i++) {
          const q = (b * n + i) * 3 * HD + h * D;
          const s = new Float64Array(i + 1);
          let m = -Infinity;
          for (let j = 0; j <= i; j++) {
            const k = (b * n + j) * 3 * HD + HD + h * D;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += qkv[q + d] * qkv[k + d];
            s[j] = dot / Math.sqrt(D);
            m = Math.max(m, s[j]);
          }
          let z = 0;
          for (let j = 0; j <= i; j++) z += s[j] = Math.exp(s[j] - m);
          for (let j = 0; j <= i; j++) {
            const v = (b * n + j) * 3 * HD + 2 * HD + h * D;
            for (let d = 0; d < D; d++) {
              att[(b * n + i) * HD + h * D + d] += (s[j] / z) * qkv[v + d];
            }
          }
        }
      }
    }
    const o = linear(att, w.attnOut, T, HD, C);
    for (let i = 0; i < T * C; i++) x[i] += o[i];
    // feed-forward block: x += ffOut · gelu(ffIn · norm(x) + ffInBias) + ffOutBias
    const xn2 = rmsNorm(x, w.ffNorm, T, C);
    const h = geluRef(linear(xn2, w.ffIn, T, C, F, w.ffInBias));
    const y = linear(h, w.ffOut, T, F, C, w.ffOutBias);
    x = x.map((v, i) => v + y[i]);
  }
  return x;
}

/**
 * Reference loss: mean next-token cross-entropy over B × (n − 1) positions.
 *
 * @param p parameters
 * @param c model shape
 * @param tokens batch × n tokens
 * @returns the mean loss
 */
export function decoderLossRef(p: Params, c: RefConfig, tokens: number[][]): number {
  const { logits, exitLogits } = decoderHeadsRef(p, c, tokens);
  // with an exit head, the joint objective: the two heads' losses summed
  return meanCrossEntropyRef(logits, tokens, c.numTokens) +
    (exitLogits ? meanCrossEntropyRef(exitLogits, tokens, c.numTokens) : 0);
}

/** Mean next-token cross-entropy of logits (B, n, V) over B × (n − 1) positions. */
function meanCrossEntropyRef(logits: Float64Array, tokens: number[][], V: number): number {
  const B = tokens.length, n = tokens[0].length;
  let total = 0;
  for (let b = 0; b < B; b++) {
    for (let i = 0; i + 1 < n; i++) {
      const o = (b * n + i) * V;
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v]);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(logits[o + v] - m);
      total += Math.log(z) + m - logits[o + tokens[b][i + 1]];
    }
  }
  return total / (B * (n - 1));
}
