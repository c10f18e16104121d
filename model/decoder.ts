/**
 * The Decoder: the reference architecture (pre-RMSNorm, fused qkv, rotary, erf-GELU FF ×4, final
 * RMSNorm + linear) on WebGPU, as a thin facade over its parts:
 *
 * - state.ts: parameters and gradients (by role, see params.ts), rotary tables, owned buffers;
 * - forward_plan.ts, loss_plan.ts, backward.ts: the fixed dispatch lists, built once per shape;
 * - checkpoint.ts: safetensors with PyTorch state_dict names, config inferred from shapes;
 * - cache_pool.ts: the decode KV caches, reused across decodes and freed by `destroy()`.
 *
 * The Decoder caches plans per shape, serialises its convenience calls (logits, loss, gradients),
 * and frees everything in {@link Decoder.destroy}.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { type DecoderConfig, type FullDecoderConfig, resolveConfig } from "./config.ts";
import { KVCache } from "./kv_cache.ts";
import { initParams, type ModelWeights } from "./params.ts";
import { type CheckpointOptions, readModelCheckpoint, writeModelCheckpoint } from "./checkpoint.ts";
import { ModelState } from "./state.ts";
import { buildForwardPlan, type ForwardPlan, type PlanKind } from "./forward_plan.ts";
import { buildLossPlan, type LossPlan, nextTokenTargets } from "./loss_plan.ts";
import { backwardDispatches } from "./backward.ts";
import { CachePool } from "./cache_pool.ts";

// the plan types, re-exported for modules that import them with the Decoder (decoding.ts)
export type { ForwardPlan, LayerActivations, PlanKind } from "./forward_plan.ts";
export type { LossPlan } from "./loss_plan.ts";

/** Options for {@link Decoder.create}. */
export interface CreateOptions {
  /** Seed of the parameter initialisation (default 0). */
  seed?: number;
  /** Label prefix for GPU buffers (default "decoder"). */
  label?: string;
}

/**
 * Checks tokens: a non-empty batch of equal-length rows of integers in [0, numTokens).
 *
 * @param tokens the batch (anything: it is checked)
 * @param numTokens the vocabulary size
 * @param maxSeqLen the longest row accepted
 * @param what the argument's name in messages ("tokens", "prompt")
 * @returns the batch size and the row length
 * @throws Error naming the argument, the row and the position, with the value it got
 */
