/**
 * The Decoder: the reference architecture (pre-RMSNorm, fused qkv, rotary, erf-GELU FF ×4, final
 * RMSNorm + linear) as a fixed list of WGSL dispatches over preallocated buffers.
 *
 * A {@link ForwardPlan} is built once per (KV cache, tokens per row) and encoded any number of
 * times: it reads its tokens and per-row start positions from GPU buffers, so decoding loops never
 * rebuild or rewrite anything per step.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { linear } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { add, gelu } from "../kernels/activation.ts";
import { embedding } from "../kernels/embedding.ts";
import { crossEntropy, IGNORE, sumLoss } from "../kernels/loss.ts";
import { rotary, rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { attention, kvWrite } from "../kernels/attention.ts";
import { type DecoderConfig, type FullDecoderConfig, resolveConfig } from "./config.ts";
import { KVCache } from "./kv_cache.ts";
import { initParams, paramSpecs } from "./params.ts";
import { readSafetensors, type Tensor, writeSafetensors } from "./checkpoint.ts";
import { backwardDispatches } from "./backward.ts";

/** Options for {@link Decoder.create}. */
export interface CreateOptions {
  /** Seed of the parameter initialisation (default 0). */
  seed?: number;
  /** Label prefix for GPU buffers (default "decoder"). */
  label?: string;
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
  /** The mean loss `(1)`, accumulated over micro-batches (clear it before a step). */
  loss: GPUBuffer;
  /** Forward + loss dispatches. */
  dispatches: Dispatch[];
  /** Backward dispatches (gradients accumulate into {@link Decoder.grads}), built on demand. */
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

/** Checks tokens: a non-empty batch of equal-length rows of integers in [0, numTokens). */
export function validateTokens(
  tokens: number[][],
  numTokens: number,
  maxSeqLen: number,
  what = "tokens",
): { batch: number; n: number } {
  if (!Array.isArray(tokens) || tokens.length === 0) {
    throw new Error(
      `specdec: ${what} must be a non-empty array of rows (number[][]), got an empty batch`,
    );
  }
  const n = Array.isArray(tokens[0]) ? tokens[0].length : -1;
  for (let b = 0; b < tokens.length; b++) {
    const row = tokens[b];
    if (!Array.isArray(row)) throw new Error(`specdec: ${what}[${b}] is not an array of tokens`);
    if (row.length !== n) {
      throw new Error(
        `specdec: ${what} rows must all have the same length; row 0 has ${n}, row ${b} has ${row.length}`,
      );
    }
    for (let i = 0; i < row.length; i++) {
      const t = row[i];
      if (!Number.isInteger(t) || t < 0 || t >= numTokens) {
        throw new Error(
          `specdec: ${what}[${b}][${i}] = ${t} is not a token: expected an integer in [0, ${numTokens})`,
        );
      }
    }
  }
  if (n === 0) throw new Error(`specdec: ${what} rows are empty`);
  if (n > maxSeqLen) {
    throw new Error(
      `specdec: ${what} rows have ${n} tokens, over the model's maxSeqLen ${maxSeqLen}`,
    );
  }
  return { batch: tokens.length, n };
}

/**
 * A decoder-only transformer on WebGPU, parameter-compatible with the reference PyTorch `Decoder`.
 *
 * @example
 * ```ts
 * import { Decoder, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 2 }, { seed: 0 });
 * const logits = await model.logits([[72, 105]]); // Float32Array (1, 2, 256)
 * const loss = await model.loss([[72, 105, 33]]);
 * const bytes = await model.toSafetensors();
 * const again = await Decoder.fromSafetensors(gpu, bytes);
 * ```
 */
export class Decoder {
  /** The runtime. */
  readonly gpu: Gpu;
  /** The full configuration. */
  readonly config: FullDecoderConfig;
  /** Parameters by checkpoint name, each an f32 buffer in torch layout. */
  readonly params: Map<string, GPUBuffer>;
  /** Rotary inverse frequencies `(D/2)` as the checkpoint stores them. */
  readonly invFreq: Float32Array;
  readonly #label: string;
  readonly #tables = new Map<number, { cos: GPUBuffer; sin: GPUBuffer }>();
  readonly #plans = new WeakMap<KVCache, Map<string, ForwardPlan>>();
  readonly #caches = new Map<string, KVCache>();
  readonly #lossPlans = new Map<string, LossPlan>();
  #grads?: Map<string, GPUBuffer>;
  /** Every buffer the model allocated (plans, tables, caches, gradients), freed by destroy(). */
  readonly #owned = new Set<GPUBuffer>();
  /** Serialises logits()/loss()/gradients(): they share per-shape plans and buffers. */
  #queue: Promise<unknown> = Promise.resolve();

