/**
 * Adam exactly as `torch.optim.Adam` defaults (β 0.9/0.999, eps 1e-8, bias-corrected, no weight
 * decay, no amsgrad) with `torch.nn.utils.clip_grad_norm_` (global L2 norm) folded in, all on
 * the GPU: the host encodes a fixed list of dispatches per step and never waits inside a step.
 *
 * @module
 */
import {
  adamFinalize,
  adamUpdate,
  fillZero,
  gradSumSquares,
  STATS_WORDS,
  StatsWord,
  sumSquaresPartials,
} from "../kernels/adam.ts";
import type { Dispatch, Gpu } from "../kernels/gpu.ts";

/** One trainable tensor: its value and gradient buffers (f32, flat). */
export interface Parameter {
  /** The checkpoint name, e.g. `layers.0.1.1.weight`; optimizer state keys are built from it. */
  name: string;
  /** The parameter values, `(size) f32`, updated in place. */
  param: GPUBuffer;
  /** The gradient, `(size) f32`; read by a step, never scaled in place. */
  grad: GPUBuffer;
  /** Number of f32 elements. */
  size: number;
}

/** Options of {@link Adam}; defaults are torch's. */
export interface AdamOptions {
  /** Learning rate (default 1e-4, specdec's training default; torch's is 1e-3); finite, > 0. */
  lr?: number;
  /** Decay of the first moment (default 0.9), in [0, 1). */
  beta1?: number;
  /** Decay of the second moment (default 0.999), in [0, 1). */
  beta2?: number;
  /** Added to the denominator (default 1e-8), ≥ 0. */
  eps?: number;
  /** Max global gradient L2 norm; undefined or Infinity: no clipping. */
  clipNorm?: number;
  /**
   * If the global gradient norm is NaN or Inf, skip the update: params, moments and the GPU step
   * count stay unchanged (default false: the non-finite values flow through, as in torch).
   */
  skipNonFinite?: boolean;
}

/** What the last step computed on the GPU, read back by {@link Adam.readStats}. */
export interface AdamStats {
  /** Global L2 norm of the gradients before clipping (NaN/Inf when they were). */
  gradNorm: number;
  /** Factor the gradients were multiplied by (1 without clipping or below the max). */
  clipCoef: number;
  /** Steps applied on the GPU (torch's `state["step"]`). */
  step: number;
  /** Whether the last step was skipped for a non-finite norm. */
  lastSkipped: boolean;
  /** Steps skipped so far by this optimizer (not saved in {@link Adam.state}). */
  skipped: number;
}

/**
 * Decodes the bytes of {@link Adam.statsBuffer}.
 *
 * @param bytes at least the first 7 words of the stats buffer
 * @returns the statistics
 */
export function decodeAdamStats(bytes: ArrayBuffer): AdamStats {
  const f = new Float32Array(bytes), u = new Uint32Array(bytes);
  return {
    gradNorm: f[StatsWord.norm],
    clipCoef: f[StatsWord.coef],
    step: u[StatsWord.step],
    lastSkipped: u[StatsWord.skip] !== 0,
    skipped: u[StatsWord.skipped],
  };
}

/** Checks an option and returns it, or throws an error naming the option and the value. */
function check(name: string, value: number, ok: boolean, rule: string): number {
  if (typeof value !== "number" || !ok) {
    throw new Error(`specdec: Adam option ${name} must be ${rule}, got ${value}`);
  }
  return value;
}

/** Validates a learning rate. */
function checkLr(lr: number): number {
  return check("lr", lr, Number.isFinite(lr) && lr > 0, "a finite number > 0");
}

