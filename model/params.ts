/**
 * The Decoder's parameters: each weight's role (`layer.qkv`, `layer.ffIn`, …), its PyTorch
 * state_dict name, torch shape and initialisation, in ONE table; everything else (plans,
 * checkpoints, the optimizer) goes through it.
 *
 * @module
 */
import type { FullDecoderConfig } from "./config.ts";

/**
 * One transformer block's weights by role. The reference's block is
 * `Sequential(Residual(Attention), Residual(Sequential(RMSNorm, Linear, GELU, Linear)))`, so torch
 * names them by Sequential index; {@link LAYER_WEIGHTS} maps the roles to those names.
 */
export interface LayerWeights<T> {
  /** Attention pre-norm weight `(C)`. */
  norm: T;
  /** Fused q, k, v projection `(3·H·D, C)`, output in (qkv, head, dimHead) order. */
  qkv: T;
  /** Attention output projection `(C, H·D)`. */
  attnOut: T;
  /** Feed-forward pre-norm weight `(C)`. */
  ffNorm: T;
  /** Feed-forward input projection `(F, C)`. */
  ffIn: T;
  /** Its bias `(F)`. */
  ffInBias: T;
  /** Feed-forward output projection `(C, F)`. */
  ffOut: T;
  /** Its bias `(C)`. */
  ffOutBias: T;
}

/** The whole model's weights by role. */
export interface ModelWeights<T> {
  /** Token embedding `(V, C)`. */
  tokenEmbedding: T;
  /** The blocks, first to last. */
  layers: LayerWeights<T>[];
  /** Final RMSNorm weight `(C)`. */
  finalNorm: T;
  /** Output projection to the logits `(V, C)`, no bias. */
  logitsWeight: T;
  /** The exit branch's extra blocks (none without an exit head or extra blocks). */
  exitLayers: LayerWeights<T>[];
  /** The exit head's RMSNorm weight `(C)` (undefined without an exit head). */
  exitNorm?: T;
  /** The exit head's projection to the exit logits `(V, C)`, no bias. */
  exitWeight?: T;
}

/** A per-layer weight's role. */
export type LayerWeightName = keyof LayerWeights<unknown>;
/** A model-level weight's role. */
export type ModelWeightName = Exclude<
  keyof ModelWeights<unknown>,
  "layers" | "exitLayers" | "exitNorm" | "exitWeight"
>;
/** An exit head's weight role. */
export type ExitWeightName = "exitNorm" | "exitWeight";

/** Sizes the shapes are written in: C = dim, HD = heads·dimHead, F = ffMult·dim, V = numTokens. */
interface Sizes {
  C: number;
  HD: number;
  F: number;
  V: number;
}

/** How PyTorch initialises a tensor: Linear `U(±1/√fanIn)`, embedding `N(0,1)`, norm weights 1. */
export type ParamInit = { kind: "uniform"; fanIn: number } | { kind: "normal" } | {
  kind: "ones";
};

/** A row of the weight table: torch name, torch shape, initialisation. */
interface WeightEntry {
  /** The state_dict name (after `layers.{i}.` for per-layer weights). */
  torch: string;
  /** torch shape (Linear weights are `[out, in]`). */
  shape: (s: Sizes) => number[];
  /** Initialisation (a Linear's bias uses the weight's fan-in). */
  init: (s: Sizes) => ParamInit;
}

const ONES = (): ParamInit => ({ kind: "ones" });
const NORMAL = (): ParamInit => ({ kind: "normal" });
const uniform = (fanIn: (s: Sizes) => number) => (s: Sizes): ParamInit => ({
  kind: "uniform",
  fanIn: fanIn(s),
});

/**
 * Per-layer weights, in checkpoint order: role → state_dict name after `layers.{i}.`. The only
 * place the torch Sequential indices appear.
 */
