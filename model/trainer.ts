/**
 * A training step on the GPU in one command-buffer submission: for each micro-batch, forward,
 * cross-entropy and backward (gradients accumulate, loss scaled by 1/N); then gradient clipping
 * and Adam. The host never waits inside a step; losses are copied into a GPU log and read back
 * only when the caller asks.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { type Decoder, type LossPlan, validateTokens } from "./decoder.ts";
import { IGNORE } from "../kernels/loss.ts";
import { Adam, type AdamOptions, type AdamStats } from "./optimizer.ts";
import { paramSpecs } from "./params.ts";
import { readSafetensors, writeSafetensors } from "./checkpoint.ts";

/** Options of a {@link Trainer}. */
export interface TrainerOptions extends AdamOptions {
  /** Rows per micro-batch (reference: 4). */
  batch: number;
  /** Tokens per row (reference: 512, as `seqLen + 1` samples give seqLen predictions). */
  seqLen: number;
  /** Micro-batches accumulated per step (reference: 4). Default 1. */
  accumulate?: number;
  /** Steps whose loss the GPU log keeps before wrapping (default 4096). */
  logSize?: number;
}

/**
 * Trains one {@link Decoder} with Adam; all buffers preallocated for (batch, seqLen).
 *
 * @example
 * ```ts
 * import { Decoder, requestGpu, Trainer } from "@x/specdec";
 * const gpu = await requestGpu();
 * const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 2 });
 * const trainer = new Trainer(model, { batch: 2, seqLen: 16, accumulate: 2, lr: 1e-3, clipNorm: 0.5 });
 * const rows = () => Array.from({ length: 2 }, () => Array.from({ length: 16 }, (_, i) => i));
 * const step = trainer.step([rows(), rows()]);
 * console.log(await trainer.loss(step));
 * ```
 */
export class Trainer {
  /** The model trained. */
  readonly model: Decoder;
  /** Its optimizer. */
  readonly optimizer: Adam;
  /** Rows per micro-batch. */
  readonly batch: number;
  /** Tokens per row. */
  readonly seqLen: number;
  /** Micro-batches per step. */
  readonly accumulate: number;
  #gpu: Gpu;
  #plan: LossPlan;
  #tokens: GPUBuffer; // u32 (N, B, n): every micro-batch of a step
  #targets: GPUBuffer; // u32 (N, B, n)
  #lossLog: GPUBuffer; // f32 (logSize): mean loss of each step, by step % logSize
  #logSize: number;
  #steps = 0;

  /**
   * Preallocates everything a step needs for (batch, seqLen) and builds the optimizer.
   *
   * @param model the model to train
   * @param options batch shape, accumulation and Adam options
   */
  constructor(model: Decoder, options: TrainerOptions) {
    const { batch, seqLen } = options;
    const N = options.accumulate ?? 1;
    for (const [k, v] of [["batch", batch], ["seqLen", seqLen], ["accumulate", N]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`specdec: Trainer option ${k} must be a positive integer, got ${v}`);
      }
    }
    if (seqLen < 2) {
      throw new Error(`specdec: Trainer option seqLen must be at least 2, got ${seqLen}`);
    }
    if (seqLen > model.config.maxSeqLen) {
      throw new Error(
        `specdec: Trainer seqLen ${seqLen} is over the model's maxSeqLen ${model.config.maxSeqLen}`,
      );
    }
    this.model = model;
    this.#gpu = model.gpu;
    this.batch = batch;
    this.seqLen = seqLen;
    this.accumulate = N;
    this.#plan = model.trainingPlan(batch, seqLen, 1 / N);
    const T = batch * seqLen;
    this.#tokens = this.#gpu.buffer(`trainer tokens u32 (${N}, ${batch}, ${seqLen})`, N * T * 4);
    this.#targets = this.#gpu.buffer(`trainer targets u32 (${N}, ${batch}, ${seqLen})`, N * T * 4);
    this.#logSize = options.logSize ?? 4096;
    this.#lossLog = this.#gpu.buffer(`trainer loss log (${this.#logSize})`, this.#logSize * 4);
    const params = paramSpecs(model.config).map((s) => ({
      name: s.name,
      param: model.params.get(s.name)!,
      grad: model.grads.get(s.name)!,
      size: s.shape.reduce((a, b) => a * b, 1),
    }));
    this.optimizer = new Adam(this.#gpu, params, options);
  }

  /** Steps submitted so far. */
  get steps(): number {
    return this.#steps;
  }