/**
 * Adam with global-norm gradient clipping on the GPU.
 *
 * A step: {@link prepareStep} (one small `writeBuffer` with the learning rate), then
 * {@link stepDispatches} encoded in the step's compute pass after the backward dispatches. The
 * step runs: a sum of squares per gradient buffer into `partials`, one kernel that turns them
 * into the norm, the clip coefficient, the step count t and the bias corrections in `stats`, and
 * an Adam update per parameter that scales its gradient by the coefficient on the fly (the
 * gradient buffers stay unscaled). The step count lives on the GPU, so skipped steps
 * ({@link AdamOptions.skipNonFinite}) need no readback.
 *
 * @example
 * ```ts
 * import { Adam, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const w = gpu.upload("w (3) f32", new Float32Array([1, 2, 3]));
 * const dw = gpu.upload("dw (3) f32", new Float32Array([0.1, -0.2, 0.3]));
 * const opt = new Adam(gpu, [{ name: "w", param: w, grad: dw, size: 3 }], {
 *   lr: 1e-3,
 *   clipNorm: 1,
 * });
 * opt.prepareStep();
 * // a training step puts its forward and backward dispatches first in the same run
 * gpu.run("step", opt.stepDispatches());
 * gpu.run("zero grad", opt.zeroGradDispatches());
 * console.log(await opt.gradNorm(), await gpu.readF32(w));
 * ```
 */
export class Adam {
  /** First-moment decay. */
  readonly beta1: number;
  /** Second-moment decay. */
  readonly beta2: number;
  /** Denominator epsilon. */
  readonly eps: number;
  /** Max gradient norm (Infinity: no clipping). */
  readonly clipNorm: number;
  /** Whether a non-finite gradient norm skips the step. */
  readonly skipNonFinite: boolean;
  /** The parameters, in the order given. */
  readonly params: readonly Parameter[];

  #gpu: Gpu;
  #lr: number;
  #step = 0;
  #expAvg: GPUBuffer[]; // per parameter: (size) f32, m
  #expAvgSq: GPUBuffer[]; // per parameter: (size) f32, v
  #partials: GPUBuffer; // (Σ ceil(size / SUMSQ_CHUNK)) f32, per-chunk sums of g²
  #stats: GPUBuffer; // (STATS_WORDS) f32/u32, see StatsWord
  #hyper: GPUBuffer; // (4) f32: [lr, unused…], written by prepareStep
  #hyperData = new Float32Array(4);
  #stepDispatches: Dispatch[];
  #zeroDispatches: Dispatch[];

  /**
   * Allocates the moments and the step's small buffers and builds every dispatch.
   *
   * @param gpu the runtime
   * @param params the parameters (unique names, at least one)
   * @param options hyperparameters; defaults are torch's except lr (1e-4 here, 1e-3 in torch)
   * @throws Error naming the option and value when an option is out of range, or the parameter
   *   when one is malformed
   */
  constructor(gpu: Gpu, params: Parameter[], options: AdamOptions = {}) {
    this.#lr = checkLr(options.lr ?? 1e-4);
    const b1 = options.beta1 ?? 0.9, b2 = options.beta2 ?? 0.999;
    this.beta1 = check("beta1", b1, b1 >= 0 && b1 < 1, "in [0, 1)");
    this.beta2 = check("beta2", b2, b2 >= 0 && b2 < 1, "in [0, 1)");
    const eps = options.eps ?? 1e-8;
    this.eps = check("eps", eps, Number.isFinite(eps) && eps >= 0, "a finite number ≥ 0");
    const clip = options.clipNorm ?? Infinity;
    this.clipNorm = check("clipNorm", clip, clip > 0, "> 0 (or Infinity for no clipping)");
    this.skipNonFinite = options.skipNonFinite ?? false;
    if (params.length === 0) throw new Error("specdec: Adam got an empty parameter list");
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new Error(`specdec: Adam got parameter "${p.name}" twice`);
      names.add(p.name);
      if (!Number.isInteger(p.size) || p.size <= 0) {
        throw new Error(`specdec: Adam parameter "${p.name}" has size ${p.size}`);
      }
      for (const [what, buf] of [["param", p.param], ["grad", p.grad]] as const) {
        if (buf.size < 4 * p.size) {
          throw new Error(
            `specdec: Adam parameter "${p.name}": ${what} buffer holds ${buf.size / 4} floats, ` +
              `size is ${p.size}`,
          );
        }
      }
    }
    this.params = params.slice();
    this.#gpu = gpu;