  /** Allocates a buffer that {@link Decoder.destroy} frees. */
  #alloc = (label: string, bytes: number): GPUBuffer => {
    const b = this.gpu.buffer(label, bytes);
    this.#owned.add(b);
    return b;
  };

  /** Runs `fn` after every earlier call of this model's convenience methods has finished. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  private constructor(
    gpu: Gpu,
    config: FullDecoderConfig,
    values: Map<string, Float32Array<ArrayBuffer>>,
    invFreq: Float32Array,
    label: string,
  ) {
    this.gpu = gpu;
    this.config = config;
    this.#label = label;
    this.invFreq = invFreq;
    this.params = new Map();
    for (const spec of paramSpecs(config)) {
      const v = values.get(spec.name)!;
      this.params.set(spec.name, gpu.upload(`${label} ${spec.name} (${spec.shape.join(", ")})`, v));
    }
  }

  /**
   * Creates a model with PyTorch's default initialisation from a seeded generator.
   *
   * @param gpu the runtime
   * @param config model shape (`numTokens`, `dim`, `depth` required)
   * @param options seed and label
   * @returns the model
   * @example
   * ```ts
   * import { Decoder, requestGpu } from "@x/specdec";
   * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 512, depth: 2 }, { seed: 1 });
   * ```
   */
  static create(gpu: Gpu, config: DecoderConfig, options: CreateOptions = {}): Decoder {
    const c = resolveConfig(config);
    return new Decoder(
      gpu,
      c,
      initParams(c, options.seed ?? 0),
      rotaryInvFreq(c.dimHead),
      options.label ?? "decoder",
    );
  }

  /**
   * Loads a model from safetensors bytes with PyTorch state_dict names (F32, F16 or BF16). The
   * config is inferred from tensor shapes; `heads` from `to_qkv` and `dimHead` from
   * `rotary_emb.inv_freq` (or 64 when absent).
   *
   * @param gpu the runtime
   * @param bytes the safetensors file
   * @param options `maxSeqLen` and a label; `source` names the file in errors
   * @returns the model
   * @throws Error naming missing, unexpected or mis-shaped tensors
   * @example
   * ```ts
   * import { Decoder, requestGpu } from "@x/specdec";
   * const gpu = await requestGpu();
   * const model = await Decoder.fromSafetensors(gpu, await Deno.readFile("target.safetensors"));
   * ```
   */
  static async fromSafetensors(
    gpu: Gpu,
    bytes: Uint8Array,
    options: { maxSeqLen?: number; label?: string; source?: string } = {},
  ): Promise<Decoder> {
    const source = options.source ?? "checkpoint";
    const { tensors, metadata } = readSafetensors(bytes, source);
    const config = inferConfig(tensors, source, options.maxSeqLen, metadata);
    const values = new Map<string, Float32Array<ArrayBuffer>>();
    const expected = paramSpecs(config);
    const known = new Set(expected.map((s) => s.name));
    known.add("rotary_emb.inv_freq");
    const extra = [...tensors.keys()].filter((k) => !known.has(k));
    if (extra.length) {
      throw new Error(
        `specdec: ${source} has unexpected tensors: ${extra.slice(0, 5).join(", ")}` +
          `${extra.length > 5 ? ` (+${extra.length - 5} more)` : ""}`,
      );
    }
    for (const s of expected) {
      const t = tensors.get(s.name);
      if (!t) {
        throw new Error(`specdec: ${source} is missing tensor "${s.name}" (shape [${s.shape}])`);
      }
      if (t.shape.length !== s.shape.length || t.shape.some((d, i) => d !== s.shape[i])) {
        throw new Error(
          `specdec: ${source} tensor "${s.name}" has shape [${t.shape}], expected [${s.shape}]`,
        );
      }
      values.set(s.name, new Float32Array(t.data));
    }
    const inv = tensors.get("rotary_emb.inv_freq")?.data ?? rotaryInvFreq(config.dimHead);
    return await Promise.resolve(new Decoder(gpu, config, values, inv, options.label ?? "decoder"));
  }