  /**
   * Submits one training step: `microBatches.length` must equal `accumulate`, each a
   * (batch × seqLen) token matrix. Returns at once with the step's index; nothing waits.
   *
   * @param microBatches the step's micro-batches
   * @returns the step index (0-based), for {@link Trainer.loss}
   */
  step(microBatches: number[][][]): number {
    const N = this.accumulate, B = this.batch, n = this.seqLen, T = B * n;
    if (!Array.isArray(microBatches) || microBatches.length !== N) {
      throw new Error(
        `specdec: a step takes ${N} micro-batches (accumulate), got ${microBatches?.length}`,
      );
    }
    const tok = new Uint32Array(N * T), tgt = new Uint32Array(N * T);
    microBatches.forEach((mb, m) => {
      const shape = validateTokens(
        mb,
        this.model.config.numTokens,
        this.model.config.maxSeqLen,
        `micro-batch ${m}`,
      );
      if (shape.batch !== B || shape.n !== n) {
        throw new Error(
          `specdec: micro-batch ${m} is ${shape.batch} × ${shape.n}; this trainer was built for ${B} × ${n} (batch × seqLen)`,
        );
      }
      mb.forEach((row, b) => {
        const o = m * T + b * n;
        tok.set(row, o);
        for (let i = 0; i < n; i++) tgt[o + i] = i + 1 < n ? row[i + 1] : IGNORE;
      });
    });
    const gpu = this.#gpu, lp = this.#plan;
    gpu.write(this.#tokens, tok);
    gpu.write(this.#targets, tgt);
    this.optimizer.prepareStep();
    const enc = gpu.device.createCommandEncoder({ label: `train step ${this.#steps}` });
    this.model.encodeZeroGrad(enc);
    enc.clearBuffer(lp.loss);
    for (let m = 0; m < N; m++) {
      enc.copyBufferToBuffer(this.#tokens, m * T * 4, lp.plan.tokens, 0, T * 4);
      enc.copyBufferToBuffer(this.#targets, m * T * 4, lp.targets, 0, T * 4);
      const pass = enc.beginComputePass({ label: `micro-batch ${m}` });
      gpu.encode(pass, lp.dispatches);
      gpu.encode(pass, lp.backward!);
      pass.end();
    }
    const pass = enc.beginComputePass({ label: "clip + adam" });
    gpu.encode(pass, this.optimizer.stepDispatches());
    pass.end();
    enc.copyBufferToBuffer(lp.loss, 0, this.#lossLog, (this.#steps % this.#logSize) * 4, 4);
    gpu.device.queue.submit([enc.finish()]);
    return this.#steps++;
  }

  /**
   * The mean loss of step `index` (one readback; call it after submitting the next step so the
   * GPU keeps working meanwhile).
   *
   * @param index a step index returned by {@link Trainer.step}
   * @returns the loss, averaged over the step's micro-batches
   * @throws Error when the loss is not finite, naming the step
   */
  async loss(index: number): Promise<number> {
    if (index < Math.max(0, this.#steps - this.#logSize) || index >= this.#steps) {
      throw new Error(
        `specdec: step ${index} is not in the loss log (steps ${
          Math.max(0, this.#steps - this.#logSize)
        }..${this.#steps - 1})`,
      );
    }
    const v = (await this.#gpu.readF32(this.#lossLog, 1, index % this.#logSize))[0];
    if (!Number.isFinite(v)) throw new Error(`specdec: loss is ${v} at step ${index}`);
    return v;
  }

  /**
   * The optimizer's statistics of the last step (gradient norm, clip coefficient, step count).
   *
   * @returns the stats (one readback)
   */
  stats(): Promise<AdamStats> {
    return this.optimizer.readStats();
  }

  /**
   * The optimizer state (Adam moments `exp_avg.<name>`, `exp_avg_sq.<name>` and `step`, torch's
   * names) as safetensors, to store beside the model's checkpoint.
   *
   * @returns the file's bytes
   */
  async saveState(): Promise<Uint8Array<ArrayBuffer>> {
    const state = await this.optimizer.state();
    const tensors = Object.fromEntries(
      Object.entries(state).map(([k, d]) => [k, { shape: [d.length], data: d }]),
    );
    return writeSafetensors(tensors, { format: "specdec-adam" });
  }

  /**
   * Restores an optimizer state written by {@link Trainer.saveState}.
   *
   * @param bytes the safetensors file
   * @param source a name for errors (the path)
   * @throws Error naming the file and the tensor when it does not fit this model
   */
  loadState(bytes: Uint8Array, source = "optimizer state"): void {
    const { tensors } = readSafetensors(bytes, source);
    try {
      this.optimizer.loadState(Object.fromEntries([...tensors].map(([k, t]) => [k, t.data])));
    } catch (e) {
      throw new Error(`${(e as Error).message} (in ${source})`);
    }
  }
}
