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
  readonly #params: Map<string, GPUBuffer>;
  /** The same parameter buffers by role. */
  readonly weights: ModelWeights<GPUBuffer>;
  /** Rotary inverse frequencies `(D/2)` as the checkpoint stores them. */
  readonly invFreq: Float32Array;
  #grads?: Map<string, GPUBuffer>;
  #gradWeights?: ModelWeights<GPUBuffer>;
  readonly #tables = new Map<number, RotaryTables>();
  /** Every buffer allocated through {@link ModelState.alloc} (plans, tables, gradients). */
  readonly #owned = new Set<GPUBuffer>();
  /** Weight textures (see {@link ModelState.weightTexture}) by their weight buffer. */
  readonly #weightTextures = new Map<GPUBuffer, GPUTexture>();
  /** Bumped whenever the weights may have been written (params or grads handed out). */
  #weightsVersion = 0;
  /** The weights version the textures were last copied from. */
  #texturesVersion = 0;

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
    this.#params = new Map();
    for (const spec of paramSpecs(config)) {
      const v = values.get(spec.name)!;
      // storage and uniform: the fused decode kernels read weights through uniform bindings
      const name = `${label} ${spec.name} (${spec.shape.join(", ")})`;
      this.#params.set(spec.name, gpu.upload(name, v, STORAGE_UNIFORM, WEIGHT_HINT));
    }
    this.weights = namedWeights(config.depth, (name) => this.#params.get(name)!, config);
  }

  /**
   * Parameters by checkpoint name, each an f32 buffer in torch layout. Handing them out counts
   * as a possible write: the weight textures are copied again before the next fused forward.
   */
  get params(): Map<string, GPUBuffer> {
    this.#weightsVersion++;
    return this.#params;
  }

  /**
   * Says the weights were written (by a training step, or a write into a parameter buffer):
   * the weight textures are copied again before the next fused forward encodes.
   */
  weightsChanged(): void {
    this.#weightsVersion++;
  }

  /**
   * An rgba32float texture copy of weight `w (N, K)`, `K/4` texels wide and `N` high, that the
   * fused GEMVs read on software adapters (kernels/fused_linear.ts: ~2.5× cheaper loads than
   * uniform chunks on lavapipe). Built once per weight; {@link ModelState.syncWeightTextures}
   * copies the weights again after {@link ModelState.weightsChanged} (or after `params` or
   * `grads` were handed out, which training steps and direct writes go through).
   *
   * @param w a weight buffer of this model (`weights.*`)
   * @param N its rows
   * @param K its columns
   * @returns the texture, or undefined off software adapters or where the sizes do not fit
   *   (K a multiple of 64: the copy's rows are whole 256-byte lines; within the texture limits)
   */
  weightTexture(w: GPUBuffer, N: number, K: number): GPUTexture | undefined {
    const lim = this.gpu.device.limits;
    if (
      !this.gpu.isSoftware || K <= 0 || K % 64 !== 0 || N <= 0 ||
      K / 4 > lim.maxTextureDimension2D || N > lim.maxTextureDimension2D || w.size !== N * K * 4
    ) return undefined;
    let t = this.#weightTextures.get(w);
    if (!t) {
      t = this.gpu.device.createTexture({
        label: `${w.label} texture`,
        size: [K / 4, N],
        format: "rgba32float",
        usage: 0x04 | 0x02, // TEXTURE_BINDING | COPY_DST
      });
      this.#weightTextures.set(w, t);
      this.#copyToTextures([[w, t]]);
    }
    return t;
  }

  /**
   * Copies the weights into their textures if they may have changed since the last copy (one
   * submit, queued before whatever is encoded next). The fused forward plans call it as their
   * first dispatch is encoded.
   */
  syncWeightTextures(): void {
    if (this.#texturesVersion === this.#weightsVersion) return;
    this.#copyToTextures([...this.#weightTextures]);
  }

  #copyToTextures(pairs: [GPUBuffer, GPUTexture][]): void {
    const enc = this.gpu.device.createCommandEncoder({ label: `${this.label} weight textures` });
    for (const [w, t] of pairs) {
      enc.copyBufferToTexture(
        { buffer: w, bytesPerRow: t.width * 16, rowsPerImage: t.height },
        { texture: t },
        [t.width, t.height],
      );
    }
    this.gpu.device.queue.submit([enc.finish()]);
    if (pairs.length === this.#weightTextures.size) this.#texturesVersion = this.#weightsVersion;
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
    this.#weightsVersion++; // a training step is about to update the weights
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
    for (const b of this.#params.values()) b.destroy();
    for (const t of this.#weightTextures.values()) t.destroy();
    this.#weightTextures.clear();
    for (const b of this.#owned) b.destroy();
    this.#owned.clear();
  }
}