  /**
   * Serialises the parameters as safetensors with PyTorch state_dict names (F32), including
   * `rotary_emb.inv_freq`, loadable by `torch` + `safetensors` into the reference `Decoder`.
   *
   * @returns the file's bytes
   */
  async toSafetensors(): Promise<Uint8Array<ArrayBuffer>> {
    const tensors: Record<string, Tensor> = {};
    const specs = paramSpecs(this.config);
    const values = await this.gpu.readManyF32(specs.map((s) => this.params.get(s.name)!));
    specs.forEach((s, i) => tensors[s.name] = { shape: s.shape, data: values[i] });
    tensors["rotary_emb.inv_freq"] = { shape: [this.invFreq.length], data: this.invFreq };
    const c = this.config;
    return writeSafetensors(tensors, {
      format: "pt",
      specdec: JSON.stringify({ heads: c.heads, dimHead: c.dimHead, ffMult: c.ffMult }),
    });
  }

  /** Parameter values read back from the GPU, by checkpoint name. */
  async paramValues(): Promise<Record<string, Float32Array>> {
    const names = [...this.params.keys()];
    const values = await this.gpu.readManyF32(names.map((n) => this.params.get(n)!));
    return Object.fromEntries(names.map((n, i) => [n, values[i]]));
  }

  /** Rotary cos/sin tables `(maxLen, D/2)`, one pair per length. */
  #rotaryTables(maxLen: number): { cos: GPUBuffer; sin: GPUBuffer } {
    let t = this.#tables.get(maxLen);
    if (!t) {
      const { cos, sin } = rotaryTable(maxLen, this.invFreq);
      const shape = `(${maxLen}, ${this.config.dimHead / 2})`;
      t = {
        cos: this.gpu.upload(`${this.#label} rotary cos ${shape}`, new Float32Array(cos)),
        sin: this.gpu.upload(`${this.#label} rotary sin ${shape}`, new Float32Array(sin)),
      };
      this.#owned.add(t.cos).add(t.sin);
      this.#tables.set(maxLen, t);
    }
    return t;
  }

  /**
   * Allocates a KV cache for `batch` rows of up to `maxLen` positions.
   *
   * @param batch rows
   * @param maxLen positions per row (≤ maxSeqLen plus a few in-flight positions)
   * @returns the cache
   */
  createCache(batch: number, maxLen: number): KVCache {
    const c = this.config;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new Error(`specdec: batch must be a positive integer, got ${batch}`);
    }
    if (!Number.isInteger(maxLen) || maxLen < 1) {
      throw new Error(`specdec: cache length must be a positive integer, got ${maxLen}`);
    }
    return new KVCache(this.gpu, c.depth, c.heads, c.dimHead, batch, maxLen, `${this.#label} kv`);
  }

  /**
   * Builds (once) the dispatches of a forward pass of `n` tokens per row into `cache`.
   *
   * @param cache where keys and values go (its batch is the plan's batch)
   * @param n tokens per row
   * @param training keep every layer's activations for {@link Decoder.gradients}
   * @returns the plan (cached per cache, n and mode)
   */
  forwardPlan(cache: KVCache, n: number, training = false): ForwardPlan {
    let plans = this.#plans.get(cache);
    if (!plans) this.#plans.set(cache, plans = new Map());
    const key = `${n}:${training}`;
    let plan = plans.get(key);
    if (!plan) plans.set(key, plan = this.#buildPlan(cache, n, training));
    return plan;
  }

  #buildPlan(cache: KVCache, n: number, training: boolean): ForwardPlan {
    const gpu = this.gpu, c = this.config, P = (k: string) => this.params.get(k)!;
    const B = cache.batch, T = B * n, C = c.dim, H = c.heads, D = c.dimHead;
    const HD = H * D, F = c.ffMult * C, V = c.numTokens, maxLen = cache.maxLen;
    const L = `${this.#label} fwd B${B} n${n}`;
    const buf = (name: string, shape: number[]) =>
      this.#alloc(`${L} ${name} (${shape.join(", ")})`, shape.reduce((a, b) => a * b, 1) * 4);
    const tokens = buf("tokens u32", [B, n]);
    const start = buf("start u32", [B]);
    const logits = buf("logits", [B, n, V]);
    const stream = training ? null : buf("x", [T, C]);
    const act = (l: number): LayerActivations => ({
      x: stream ?? buf(`l${l} x`, [T, C]),
      xn: buf(`l${l} xn`, [T, C]),
      rstd: buf(`l${l} rstd`, [T]),
      qkv: buf(`l${l} qkv`, [T, 3, H, D]),
      att: buf(`l${l} att`, [T, HD]),
      lse: buf(`l${l} lse`, [B, H, n]),
      xmid: stream ?? buf(`l${l} xmid`, [T, C]),
      xn2: buf(`l${l} xn2`, [T, C]),
      rstd2: buf(`l${l} rstd2`, [T]),
      h: buf(`l${l} h`, [T, F]),
      a: buf(`l${l} a`, [T, F]),
    });
    const layers = training ? Array.from({ length: c.depth }, (_, l) => act(l)) : [act(0)];
    const xFinal = stream ?? buf("x final", [T, C]);
    const xf = buf("xf", [T, C]);
    const rstdF = buf("rstd final", [T]);
    const { cos, sin } = this.#rotaryTables(maxLen);

    const d: Dispatch[] = [];
    d.push(embedding(gpu, { tokens, table: P("token_emb.weight"), out: layers[0].x, T, C }));
    for (let l = 0; l < c.depth; l++) {
      const a = layers[training ? l : 0];
      const next = training ? (l + 1 < c.depth ? layers[l + 1].x : xFinal) : a.x;
      const p = `layers.${l}`;
      d.push(
        rmsNorm(gpu, { x: a.x, weight: P(`${p}.0.norm.weight`), y: a.xn, rstd: a.rstd, T, C }),
      );
      d.push(
        linear(gpu, { a: a.xn, b: P(`${p}.0.to_qkv.weight`), c: a.qkv, M: T, N: 3 * HD, K: C }),
      );
      d.push(rotary(gpu, { qkv: a.qkv, cos, sin, start, B, n, H, D, maxLen }));
      d.push(kvWrite(gpu, { qkv: a.qkv, kv: cache.layers[l], start, B, n, H, D, maxLen }));
      d.push(
        attention(gpu, {
          qkv: a.qkv,
          kv: cache.layers[l],
          start,
          out: a.att,
          lse: a.lse,
          B,
          n,
          H,
          D,
          maxLen,
        }),
      );
      if (training) {
        // xmid = x + att·Woutᵀ, into a fresh buffer so x survives for the backward pass
        d.push(
          linear(gpu, { a: a.att, b: P(`${p}.0.to_out.weight`), c: a.xmid, M: T, N: C, K: HD }),
        );
        d.push(add(gpu, { x: a.xmid, y: a.x, n: T * C }));
      } else {
        d.push(
          linear(gpu, {
            a: a.att,
            b: P(`${p}.0.to_out.weight`),
            c: a.x,
            M: T,
            N: C,
            K: HD,
            accumulate: true,
          }),
        );
      }
      d.push(
        rmsNorm(gpu, { x: a.xmid, weight: P(`${p}.1.0.weight`), y: a.xn2, rstd: a.rstd2, T, C }),
      );
      d.push(
        linear(gpu, {
          a: a.xn2,
          b: P(`${p}.1.1.weight`),
          bias: P(`${p}.1.1.bias`),
          c: a.h,
          M: T,
          N: F,
          K: C,
        }),
      );
      d.push(gelu(gpu, { x: a.h, y: a.a, n: T * F }));
      if (training) {
        d.push(
          linear(gpu, {
            a: a.a,
            b: P(`${p}.1.3.weight`),
            bias: P(`${p}.1.3.bias`),
            c: next,
            M: T,
            N: C,
            K: F,
          }),
        );
        d.push(add(gpu, { x: next, y: a.xmid, n: T * C }));
      } else {
        d.push(linear(gpu, {
          a: a.a,
          b: P(`${p}.1.3.weight`),
          bias: P(`${p}.1.3.bias`),
          c: a.x,
          M: T,
          N: C,
          K: F,
          accumulate: true,
        }));
      }
    }
    d.push(rmsNorm(gpu, { x: xFinal, weight: P("to_logits.0.weight"), y: xf, rstd: rstdF, T, C }));
    d.push(linear(gpu, { a: xf, b: P("to_logits.1.weight"), c: logits, M: T, N: V, K: C }));
    return {
      cache,
      batch: B,
      n,
      training,
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

  /** A cache of exactly (batch, n) reused by logits()/loss() for that shape. */
  #scratchCache(batch: number, n: number): KVCache {
    const key = `${batch}x${n}`;
    let cache = this.#caches.get(key);
    if (!cache) this.#caches.set(key, cache = this.createCache(batch, n));
    return cache;
  }

  /** Uploads tokens (validated) and zero starts into a plan. */
  #feed(plan: ForwardPlan, tokens: number[][]): void {
    const flat = new Uint32Array(plan.batch * plan.n);
    tokens.forEach((row, b) => flat.set(row, b * plan.n));
    this.gpu.write(plan.tokens, flat);
    this.gpu.write(plan.start, new Uint32Array(plan.batch));
  }

  /**
   * Full forward pass (no cache reuse): logits for every position.
   *
   * @param tokens batch × n tokens, integers in [0, numTokens)
   * @returns flat Float32Array `(batch, n, numTokens)`
   * @throws Error on empty, ragged, out-of-range or too long input
   */
  async logits(tokens: number[][]): Promise<Float32Array> {
    const { batch, n } = validateTokens(tokens, this.config.numTokens, this.config.maxSeqLen);
    return await this.#exclusive(async () => {
      const plan = await this.gpu.scoped("Decoder.logits", () => {
        const plan = this.forwardPlan(this.#scratchCache(batch, n), n);
        this.#feed(plan, tokens);
        this.gpu.run(`${this.#label} logits`, plan.dispatches);
        return plan;
      });
      return await this.gpu.readF32(plan.logits, batch * n * this.config.numTokens);
    });
  }

  /**
   * Builds (once per shape) the forward + cross-entropy dispatches.
   *
   * @param batch rows
   * @param n tokens per row
   * @param lossScale multiplier on the mean loss (and its gradient)
   * @param training keep activations and write dLogits for a backward pass (else evaluation only)
   * @returns the plan
   */
  lossPlan(batch: number, n: number, lossScale = 1, training = true): LossPlan {
    const key = `${batch}x${n}x${lossScale}x${training}`;
    let lp = this.#lossPlans.get(key);
    if (lp) return lp;
    const gpu = this.gpu, V = this.config.numTokens, T = batch * n;
    const plan = this.forwardPlan(this.#scratchCache(batch, n), n, training);
    const L = `${this.#label} loss B${batch} n${n}`;
    const targets = this.#alloc(`${L} targets u32 (${T})`, T * 4);
    const losses = this.#alloc(`${L} losses (${T})`, T * 4);
    const dLogits = training ? this.#alloc(`${L} dlogits (${T}, ${V})`, T * V * 4) : undefined;
    const loss = this.#alloc(`${L} loss (1)`, 4);
    const count = batch * (n - 1) / lossScale;
    const dispatches = [
      ...plan.dispatches,
      crossEntropy(gpu, { logits: plan.logits, targets, losses, dLogits, T, V, scale: 1 / count }),
      // accumulates over micro-batches: whoever runs the plan clears `loss` first
      sumLoss(gpu, { losses, out: loss, T, scale: 1 / count, accumulate: true }),
    ];
    lp = { plan, targets, losses, dLogits, loss, dispatches };
    this.#lossPlans.set(key, lp);
    return lp;
  }

  /** Uploads tokens and next-token targets (last position of each row ignored). */
  feedLoss(lp: LossPlan, tokens: number[][]): void {
    this.#feed(lp.plan, tokens);
    this.gpu.write(lp.targets, nextTokenTargets(tokens, lp.plan.n));
  }

  /**
   * Mean next-token cross-entropy over all `batch × (n − 1)` positions, like the reference's
   * `return_loss=True`.
   *
   * @param tokens batch × n tokens (n ≥ 2)
   * @returns the mean loss
   */
  async loss(tokens: number[][]): Promise<number> {
    const { batch, n } = validateTokens(tokens, this.config.numTokens, this.config.maxSeqLen);
    if (n < 2) throw new Error(`specdec: loss needs at least 2 tokens per row, got ${n}`);
    return await this.#exclusive(async () => {
      const lp = await this.gpu.scoped("Decoder.loss", () => {
        const lp = this.lossPlan(batch, n, 1, false);
        this.feedLoss(lp, tokens);
        this.gpu.run(`${this.#label} loss`, lp.dispatches, undefined, [lp.loss]);
        return lp;
      });
      return (await this.gpu.readF32(lp.loss, 1))[0];
    });
  }

  /** Gradient buffers by checkpoint name, same shapes as the parameters (allocated on first use). */
  get grads(): Map<string, GPUBuffer> {
    if (!this.#grads) {
      this.#grads = new Map();
      for (const s of paramSpecs(this.config)) {
        const bytes = s.shape.reduce((a, b) => a * b, 1) * 4;
        this.#grads.set(
          s.name,
          this.#alloc(`${this.#label} grad ${s.name} (${s.shape.join(", ")})`, bytes),
        );
      }
    }
    return this.#grads;
  }

  /**
   * The loss plan of (batch, n) with its backward dispatches built.
   *
   * @param batch rows per micro-batch
   * @param n tokens per row
   * @param lossScale multiplier on the mean loss and its gradient: 1 for one batch, 1/N for N
   *   accumulated micro-batches (as the reference divides each micro-batch loss by N)
   * @returns the plan; `dispatches` then `backward` run forward, loss and backward
   */
  trainingPlan(batch: number, n: number, lossScale = 1): LossPlan {
    const lp = this.lossPlan(batch, n, lossScale);
    lp.backward ??= backwardDispatches(
      this.#alloc,
      this.gpu,
      this.config,
      this.params,
      this.grads,
      lp.plan,
      lp.dLogits!,
    );
    return lp;
  }

  /** Encodes clearing every gradient buffer (zeroGrad). */
  encodeZeroGrad(encoder: GPUCommandEncoder): void {
    for (const g of this.grads.values()) encoder.clearBuffer(g);
  }

  /**
   * Gradients of the mean next-token cross-entropy for every parameter.
   *
   * @param tokens batch × n tokens (n ≥ 2)
   * @returns gradients by checkpoint name (torch layout)
   * @example
   * ```ts
   * import { Decoder, requestGpu } from "@x/specdec";
   * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 64, depth: 1 });
   * const g = await model.gradients([[1, 2, 3, 4]]);
   * console.log(g["token_emb.weight"].length); // 256 * 64
   * ```
   */
  async gradients(tokens: number[][]): Promise<Record<string, Float32Array>> {
    const { batch, n } = validateTokens(tokens, this.config.numTokens, this.config.maxSeqLen);
    if (n < 2) throw new Error(`specdec: gradients need at least 2 tokens per row, got ${n}`);
    return await this.#exclusive(async () => {
      await this.gpu.scoped("Decoder.gradients", () => {
        const lp = this.trainingPlan(batch, n);
        this.feedLoss(lp, tokens);
        this.gpu.run(`${this.#label} gradients`, [...lp.dispatches, ...lp.backward!], undefined, [
          lp.loss,
          ...this.grads.values(),
        ]);
      });
      const names = [...this.grads.keys()];
      const values = await this.gpu.readManyF32(names.map((n) => this.grads.get(n)!));
      return Object.fromEntries(names.map((n, i) => [n, values[i]]));
    });
  }

  /**
   * Frees every GPU buffer the model allocated: parameters, gradients, plans' activations, rotary
   * tables and caches (dispatches' small uniform buffers are left to the garbage collector). The
   * model is unusable afterwards.
   */
  destroy(): void {
    for (const b of this.params.values()) b.destroy();
    for (const c of this.#caches.values()) c.destroy();
    for (const b of this.#owned) b.destroy();
    this.#owned.clear();
  }
}

/** Infers a config from checkpoint tensor shapes. */
function inferConfig(
  tensors: Map<string, Tensor>,
  source: string,
  maxSeqLen?: number,
  metadata: Record<string, string> = {},
): FullDecoderConfig {
  const need = (name: string): Tensor => {
    const t = tensors.get(name);
    if (!t) throw new Error(`specdec: ${source} is missing tensor "${name}"`);
    return t;
  };
  const emb = need("token_emb.weight");
  if (emb.shape.length !== 2) {
    throw new Error(
      `specdec: ${source} tensor "token_emb.weight" has shape [${emb.shape}], expected [numTokens, dim]`,
    );
  }
  const [numTokens, dim] = emb.shape;
  let depth = 0;
  while (
    tensors.has(`layers.${depth}.0.norm.weight`) || tensors.has(`layers.${depth}.0.to_qkv.weight`)
  ) depth++;
  if (depth === 0) {
    throw new Error(`specdec: ${source} has no layers ("layers.0.0.to_qkv.weight" missing)`);
  }
  const inv = tensors.get("rotary_emb.inv_freq");
  // dimHead: from rotary_emb.inv_freq, else from the metadata specdec writes, else the default 64
  let saved: { dimHead?: number } = {};
  try {
    saved = JSON.parse(metadata.specdec ?? "{}");
  } catch { /* foreign metadata: ignore */ }
  const dimHead = inv ? 2 * inv.data.length : (saved.dimHead ?? 64);
  const qkv = need("layers.0.0.to_qkv.weight");
  const inner = qkv.shape[0] / 3;
  const heads = inner / dimHead;
  if (!Number.isInteger(heads) || heads < 1) {
    throw new Error(
      `specdec: ${source} tensor "layers.0.0.to_qkv.weight" has shape [${qkv.shape}], which is not ` +
        `[3·heads·${dimHead}, ${dim}] for dimHead ${dimHead} (from rotary_emb.inv_freq)`,
    );
  }
  const ff = need("layers.0.1.1.weight");
  const ffMult = ff.shape[0] / dim;
  if (!Number.isInteger(ffMult) || ffMult < 1) {
    throw new Error(
      `specdec: ${source} tensor "layers.0.1.1.weight" has shape [${ff.shape}], not [ffMult·${dim}, ${dim}]`,
    );
  }
  return resolveConfig({
    numTokens,
    dim,
    depth,
    heads,
    dimHead,
    ffMult,
    maxSeqLen: maxSeqLen ?? 4096,
  });
}