export function validateTokens(
  tokens: number[][],
  numTokens: number,
  maxSeqLen: number,
  what = "tokens",
): { batch: number; n: number } {
  if (!Array.isArray(tokens)) {
    throw new Error(
      `specdec: ${what} must be an array of rows (number[][]), got ${describeInput(tokens)}`,
    );
  }
  if (tokens.length === 0) {
    throw new Error(
      `specdec: ${what} must be a non-empty array of rows (number[][]), got an empty batch`,
    );
  }
  const n = Array.isArray(tokens[0]) ? tokens[0].length : -1;
  for (let b = 0; b < tokens.length; b++) {
    const row = tokens[b];
    if (!Array.isArray(row)) {
      throw new Error(
        `specdec: ${what} must be an array of rows (number[][]); ${what}[${b}] is ` +
          `${describeInput(row)}, not an array of tokens`,
      );
    }
    if (row.length !== n) {
      throw new Error(
        `specdec: ${what} rows must all have the same length; row 0 has ${n}, row ${b} has ${row.length}`,
      );
    }
    for (let i = 0; i < row.length; i++) {
      const t = row[i];
      if (!Number.isInteger(t) || t < 0 || t >= numTokens) {
        throw new Error(
          `specdec: ${what}[${b}][${i}] = ${
            describeToken(t)
          } is not a token: expected an integer ` +
            `in [0, ${numTokens})`,
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

/** A value as messages print it: strings quoted, arrays and objects as (clipped) JSON. */
function describeInput(v: unknown): string {
  if (typeof v === "string") return `string ${clip(JSON.stringify(v))}`;
  if (v === null || v === undefined) return String(v);
  if (typeof v === "object") {
    let json: string | undefined;
    try {
      json = JSON.stringify(v);
    } catch { /* cyclic: the kind is enough */ }
    return `${v.constructor?.name ?? "object"}${json === undefined ? "" : ` ${clip(json)}`}`;
  }
  return `${typeof v} ${String(v)}`;
}

/** A token value: numbers as they are, anything else with its kind (strings quoted). */
function describeToken(t: unknown): string {
  return typeof t === "number" ? String(t) : describeInput(t);
}

function clip(s: string, max = 40): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
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
  /** The decode KV caches, reused across decodes; {@link Decoder.destroy} frees them. */
  readonly caches: CachePool;
  readonly #state: ModelState;
  readonly #plans = new WeakMap<KVCache, Map<string, ForwardPlan>>();
  /** Caches of exactly (batch, n) for logits()/loss()/gradients(), by shape. */
  readonly #scratchCaches = new Map<string, KVCache>();
  readonly #lossPlans = new Map<string, LossPlan>();
  /** Serialises logits()/loss()/gradients(): they share per-shape plans and buffers. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(state: ModelState) {
    this.#state = state;
    this.gpu = state.gpu;
    this.config = state.config;
    this.caches = new CachePool((batch, maxLen) => this.createCache(batch, maxLen));
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
    const full = resolveConfig(config);
    const values = initParams(full, options.seed ?? 0);
    return new Decoder(new ModelState(gpu, full, values, undefined, options.label ?? "decoder"));
  }

  /**
   * Loads a model from safetensors bytes with PyTorch state_dict names (F32, F16, BF16 or F64),
   * checking the file strictly (see `readSafetensors`). The config is inferred from tensor
   * shapes; heads × dimHead split `to_qkv` by `rotary_emb.inv_freq`, the `heads`/`dimHead`
   * options, or the metadata specdec writes; a file with none of them whose shapes allow several
   * splits is refused with the list (pass `heads` or `dimHead`). Weights that are NaN or ±Infinity
   * are refused unless `allowNonFinite` (then one console.warn names them).
   *
   * @param gpu the runtime
   * @param bytes the safetensors file
   * @param options `maxSeqLen`, `heads`, `dimHead`, `allowNonFinite` (see
   *   {@link CheckpointOptions}) and a buffer label; `source` names the file in errors
   * @returns the model
   * @throws Error naming the file and the tensor: an invalid safetensors file, missing,
   *   unexpected, mis-shaped or non-finite tensors, or a heads × dimHead split it cannot infer
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
    options: CheckpointOptions & { label?: string } = {},
  ): Promise<Decoder> {
    const { config, values, invFreq } = readModelCheckpoint(bytes, options);
    const state = new ModelState(gpu, config, values, invFreq, options.label ?? "decoder");
    return await Promise.resolve(new Decoder(state));
  }

  /**
   * Serialises the parameters as safetensors with PyTorch state_dict names (F32), including
   * `rotary_emb.inv_freq`, loadable by `torch` + `safetensors` into the reference `Decoder`.
   *
   * @returns the file's bytes
   */
  async toSafetensors(): Promise<Uint8Array<ArrayBuffer>> {
    const values = await this.gpu.readManyF32([...this.params.values()]);
    return writeModelCheckpoint(this.config, values, this.invFreq);
  }

  /** Parameters by checkpoint name (in checkpoint order), each an f32 buffer in torch layout. */
  get params(): Map<string, GPUBuffer> {
    return this.#state.params;
  }

  /** The same parameter buffers by role (`weights.layers[i].qkv`, …). */
  get weights(): ModelWeights<GPUBuffer> {
    return this.#state.weights;
  }

  /** Rotary inverse frequencies `(D/2)` as the checkpoint stores them. */
  get invFreq(): Float32Array {
    return this.#state.invFreq;
  }

  /** Gradient buffers by checkpoint name, same shapes as the parameters (allocated on first use). */
  get grads(): Map<string, GPUBuffer> {
    return this.#state.grads;
  }

  /**
   * Parameter values read back from the GPU, by checkpoint name.
   *
   * @returns the values (torch layout)
   */
  async paramValues(): Promise<Record<string, Float32Array>> {
    return await this.#readAll(this.params);
  }

  /** Reads every buffer of a by-name map. */
  async #readAll(buffers: Map<string, GPUBuffer>): Promise<Record<string, Float32Array>> {
    const names = [...buffers.keys()];
    const values = await this.gpu.readManyF32(names.map((name) => buffers.get(name)!));
    return Object.fromEntries(names.map((name, i) => [name, values[i]]));
  }

  /**
   * Allocates a KV cache for `batch` rows of up to `maxLen` positions (the caller frees it; see
   * {@link Decoder.caches} for pooled ones).
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
    const label = `${this.#state.label} kv`;
    // the exit branch's extra blocks keep their keys and values after the model's blocks
    const layers = c.depth + (c.earlyExitLayer > 0 ? c.earlyExitExtraBlocks : 0);
    return new KVCache(this.gpu, layers, c.heads, c.dimHead, batch, maxLen, label);
  }

  /**
   * Builds (once) the dispatches of a forward pass of `n` tokens per row into `cache`.
   *
   * @param cache where keys and values go (its batch is the plan's batch)
   * @param n tokens per row
   * @param training keep every layer's activations for {@link Decoder.gradients}
   * @param kind what it computes, for a model with an exit head: `"full"` (default), `"draft"`
   *   (blocks below the exit, the extra blocks and the exit head), `"verify"` or `"upper"`
   *   (blocks from the exit on, over a stream the caller writes; see {@link PlanKind})
   * @returns the plan (cached per cache, n, mode and kind)
   */
  forwardPlan(cache: KVCache, n: number, training = false, kind: PlanKind = "full"): ForwardPlan {
    let plans = this.#plans.get(cache);
    if (!plans) this.#plans.set(cache, plans = new Map());
    const key = `${n}:${training}:${kind}`;
    let plan = plans.get(key);
    if (!plan) {
      plan = buildForwardPlan(this.#state, cache, n, training, undefined, kind);
      plans.set(key, plan);
    }
    return plan;
  }

  /** A cache of exactly (batch, n) reused by logits()/loss() for that shape. */
  #scratchCache(batch: number, n: number): KVCache {
    const key = `${batch}x${n}`;
    let cache = this.#scratchCaches.get(key);
    if (!cache) this.#scratchCaches.set(key, cache = this.createCache(batch, n));
    return cache;
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
    if (!lp) {
      // with an exit head even evaluation takes the training forward: it computes both heads
      const both = training || this.config.earlyExitLayer > 0;
      const plan = this.forwardPlan(this.#scratchCache(batch, n), n, both);
      this.#lossPlans.set(key, lp = buildLossPlan(this.#state, plan, lossScale, training));
    }
    return lp;
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
    lp.backward ??= backwardDispatches(this.#state, lp.plan, lp.dLogits!, lp.dExitLogits);
    return lp;
  }

  /** Uploads tokens (validated) and zero starts into a plan. */
  #feed(plan: ForwardPlan, tokens: number[][]): void {
    const flat = new Uint32Array(plan.batch * plan.n);
    tokens.forEach((row, b) => flat.set(row, b * plan.n));
    this.gpu.write(plan.tokens, flat);
    this.gpu.write(plan.start, new Uint32Array(plan.batch));
  }

  /**
   * Uploads tokens and next-token targets (last position of each row ignored).
   *
   * @param lp the loss plan
   * @param tokens batch × n tokens, validated
   */
  feedLoss(lp: LossPlan, tokens: number[][]): void {
    this.#feed(lp.plan, tokens);
    this.gpu.write(lp.targets, nextTokenTargets(tokens, lp.plan.n));
  }

  /**
   * Encodes clearing every gradient buffer (zeroGrad).
   *
   * @param encoder the command encoder
   */
  encodeZeroGrad(encoder: GPUCommandEncoder): void {
    for (const g of this.grads.values()) encoder.clearBuffer(g);
  }

  /** Runs `fn` after every earlier call of this model's convenience methods has finished. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => {});
    return run;
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
        this.gpu.run(`${this.#state.label} logits`, plan.dispatches);
        return plan;
      });
      return await this.gpu.readF32(plan.logits, batch * n * this.config.numTokens);
    });
  }

  /**
   * The exit head's logits (the reference's `return_early_exit_only=True`): blocks [0, k), the
   * exit branch's extra blocks, the exit RMSNorm and projection; what the model proposes as its
   * own draft.
   *
   * @param tokens batch × n tokens, integers in [0, numTokens)
   * @returns flat Float32Array `(batch, n, numTokens)`
   * @throws Error when the model has no exit head (`earlyExitLayer` 0), or on bad input as
   *   {@link Decoder.logits}
   * @example
   * ```ts
   * import { Decoder, requestGpu } from "@x/specdec";
   * const cfg = { numTokens: 256, dim: 64, depth: 4, earlyExitLayer: 1 };
   * const model = Decoder.create(await requestGpu(), cfg);
   * const draftLogits = await model.exitLogits([[72, 105]]); // (1, 2, 256)
   * ```
   */
  async exitLogits(tokens: number[][]): Promise<Float32Array> {
    if (this.config.earlyExitLayer === 0) {
      throw new Error(
        "specdec: exitLogits needs a model with an exit head (config.earlyExitLayer)",
      );
    }
    const { batch, n } = validateTokens(tokens, this.config.numTokens, this.config.maxSeqLen);
    return await this.#exclusive(async () => {
      const plan = await this.gpu.scoped("Decoder.exitLogits", () => {
        const plan = this.forwardPlan(this.#scratchCache(batch, n), n, false, "draft");
        this.#feed(plan, tokens);
        this.gpu.run(`${this.#state.label} exit logits`, plan.dispatches);
        return plan;
      });
      return await this.gpu.readF32(plan.logits, batch * n * this.config.numTokens);
    });
  }

  /**
   * Mean next-token cross-entropy over all `batch × (n − 1)` positions, like the reference's
   * `return_loss=True`; for a model with an exit head, the training objective: the final head's
   * plus the exit head's (the sum the reference's early-exit training minimises).
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
        this.gpu.run(`${this.#state.label} loss`, lp.dispatches, undefined, [lp.loss]);
        return lp;
      });
      return (await this.gpu.readF32(lp.loss, 1))[0];
    });
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
        const dispatches = [...lp.dispatches, ...lp.backward!];
        const cleared = [lp.loss, ...this.grads.values()];
        this.gpu.run(`${this.#state.label} gradients`, dispatches, undefined, cleared);
      });
      return await this.#readAll(this.grads);
    });
  }

  /**
   * Frees every GPU buffer the model allocated: parameters, gradients, plans' activations, rotary
   * tables, and every KV cache it made for itself (the logits/loss scratch caches and the decode
   * pool {@link Decoder.caches}); dispatches' small uniform buffers are left to the garbage
   * collector. The model is unusable afterwards.
   */
  destroy(): void {
    this.#state.destroy();
    for (const c of this.#scratchCaches.values()) c.destroy();
    this.#scratchCaches.clear();
    this.caches.destroy();
  }
}