const LAYER_WEIGHTS: Readonly<Record<LayerWeightName, WeightEntry>> = {
  norm: { torch: "0.norm.weight", shape: ({ C }) => [C], init: ONES },
  qkv: { torch: "0.to_qkv.weight", shape: ({ C, HD }) => [3 * HD, C], init: uniform((s) => s.C) },
  attnOut: { torch: "0.to_out.weight", shape: ({ C, HD }) => [C, HD], init: uniform((s) => s.HD) },
  ffNorm: { torch: "1.0.weight", shape: ({ C }) => [C], init: ONES },
  ffIn: { torch: "1.1.weight", shape: ({ C, F }) => [F, C], init: uniform((s) => s.C) },
  ffInBias: { torch: "1.1.bias", shape: ({ F }) => [F], init: uniform((s) => s.C) },
  ffOut: { torch: "1.3.weight", shape: ({ C, F }) => [C, F], init: uniform((s) => s.F) },
  ffOutBias: { torch: "1.3.bias", shape: ({ C }) => [C], init: uniform((s) => s.F) },
};

/** Model-level weights: role → state_dict name (the embedding first, the output last). */
const MODEL_WEIGHTS: Readonly<Record<ModelWeightName, WeightEntry>> = {
  tokenEmbedding: { torch: "token_emb.weight", shape: ({ V, C }) => [V, C], init: NORMAL },
  finalNorm: { torch: "to_logits.0.weight", shape: ({ C }) => [C], init: ONES },
  logitsWeight: {
    torch: "to_logits.1.weight",
    shape: ({ V, C }) => [V, C],
    init: uniform((s) => s.C),
  },
};

/**
 * The exit head: role → state_dict name, as the reference's `to_early_exit_logits =
 * Sequential(RMSNorm, Linear(dim, num_tokens, bias=False))` (the norm's weight named like
 * `to_logits.0.weight`).
 */
const EXIT_WEIGHTS: Readonly<Record<ExitWeightName, WeightEntry>> = {
  exitNorm: { torch: "to_early_exit_logits.0.weight", shape: ({ C }) => [C], init: ONES },
  exitWeight: {
    torch: "to_early_exit_logits.1.weight",
    shape: ({ V, C }) => [V, C],
    init: uniform((s) => s.C),
  },
};

/** The state_dict prefix of the exit branch's extra blocks (the reference's ModuleList). */
export const EXIT_BLOCKS_PREFIX: string = "early_exit_transformer_blocks";

/** The checkpoint name of the rotary inverse frequencies (a buffer, not a parameter). */
export const ROTARY_INV_FREQ: string = "rotary_emb.inv_freq";

/**
 * The checkpoint name of a per-layer weight.
 *
 * @param layer block index
 * @param role the weight's role
 * @returns e.g. `layers.3.1.3.weight` for (3, "ffOut")
 */
export function layerWeightName(layer: number, role: LayerWeightName): string {
  return `layers.${layer}.${LAYER_WEIGHTS[role].torch}`;
}

/**
 * The checkpoint name of a model-level weight.
 *
 * @param role the weight's role
 * @returns e.g. `token_emb.weight`
 */
export function modelWeightName(role: ModelWeightName): string {
  return MODEL_WEIGHTS[role].torch;
}

/**
 * The checkpoint name of a weight of the exit branch's extra block `j`.
 *
 * @param j extra block index
 * @param role the weight's role
 * @returns e.g. `early_exit_transformer_blocks.0.0.to_qkv.weight` for (0, "qkv")
 */
export function exitBlockWeightName(j: number, role: LayerWeightName): string {
  return `${EXIT_BLOCKS_PREFIX}.${j}.${LAYER_WEIGHTS[role].torch}`;
}

/**
 * The checkpoint name of an exit head weight.
 *
 * @param role the weight's role
 * @returns e.g. `to_early_exit_logits.1.weight`
 */
export function exitWeightName(role: ExitWeightName): string {
  return EXIT_WEIGHTS[role].torch;
}

/** The exit branch's shape: its head after block k (0: none) and its extra blocks. */
export interface ExitShape {
  /** The reference's early_exit_layer (0: no exit head). */
  earlyExitLayer: number;
  /** The exit branch's extra blocks. */
  earlyExitExtraBlocks: number;
}

/**
 * The model's weights by role, each looked up by its checkpoint name.
 *
 * @param depth number of layers
 * @param byName the value of a checkpoint name (e.g. a parameter or gradient buffer)
 * @param exit the exit head and its extra blocks (default: none)
 * @returns the named record
 */
