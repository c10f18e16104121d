/**
 * What the plan builders (forward, loss, backward) need from a model: the runtime, the config,
 * parameter and gradient buffers by role, the rotary tables, and an allocator whose buffers
 * {@link ModelState.destroy} frees. It knows nothing of plans or of the Decoder facade.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { STORAGE_UNIFORM } from "../kernels/fused_linear.ts";
import type { FullDecoderConfig } from "./config.ts";
import { type ModelWeights, namedWeights, paramSpecs } from "./params.ts";

/** Rotary cos/sin tables, each `(maxLen, D/2)`. */
export interface RotaryTables {
  /** cos(position · invFreq). */
  cos: GPUBuffer;
  /** sin(position · invFreq). */
  sin: GPUBuffer;
}

/** The too-large advice for a weight (or its gradient): only a smaller model shrinks it. */
const WEIGHT_HINT = "a weight this large does not fit this device: use a smaller model " +
  "(dim, numTokens, heads·dimHead or ffMult)";
/** The too-large advice for activations, which scale with the batch and the sequence. */
const ACTIVATION_HINT = "use a smaller batch or sequence length";

/** A model's GPU state: parameters, gradients (on first use), rotary tables, owned buffers. */
export class ModelState {
  /** The runtime. */
  readonly gpu: Gpu;
  /** The full configuration. */
  readonly config: FullDecoderConfig;
  /** Label prefix of every buffer. */
  readonly label: string;
  /** Parameters by checkpoint name, each an f32 buffer in torch layout. */
  readonly params: Map<string, GPUBuffer>;
  /** The same parameter buffers by role. */
  readonly weights: ModelWeights<GPUBuffer>;
  /** Rotary inverse frequencies `(D/2)` as the checkpoint stores them. */
  readonly invFreq: Float32Array;
  #grads?: Map<string, GPUBuffer>;
  #gradWeights?: ModelWeights<GPUBuffer>;
  readonly #tables = new Map<number, RotaryTables>();
  /** Every buffer allocated through {@link ModelState.alloc} (plans, tables, gradients). */
  readonly #owned = new Set<GPUBuffer>();

  /**
   * Uploads the parameters.
   *
   * @param gpu the runtime
   * @param config the full configuration
   * @param values every parameter's values by checkpoint name (see paramSpecs)
   * @param invFreq rotary inverse frequencies (default: computed for dimHead)
   * @param label label prefix for GPU buffers
   */
  constructor(
    gpu: Gpu,
    config: FullDecoderConfig,
    values: Map<string, Float32Array<ArrayBuffer>>,
    invFreq: Float32Array | undefined,
    label: string,
  ) {
    this.gpu = gpu;
    this.config = config;
    this.label = label;
    this.invFreq = invFreq ?? rotaryInvFreq(config.dimHead);
    this.params = new Map();
    for (const spec of paramSpecs(config)) {
      const v = values.get(spec.name)!;
      // storage and uniform: the fused decode kernels read weights through uniform bindings
      const name = `${label} ${spec.name} (${spec.shape.join(", ")})`;
      this.params.set(spec.name, gpu.upload(name, v, STORAGE_UNIFORM, WEIGHT_HINT));
    }
    this.weights = namedWeights(config.depth, (name) => this.params.get(name)!, config);
  }

  /**
   * Allocates a buffer that {@link ModelState.destroy} frees.
   *
   * @param label the buffer's label
   * @param bytes its size
   * @param hint what shrinks it, for the too-large error (default: a smaller batch or length)
   * @param usage GPUBufferUsage flags (default: storage, copy source and destination)
   * @returns the buffer
   */
  alloc(label: string, bytes: number, hint: string = ACTIVATION_HINT, usage?: number): GPUBuffer {
    const b = this.gpu.buffer(label, bytes, usage, hint);
    this.#owned.add(b);
    return b;
  }

  /**
   * Allocates an f32 (or u32) tensor that {@link ModelState.destroy} frees, labelled with its shape.
   *
   * @param label what it holds
   * @param shape its dimensions, outermost first
   * @param hint what shrinks it, for the too-large error (default: a smaller batch or length)
   * @param usage GPUBufferUsage flags (default: storage, copy source and destination)
   * @returns the buffer, labelled `"<label> (<shape>)"`
   */
  tensor(label: string, shape: number[], hint?: string, usage?: number): GPUBuffer {
    const bytes = shape.reduce((a, b) => a * b, 1) * 4;
    return this.alloc(`${label} (${shape.join(", ")})`, bytes, hint, usage);
  }

  /** Gradient buffers by checkpoint name, same shapes as the parameters (allocated on first use). */
  get grads(): Map<string, GPUBuffer> {
    if (!this.#grads) {
      this.#grads = new Map();
      for (const s of paramSpecs(this.config)) {
        this.#grads.set(s.name, this.tensor(`${this.label} grad ${s.name}`, s.shape, WEIGHT_HINT));
      }
    }
    return this.#grads;
  }

  /** The gradient buffers by role. */
  get gradWeights(): ModelWeights<GPUBuffer> {
    return this.#gradWeights ??= namedWeights(
      this.config.depth,
      (name) => this.grads.get(name)!,
      this.config,
    );
  }

  /**
   * Rotary cos/sin tables `(maxLen, D/2)`, one pair per length (built on first use).
   *
   * @param maxLen positions
   * @returns the tables
   */
  rotaryTables(maxLen: number): RotaryTables {
    let t = this.#tables.get(maxLen);
    if (!t) {
      const { cos, sin } = rotaryTable(maxLen, this.invFreq);
      const shape = `(${maxLen}, ${this.config.dimHead / 2})`;
      t = {
        cos: this.gpu.upload(`${this.label} rotary cos ${shape}`, new Float32Array(cos)),
        sin: this.gpu.upload(`${this.label} rotary sin ${shape}`, new Float32Array(sin)),
      };
      this.#owned.add(t.cos).add(t.sin);
      this.#tables.set(maxLen, t);
    }
    return t;
  }

  /** Frees the parameters and every buffer allocated through this state. */
  destroy(): void {
    for (const b of this.params.values()) b.destroy();
    for (const b of this.#owned) b.destroy();
    this.#owned.clear();
  }
}
