/**
 * Decoder configuration: the reference architecture's hyperparameters, with defaults, and the
 * named presets (model shapes with their training settings).
 *
 * @module
 */

/** Hyperparameters of a {@link Decoder}. Only `numTokens`, `dim` and `depth` are required. */
export interface DecoderConfig {
  /** Vocabulary size (256 for bytes). */
  numTokens: number;
  /** Model width (residual stream). */
  dim: number;
  /** Number of transformer blocks. */
  depth: number;
  /** Attention heads (reference default 8). */
  heads?: number;
  /** Width of each head (reference default 64); must be even for rotary. */
  dimHead?: number;
  /** Feed-forward expansion factor (reference default 4). */
  ffMult?: number;
  /**
   * Longest sequence (prompt + generated, or training sequence) the model accepts. The reference
   * has no hard limit (rotary extrapolates); we bound it so KV caches and rotary tables can be
   * preallocated. Default 4096.
   */
  maxSeqLen?: number;
  /**
   * Early exit: a second head (its own RMSNorm and projection) reading the residual stream after
   * this many blocks, k with 1 ≤ k < depth; 0 (the default) for none. Trained jointly (the loss is
   * the final cross-entropy plus the exit's), it makes the model its own draft in
   * `speculativeDecoding(model, model, …)`. The reference's `early_exit_layer`.
   */
  earlyExitLayer?: number;
  /**
   * Transformer blocks of the exit branch only, between block k and the exit head (default 0;
   * needs `earlyExitLayer`). The reference's `early_exit_extra_transformer_blocks`.
   */
  earlyExitExtraBlocks?: number;
}

/** A {@link DecoderConfig} with every field filled in. */
export type FullDecoderConfig = Required<DecoderConfig>;

/** Defaults of the optional fields, as in the reference `Decoder`. */
export const CONFIG_DEFAULTS: Omit<FullDecoderConfig, "numTokens" | "dim" | "depth"> = {
  heads: 8,
  dimHead: 64,
  ffMult: 4,
  maxSeqLen: 4096,
  earlyExitLayer: 0,
  earlyExitExtraBlocks: 0,
};

/**
 * train.ts's training settings for a preset: its defaults, each overridden by the flag of the
 * same name (`seqLen` is `--seq-len`). The `seed` preset's are the reference train.py's.
 */
export interface TrainingDefaults {
  /** Training steps (reference NUM_BATCHES: 100000). */
  steps: number;
  /** Rows per micro-batch (reference BATCH_SIZE: 4). */
  batch: number;
  /** Micro-batches per optimizer step (reference GRAD_ACCUM_EVERY: 4). */
  accumulate: number;
  /** Adam learning rate (reference LEARNING_RATE: 1e-4). */
  lr: number;
  /** Gradient clipping max norm (reference: 0.5). */
  clip: number;
  /** Training sequence length (reference SEQ_LEN: 512). */
  seqLen: number;
  /** Validation every this many steps (reference VALIDATE_EVERY: 100). */
  validateEvery: number;
  /** Base vs speculative decoding comparison every this many steps (reference GENERATE_EVERY: 500). */
  generateEvery: number;
  /** Prime length of a comparison (reference PRIME_LENGTH: 128). */
  primeLen: number;
  /** Total generated length of a comparison, prime included (reference GENERATE_LENGTH: 512). */
  generateLen: number;
  /** Draft tokens per speculative step (reference GAMMA: 5). */
  gamma: number;
}

/** A named preset: the target and draft shapes and the training settings that go with them. */
export interface Preset {
  /** The target (large) model's shape. */
  target: DecoderConfig;
  /** The draft (small) model's shape. */
  draft: DecoderConfig;
  /** train.ts's defaults for this pair. */
  training: TrainingDefaults;
}

/**
 * Named presets, the one table of them. `seed` is the reference's train.py (target depth 10,
 * draft depth 2, dim 512, and its training settings); `small` and `tiny` keep the shape but fit a
 * software adapter.
 */