export function namedWeights<T>(
  depth: number,
  byName: (name: string) => T,
  exit?: ExitShape,
): ModelWeights<T> {
  const block = (name: (r: LayerWeightName) => string) =>
    Object.fromEntries(
      (Object.keys(LAYER_WEIGHTS) as LayerWeightName[]).map((r) => [r, byName(name(r))]),
    ) as unknown as LayerWeights<T>;
  const hasExit = (exit?.earlyExitLayer ?? 0) > 0;
  return {
    tokenEmbedding: byName(modelWeightName("tokenEmbedding")),
    layers: Array.from({ length: depth }, (_, i) => block((r) => layerWeightName(i, r))),
    finalNorm: byName(modelWeightName("finalNorm")),
    logitsWeight: byName(modelWeightName("logitsWeight")),
    exitLayers: Array.from(
      { length: hasExit ? exit!.earlyExitExtraBlocks : 0 },
      (_, j) => block((r) => exitBlockWeightName(j, r)),
    ),
    exitNorm: hasExit ? byName(exitWeightName("exitNorm")) : undefined,
    exitWeight: hasExit ? byName(exitWeightName("exitWeight")) : undefined,
  };
}

/** One parameter tensor's checkpoint name and torch shape. */
export interface ParamSpec {
  /** PyTorch state_dict key. */
  name: string;
  /** torch shape (Linear weights are `[out, in]`). */
  shape: number[];
  /** How PyTorch initialises it: Linear `U(±1/√fanIn)`, embedding `N(0,1)`, norm weights 1. */
  init: ParamInit;
}

/** Parameter names and shapes, in checkpoint order (not including `rotary_emb.inv_freq`). */
export function paramSpecs(c: FullDecoderConfig): ParamSpec[] {
  const sizes: Sizes = { C: c.dim, HD: c.heads * c.dimHead, F: c.ffMult * c.dim, V: c.numTokens };
  const spec = (name: string, e: WeightEntry): ParamSpec => ({
    name,
    shape: e.shape(sizes),
    init: e.init(sizes),
  });
  const specs = [spec(modelWeightName("tokenEmbedding"), MODEL_WEIGHTS.tokenEmbedding)];
  for (let i = 0; i < c.depth; i++) {
    for (const role of Object.keys(LAYER_WEIGHTS) as LayerWeightName[]) {
      specs.push(spec(layerWeightName(i, role), LAYER_WEIGHTS[role]));
    }
  }
  specs.push(
    spec(modelWeightName("finalNorm"), MODEL_WEIGHTS.finalNorm),
    spec(modelWeightName("logitsWeight"), MODEL_WEIGHTS.logitsWeight),
  );
  // the exit branch last (the reference registers it after to_logits), so a model's other
  // weights draw the same initial values with or without one
  if ((c.earlyExitLayer ?? 0) > 0) {
    for (let j = 0; j < (c.earlyExitExtraBlocks ?? 0); j++) {
      for (const role of Object.keys(LAYER_WEIGHTS) as LayerWeightName[]) {
        specs.push(spec(exitBlockWeightName(j, role), LAYER_WEIGHTS[role]));
      }
    }
    specs.push(
      spec(exitWeightName("exitNorm"), EXIT_WEIGHTS.exitNorm),
      spec(exitWeightName("exitWeight"), EXIT_WEIGHTS.exitWeight),
    );
  }
  return specs;
}

/** Mulberry32 seeded PRNG: floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Initial values for every parameter, PyTorch's default schemes from a seeded generator. */
export function initParams(
  c: FullDecoderConfig,
  seed: number,
): Map<string, Float32Array<ArrayBuffer>> {
  const r = seededRandom(seed);
  const out = new Map<string, Float32Array<ArrayBuffer>>();
  for (const s of paramSpecs(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const d = new Float32Array(n);
    const init = s.init;
    if (init.kind === "ones") d.fill(1);
    else if (init.kind === "uniform") {
      const bound = 1 / Math.sqrt(init.fanIn);
      for (let i = 0; i < n; i++) d[i] = (2 * r() - 1) * bound;
    } else {
      for (let i = 0; i < n; i++) {
        const u = Math.max(r(), 1e-12), v = r();
        d[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
      }
    }
    out.set(s.name, d);
  }
  return out;
}