    this.#expAvg = params.map((p) => gpu.buffer(`exp_avg.${p.name} (${p.size}) f32`, 4 * p.size));
    this.#expAvgSq = params.map((p) =>
      gpu.buffer(`exp_avg_sq.${p.name} (${p.size}) f32`, 4 * p.size)
    );
    const offsets: number[] = [];
    let count = 0;
    for (const p of params) {
      offsets.push(count);
      count += sumSquaresPartials(p.size);
    }
    this.#partials = gpu.buffer(`adam partials (${count}) f32`, 4 * count);
    this.#stats = gpu.buffer(`adam stats (${STATS_WORDS})`, 4 * STATS_WORDS);
    this.#writeStats(0);
    this.#hyper = gpu.buffer("adam hyper (4) f32", 16);
    // Written here too so a step encoded without prepareStep() still has a valid lr.
    this.#hyperData[0] = this.#lr;
    gpu.write(this.#hyper, this.#hyperData);
    // Moments start at zero (torch's zeros_like).
    const zero = (buffers: GPUBuffer[], i: number) =>
      fillZero(gpu, { buffer: buffers[i], n: params[i].size });
    const init = params.flatMap((_, i) => [zero(this.#expAvg, i), zero(this.#expAvgSq, i)]);
    gpu.run("adam init", init);

    const sums = params.map((p, i) =>
      gradSumSquares(gpu, { grad: p.grad, partials: this.#partials, n: p.size, offset: offsets[i] })
    );
    const finalize = adamFinalize(gpu, {
      partials: this.#partials,
      count,
      hyper: this.#hyper,
      stats: this.#stats,
      maxNorm: this.clipNorm,
      skipNonFinite: this.skipNonFinite,
      beta1: this.beta1,
      beta2: this.beta2,
    });
    const updates = params.map((p, i) =>
      adamUpdate(gpu, {
        param: p.param,
        grad: p.grad,
        expAvg: this.#expAvg[i],
        expAvgSq: this.#expAvgSq[i],
        stats: this.#stats,
        n: p.size,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
      })
    );
    this.#stepDispatches = [...sums, finalize, ...updates];
    this.#zeroDispatches = params.map((p) => fillZero(gpu, { buffer: p.grad, n: p.size }));
  }

  /** The learning rate used by the next {@link prepareStep}; must be finite and > 0. */
  get lr(): number {
    return this.#lr;
  }
  set lr(value: number) {
    this.#lr = checkLr(value);
  }

  /**
   * Steps prepared on the host: {@link prepareStep} calls plus the count loaded by
   * {@link loadState}. With {@link AdamOptions.skipNonFinite} the GPU may skip some; the
   * count actually applied is `(await state()).step` or `(await readStats()).step`.
   */
  get step(): number {
    return this.#step;
  }

  /**
   * The dispatches of one step, in order: a sum of squares per gradient, the finalize kernel
   * (norm, clip coefficient, t += 1, bias corrections), an Adam update per parameter. Built once;
   * call {@link prepareStep} before each submit that contains them.
   *
   * @returns the step's dispatches (a fresh array over the same prebuilt dispatches)
   */
  stepDispatches(): Dispatch[] {
    return this.#stepDispatches.slice();
  }

  /**
   * Writes this step's learning rate (one 16-byte `writeBuffer`, ordered before the next
   * submit) and counts the step on the host. The step number t itself is counted on the GPU.
   */
  prepareStep(): void {
    this.#hyperData[0] = this.#lr;
    this.#gpu.write(this.#hyper, this.#hyperData);
    this.#step++;
  }

  /**
   * Dispatches that zero every gradient buffer (torch's `zero_grad(set_to_none=False)`).
   *
   * @returns one fill kernel per gradient buffer
   */
  zeroGradDispatches(): Dispatch[] {
    return this.#zeroDispatches.slice();
  }

  /**
   * Reads what the last submitted step computed (one readback).
   *
   * @returns the norm, clip coefficient, GPU step count and skip information
   */
  async readStats(): Promise<AdamStats> {
    return decodeAdamStats(await this.#gpu.read(this.#stats));
  }

  /**
   * The GPU buffer the step writes its statistics into (`STATS_WORDS` words, see
   * {@link decodeAdamStats}), for callers that copy them into their own log inside a step.
   */
  get statsBuffer(): GPUBuffer {
    return this.#stats;
  }

  /**
   * Reads the global gradient L2 norm (before clipping) of the last submitted step, like the
   * value `clip_grad_norm_` returns. One readback: call it only when you log it.
   *
   * @returns the norm (0 before the first step; NaN or Inf when the gradients were)
   */
  async gradNorm(): Promise<number> {
    return (await this.readStats()).gradNorm;
  }

  /**
   * Reads the optimizer state with torch's names: `exp_avg.<name>`, `exp_avg_sq.<name>` and
   * `step` (a Float32Array of length 1, the steps applied on the GPU).
   *
   * @returns the state, one entry per moment plus `step`
   */
  async state(): Promise<Record<string, Float32Array>> {
    const reads = this.params.flatMap((p, i) => [
      this.#gpu.readF32(this.#expAvg[i], p.size),
      this.#gpu.readF32(this.#expAvgSq[i], p.size),
    ]);
    const [stats, ...moments] = await Promise.all([this.readStats(), ...reads]);
    const out: Record<string, Float32Array> = {};
    this.params.forEach((p, i) => {
      out[`exp_avg.${p.name}`] = moments[2 * i];
      out[`exp_avg_sq.${p.name}`] = moments[2 * i + 1];
    });
    out.step = new Float32Array([stats.step]);
    return out;
  }

  /**
   * Loads a state written by {@link state} (queued: takes effect before the next submit). Keys
   * of other tensors are ignored; `exp_avg.*` / `exp_avg_sq.*` keys naming no parameter throw.
   *
   * @param state `exp_avg.<name>`, `exp_avg_sq.<name>` for every parameter, and `step`
   * @throws Error naming the key (and both sizes) when one is missing, unknown or the wrong size
   */
  loadState(state: Record<string, Float32Array>): void {
    const expect = new Map<string, number>([["step", 1]]);
    for (const p of this.params) {
      expect.set(`exp_avg.${p.name}`, p.size);
      expect.set(`exp_avg_sq.${p.name}`, p.size);
    }
    for (const key of Object.keys(state)) {
      if ((key.startsWith("exp_avg.") || key.startsWith("exp_avg_sq.")) && !expect.has(key)) {
        throw new Error(`specdec: Adam.loadState: "${key}" names no parameter of this optimizer`);
      }
    }
    for (const [key, size] of expect) {
      const value = state[key];
      if (!value) throw new Error(`specdec: Adam.loadState: "${key}" is missing`);
      if (value.length !== size) {
        throw new Error(
          `specdec: Adam.loadState: "${key}" has ${value.length} elements, expected ${size}`,
        );
      }
    }
    const step = state.step[0];
    if (!Number.isInteger(step) || step < 0) {
      throw new Error(`specdec: Adam.loadState: "step" must be an integer ≥ 0, got ${step}`);
    }
    this.params.forEach((p, i) => {
      this.#gpu.write(this.#expAvg[i], new Float32Array(state[`exp_avg.${p.name}`]));
      this.#gpu.write(this.#expAvgSq[i], new Float32Array(state[`exp_avg_sq.${p.name}`]));
    });
    this.#writeStats(step);
    this.#step = step;
  }

  /** Releases the moments and the step's buffers (not the parameters or gradients). */
  destroy(): void {
    for (
      const b of [...this.#expAvg, ...this.#expAvgSq, this.#partials, this.#stats, this.#hyper]
    ) {
      b.destroy();
    }
  }

  /** Resets `stats` to "no step computed yet" with a step count. */
  #writeStats(step: number): void {
    const words = new Uint32Array(STATS_WORDS);
    new Float32Array(words.buffer)[StatsWord.coef] = 1;
    words[StatsWord.step] = step;
    this.#gpu.write(this.#stats, words);
  }
}
