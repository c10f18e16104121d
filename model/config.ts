/**
 * Decoder configuration: the reference architecture's hyperparameters, with defaults and presets.
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
}

/** A {@link DecoderConfig} with every field filled in. */
export type FullDecoderConfig = Required<DecoderConfig>;

/** Defaults of the optional fields, as in the reference `Decoder`. */
export const CONFIG_DEFAULTS: Omit<FullDecoderConfig, "numTokens" | "dim" | "depth"> = {
  heads: 8,
  dimHead: 64,
  ffMult: 4,
  maxSeqLen: 4096,
};

/**
 * Named presets. `seed` is the reference's train.py (target depth 10, draft depth 2, dim 512);
 * `small` and `tiny` keep the shape but fit a software adapter.
 */
export const PRESETS: Record<string, { target: DecoderConfig; draft: DecoderConfig }> = {
  seed: {
    target: { numTokens: 256, dim: 512, depth: 10, heads: 8, dimHead: 64 },
    draft: { numTokens: 256, dim: 512, depth: 2, heads: 8, dimHead: 64 },
  },
  small: {
    target: { numTokens: 256, dim: 128, depth: 4, heads: 4, dimHead: 32 },
    draft: { numTokens: 256, dim: 128, depth: 1, heads: 4, dimHead: 32 },
  },
  tiny: {
    target: { numTokens: 256, dim: 64, depth: 2, heads: 2, dimHead: 32 },
    draft: { numTokens: 256, dim: 64, depth: 1, heads: 2, dimHead: 32 },
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
  return c;
}
