/**
 * A training step on the GPU in one command-buffer submission: for each micro-batch, forward,
 * cross-entropy and backward (gradients accumulate, loss scaled by 1/N); then gradient clipping
 * and Adam. The host never waits inside a step; losses are copied into a GPU log and read back
 * only when the caller asks.
 *
 * With `distill`, a trainer also pulls its model toward a teacher trainer's distribution: the
 * KL kernel reads the teacher's logits of the same micro-batches from the teacher's own step
 * (kept on the GPU) and adds its gradient after cross-entropy's.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import { type Decoder, validateTokens } from "./decoder.ts";
import {
  buildDistillPlan,
  type DistillPlan,
  type LossPlan,
  nextTokenTargets,
} from "./loss_plan.ts";
import { Adam, type AdamOptions, type AdamStats, decodeAdamStats } from "./optimizer.ts";
import { paramSpecs } from "./params.ts";
import { readSafetensors, writeSafetensors } from "./checkpoint.ts";

/** Readback slots: results of the last RING steps map without queueing a copy. */
const RING = 4;
/** Adam stats words a step logs (see decodeAdamStats). */
const STATS_LOGGED = 7;
/**
 * Words per step in the log: the loss, the first 7 Adam stats words, then (distilling) the plain
 * cross-entropy and the KL.
 */
const LOG_WORDS = 10;
const LOG_BYTES = LOG_WORDS * 4;

/** What one training step computed (see {@link Trainer.result}). */
export interface StepResult {
  /** The step index. */
  step: number;
  /** Mean loss over the step's micro-batches. */
  loss: number;
  /** Global gradient L2 norm before clipping (NaN/Inf when the gradients were). */
  gradNorm: number;
  /** Whether the update was skipped for a non-finite gradient norm (`skipNonFinite`). */
  skipped: boolean;
  /**
   * Distilling: the step's mean plain cross-entropy and mean KL(teacher ‖ model), whose
   * (1 − w, w)-weighted sum is `loss`.
   */
  distill?: { ce: number; kl: number };
}

/**
 * Distillation of a {@link Trainer}'s model toward a teacher's distribution: the loss becomes
 * (1 − weight)·CE + weight·KL(p_teacher ‖ p_model), both at softmax temperature `temperature`.
 */
export interface DistillOptions {
  /**
   * The teacher's trainer, on the same batch, seqLen, accumulation and vocabulary. Each step of
   * this trainer must come right after a step of the teacher's on the same micro-batches: it
   * reads the logits of that step's forward (computed before the teacher's own update) on the
   * GPU, with no readback and no extra forward.
   */
  teacher: Trainer;
  /** Weight w of the KL term, 0 < w ≤ 1. */
  weight: number;
  /** Softmax temperature of both distributions, > 0 (default 1). */
  temperature?: number;
}

/** Options of a {@link Trainer}. */
export interface TrainerOptions extends AdamOptions {
  /** Rows per micro-batch (reference: 4). */
  batch: number;
  /** Tokens per row (reference: 513: a window of SEQ_LEN + 1 bytes gives 512 predictions). */
  seqLen: number;
  /** Micro-batches accumulated per step (reference: 4). Default 1. */
  accumulate?: number;
  /** Steps whose loss the GPU log keeps before wrapping (default 4096). */
  logSize?: number;
  /** Distil toward a teacher's logits (default: plain cross-entropy). */
  distill?: DistillOptions;
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
  #log: GPUBuffer; // (logSize, LOG_WORDS): per step [loss, Adam stats words…], by step % logSize
  #logSize: number;
  #steps = 0;
  // Readback ring: each step also copies its log entry into a mappable buffer inside its own
  // submission, so reading step i's loss maps that buffer at once instead of queueing a copy
  // behind the steps submitted since (which would stall the host until they finish).
  #ring: { buffer: GPUBuffer; step: number; busy: boolean }[];
  // Distilling: the teacher and the KL dispatches.
  #distill?: { teacher: Trainer; plan: DistillPlan };
  // As a teacher: its logits of every micro-batch of the last step, (N, T, V) (N = 1: the loss
  // plan's own logits buffer, not a copy), and the tokens of that step.
  #logitsStore?: GPUBuffer;
  #ownsStore = false;
  #lastTokens?: Uint32Array;