export const PRESETS: Record<string, Preset> = {
  seed: {
    target: { numTokens: 256, dim: 512, depth: 10, heads: 8, dimHead: 64 },
    draft: { numTokens: 256, dim: 512, depth: 2, heads: 8, dimHead: 64 },
    training: {
      steps: 100000,
      batch: 4,
      accumulate: 4,
      lr: 1e-4,
      clip: 0.5,
      seqLen: 512,
      validateEvery: 100,
      generateEvery: 500,
      primeLen: 128,
      generateLen: 512,
      gamma: 5,
    },
  },
  small: {
    target: { numTokens: 256, dim: 128, depth: 4, heads: 4, dimHead: 32 },
    draft: { numTokens: 256, dim: 128, depth: 1, heads: 4, dimHead: 32 },
    training: {
      steps: 2000,
      batch: 4,
      accumulate: 2,
      lr: 1e-3,
      clip: 0.5,
      seqLen: 128,
      validateEvery: 50,
      generateEvery: 250,
      primeLen: 32,
      generateLen: 128,
      gamma: 5,
    },
  },
  tiny: {
    target: { numTokens: 256, dim: 64, depth: 2, heads: 2, dimHead: 32 },
    draft: { numTokens: 256, dim: 64, depth: 1, heads: 2, dimHead: 32 },
    training: {
      steps: 300,
      batch: 4,
      accumulate: 1,
      lr: 2e-3,
      clip: 0.5,
      seqLen: 64,
      validateEvery: 25,
      generateEvery: 100,
      primeLen: 16,
      generateLen: 64,
      gamma: 5,
    },
  },
};

function positiveInt(name: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new Error(`specdec: config.${name} must be a positive integer, got ${String(v)}`);
  }
  return v;
}

/**
 * Fills defaults and validates a config.
 *
 * @param config the partial config
 * @returns the full config
 * @throws Error naming the offending field
 * @example
 * ```ts
 * import { resolveConfig } from "@x/specdec";
 * const c = resolveConfig({ numTokens: 256, dim: 512, depth: 2 });
 * console.log(c.heads, c.dimHead); // 8 64
 * ```
 */
export function resolveConfig(config: DecoderConfig): FullDecoderConfig {
  if (config === null || typeof config !== "object") {
    throw new Error("specdec: config must be an object like { numTokens, dim, depth }");
  }
  const c = { ...CONFIG_DEFAULTS, ...config } as FullDecoderConfig;
  for (
    const k of ["numTokens", "dim", "depth", "heads", "dimHead", "ffMult", "maxSeqLen"] as const
  ) {
    positiveInt(k, c[k]);
  }
  if (c.dimHead % 2 !== 0) {
    throw new Error(
      `specdec: config.dimHead must be even (rotary rotates halves), got ${c.dimHead}`,
    );
  }
  checkEarlyExit(c);
  return c;
}

/** The early-exit fields: k in [0, depth) (0 = none), extra blocks ≥ 0 and only with a head. */
function checkEarlyExit(c: FullDecoderConfig): void {
  c.earlyExitLayer ??= 0; // undefined means none, as when absent
  c.earlyExitExtraBlocks ??= 0;
  const k = c.earlyExitLayer, e = c.earlyExitExtraBlocks;
  if (typeof k !== "number" || !Number.isInteger(k) || k < 0 || k >= c.depth) {
    throw new Error(
      `specdec: config.earlyExitLayer must be an integer from 1 to depth − 1 = ${c.depth - 1} ` +
        `(the blocks before the exit head), or 0 for none; got ${String(k)}`,
    );
  }
  if (typeof e !== "number" || !Number.isInteger(e) || e < 0) {
    throw new Error(
      `specdec: config.earlyExitExtraBlocks must be a non-negative integer, got ${String(e)}`,
    );
  }
  if (e > 0 && k === 0) {
    throw new Error(
      `specdec: config.earlyExitExtraBlocks is ${e} but config.earlyExitLayer is 0 (no exit ` +
        `head): the extra blocks belong to the exit branch; set earlyExitLayer too`,
    );
  }
}