  /**
   * Preallocates everything a step needs for (batch, seqLen) and builds the optimizer.
   *
   * @param model the model to train
   * @param options batch shape, accumulation, Adam options and distillation
   * @throws Error naming the option when one is out of range, or (distilling) when the teacher's
   *   shapes differ from this trainer's
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
    const distill = options.distill;
    if (distill !== undefined) this.#checkTeacher(distill, model, batch, seqLen, N);
    // distilling, cross-entropy weighs (1 − w): its loss plan's lossScale carries that factor
    this.#plan = model.trainingPlan(batch, seqLen, (1 - (distill?.weight ?? 0)) / N);
    if (distill !== undefined) {
      this.#distill = {
        teacher: distill.teacher,
        plan: buildDistillPlan(this.#gpu, this.#plan, {
          teacherLogits: distill.teacher.#teacherLogits(),
          weight: distill.weight,
          temperature: distill.temperature,
          accumulate: N,
        }),
      };
    }
    const T = batch * seqLen;
    this.#tokens = this.#gpu.buffer(`trainer tokens u32 (${N}, ${batch}, ${seqLen})`, N * T * 4);
    this.#targets = this.#gpu.buffer(`trainer targets u32 (${N}, ${batch}, ${seqLen})`, N * T * 4);
    this.#logSize = options.logSize ?? 4096;
    if (!Number.isInteger(this.#logSize) || this.#logSize < 1) {
      throw new Error(
        `specdec: Trainer option logSize must be a positive integer, got ${this.#logSize}`,
      );
    }
    this.#log = this.#gpu.buffer(
      `trainer log (${this.#logSize}, ${LOG_WORDS})`,
      this.#logSize * LOG_BYTES,
    );
    this.#ring = Array.from({ length: RING }, (_, i) => ({
      buffer: this.#gpu.buffer(`trainer readback ${i} (${LOG_WORDS})`, LOG_BYTES, 0x1 | 0x8), // MAP_READ|COPY_DST
      step: -1,
      busy: false,
    }));
    const params = paramSpecs(model.config).map((s) => ({
      name: s.name,
      param: model.params.get(s.name)!,
      grad: model.grads.get(s.name)!,
      size: s.shape.reduce((a, b) => a * b, 1),
    }));
    this.optimizer = new Adam(this.#gpu, params, options);
  }

  /** Validates distillation options (the teacher's shapes must match this trainer's). */
  #checkTeacher(d: DistillOptions, model: Decoder, batch: number, seqLen: number, N: number) {
    if (!(d.teacher instanceof Trainer)) {
      throw new Error("specdec: Trainer option distill.teacher must be a Trainer");
    }
    if (d.teacher.model === model) {
      throw new Error("specdec: Trainer option distill.teacher trains this same model");
    }
    if (typeof d.weight !== "number" || !(d.weight > 0 && d.weight <= 1)) {
      throw new Error(`specdec: Trainer option distill.weight must be in (0, 1], got ${d.weight}`);
    }
    const tau = d.temperature ?? 1;
    if (typeof tau !== "number" || !Number.isFinite(tau) || tau <= 0) {
      throw new Error(
        `specdec: Trainer option distill.temperature must be a finite number > 0, got ${tau}`,
      );
    }
    const t = d.teacher;
    const mine = [batch, seqLen, N, model.config.numTokens];
    const theirs = [t.batch, t.seqLen, t.accumulate, t.model.config.numTokens];
    if (mine.some((v, i) => v !== theirs[i])) {
      throw new Error(
        `specdec: the distillation teacher trains (batch, seqLen, accumulate, vocabulary) = ` +
          `(${theirs.join(", ")}), this trainer (${mine.join(", ")}); they must be equal`,
      );
    }
  }

  /**
   * Makes this trainer keep its logits of every micro-batch of its last step, for a student
   * trainer that distils toward it, and returns the buffer: with one micro-batch the loss plan's
   * own logits (no copy), else an `(N, T, V)` store each micro-batch's logits are copied into.
   */
  #teacherLogits(): GPUBuffer {
    if (!this.#logitsStore) {
      const N = this.accumulate, lp = this.#plan;
      if (N === 1) this.#logitsStore = lp.plan.logits;
      else {
        const T = this.batch * this.seqLen, V = this.model.config.numTokens;
        this.#logitsStore = this.#gpu.buffer(
          `trainer teacher logits (${N}, ${T}, ${V})`,
          N * T * V * 4,
        );
        this.#ownsStore = true;
      }
    }
    return this.#logitsStore;
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
   * @param timer optional GPU timer: times the step's passes (one per micro-batch, one for Adam)
   * @returns the step index (0-based), for {@link Trainer.result} and {@link Trainer.loss}
   * @throws Error when the micro-batches' count or shape is wrong, or (distilling) when the
   *   teacher's last step was not on the same micro-batches
   */
  step(microBatches: number[][][], timer?: GpuTimer): number {
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
      mb.forEach((row, b) => tok.set(row, m * T + b * n));
      tgt.set(nextTokenTargets(mb, n), m * T);
    });
    const distill = this.#distill;
    if (distill) {
      const seen = distill.teacher.#lastTokens;
      if (!seen || seen.length !== tok.length || seen.some((x, i) => x !== tok[i])) {
        throw new Error(
          `specdec: distillation step ${this.#steps}: the teacher's last step was not on these ` +
            `micro-batches (step the teacher on the same micro-batches first)`,
        );
      }
    }
    const gpu = this.#gpu, lp = this.#plan, index = this.#steps;
    gpu.write(this.#tokens, tok);
    gpu.write(this.#targets, tgt);
    this.optimizer.prepareStep();
    const enc = gpu.device.createCommandEncoder({ label: `train step ${index}` });
    this.model.encodeZeroGrad(enc);
    enc.clearBuffer(lp.loss);
    if (distill) {
      enc.clearBuffer(distill.plan.ce);
      enc.clearBuffer(distill.plan.kl);
    }
    const keep = this.#ownsStore ? this.#logitsStore : undefined,
      TV = T * this.model.config.numTokens;
    for (let m = 0; m < N; m++) {
      enc.copyBufferToBuffer(this.#tokens, m * T * 4, lp.plan.tokens, 0, T * 4);
      enc.copyBufferToBuffer(this.#targets, m * T * 4, lp.targets, 0, T * 4);
      const pass = enc.beginComputePass({
        label: `micro-batch ${m}`,
        timestampWrites: timer?.writes(),
      });
      gpu.encode(pass, lp.dispatches);
      if (distill) gpu.encode(pass, distill.plan.dispatches[m]);
      gpu.encode(pass, lp.backward!);
      pass.end();
      // a teacher keeps each micro-batch's logits (the backward does not touch them)
      if (keep) enc.copyBufferToBuffer(lp.plan.logits, 0, keep, m * TV * 4, TV * 4);
    }
    const pass = enc.beginComputePass({ label: "clip + adam", timestampWrites: timer?.writes() });
    gpu.encode(pass, this.optimizer.stepDispatches());
    pass.end();
    timer?.resolve(enc);
    // log entry: [loss, stats words…]
    const at = (index % this.#logSize) * LOG_BYTES;
    enc.copyBufferToBuffer(lp.loss, 0, this.#log, at, 4);
    enc.copyBufferToBuffer(this.optimizer.statsBuffer, 0, this.#log, at + 4, STATS_LOGGED * 4);
    if (distill) {
      const after = at + 4 + STATS_LOGGED * 4;
      enc.copyBufferToBuffer(distill.plan.ce, 0, this.#log, after, 4);
      enc.copyBufferToBuffer(distill.plan.kl, 0, this.#log, after + 4, 4);
    }
    const slot = this.#ring[index % RING];
    if (!slot.busy) {
      enc.copyBufferToBuffer(this.#log, at, slot.buffer, 0, LOG_BYTES);
      slot.step = index;
    } else slot.step = -1; // still being read: this step's result comes from the log instead
    gpu.device.queue.submit([enc.finish()]);
    if (this.#logitsStore) this.#lastTokens = tok;
    return this.#steps++;
  }

  /**
   * What step `index` computed: its loss (mean over the micro-batches), the gradient norm before
   * clipping, and whether the update was skipped (`skipNonFinite`). One readback that does not
   * wait for steps submitted after it: call it after submitting the next step.
   *
   * @param index a step index returned by {@link Trainer.step}
   * @returns the step's loss and optimizer statistics
   */
  async result(index: number): Promise<StepResult> {
    const oldest = Math.max(0, this.#steps - this.#logSize);
    if (!Number.isInteger(index) || index < oldest || index >= this.#steps) {
      throw new Error(
        `specdec: step ${index} is not in the trainer's log (steps ${oldest}..${this.#steps - 1})`,
      );
    }
    const slot = this.#ring[index % RING];
    let bytes: ArrayBuffer;
    if (slot.step === index && !slot.busy) {
      slot.busy = true;
      try {
        await slot.buffer.mapAsync(1 /* READ */);
        bytes = slot.buffer.getMappedRange().slice(0);
        slot.buffer.unmap();
        this.#gpu.readbacks++;
        this.#gpu.throwUncaptured(`reading training step ${index}`);
      } finally {
        slot.busy = false;
      }
    } else {
      bytes = await this.#gpu.read(this.#log, LOG_BYTES, (index % this.#logSize) * LOG_BYTES);
    }
    const f = new Float32Array(bytes), loss = f[0];
    const stats = decodeAdamStats(bytes.slice(4, 4 + STATS_LOGGED * 4));
    const r: StepResult = {
      step: index,
      loss,
      gradNorm: stats.gradNorm,
      skipped: stats.lastSkipped,
    };
    if (this.#distill) r.distill = { ce: f[1 + STATS_LOGGED], kl: f[2 + STATS_LOGGED] };
    return r;
  }

  /**
   * The mean loss of step `index` (see {@link Trainer.result}).
   *
   * @param index a step index returned by {@link Trainer.step}
   * @returns the loss, averaged over the step's micro-batches
   * @throws Error naming the step when its loss or gradient norm is not finite
   */
  async loss(index: number): Promise<number> {
    const r = await this.result(index);
    if (!Number.isFinite(r.loss)) throw new Error(`specdec: loss is ${r.loss} at step ${index}`);
    if (!Number.isFinite(r.gradNorm)) {
      throw new Error(`specdec: gradient norm is ${r.gradNorm} at step ${index}`);
    }
    return r.loss;
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

  /** Frees the trainer's buffers and the optimizer's (the model stays usable). */
  destroy(): void {
    this.optimizer.destroy();
    for (const b of [this.#tokens, this.#targets, this.#log, ...this.#ring.map((r) => r.buffer)]) {
      b.destroy();
    }
    this.#distill?.plan.destroy();
    if (this.#ownsStore) this.#logitsStore?.destroy();
  }
}
