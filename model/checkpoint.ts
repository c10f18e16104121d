/**
 * Model checkpoints: safetensors files (see safetensors.ts, re-exported here) with the reference's
 * PyTorch state_dict names (see params.ts). {@link readModelCheckpoint} and
 * {@link writeModelCheckpoint} convert between such a file and a config plus parameter values.
 *
 * Loading is strict: the file must be a valid safetensors file, every parameter present with its
 * shape and nothing else, every weight finite (unless `allowNonFinite`), and the config must
 * follow from the file without guessing: `dimHead` comes from `rotary_emb.inv_freq`, the caller's
 * `heads`/`dimHead`, or the `specdec` metadata this library writes; when none is there and the
 * shapes allow more than one heads × dimHead split, loading is refused with the possible splits.
 *
 * @module
 */
import { type FullDecoderConfig, resolveConfig } from "./config.ts";
import {
  exitBlockWeightName,
  exitWeightName,
  layerWeightName,
  modelWeightName,
  paramSpecs,
  ROTARY_INV_FREQ,
} from "./params.ts";
import { describeValue, readSafetensors, type Tensor, writeSafetensors } from "./safetensors.ts";

export {
  MAX_HEADER_BYTES,
  readSafetensors,
  type Safetensors,
  type Tensor,
  writeSafetensors,
} from "./safetensors.ts";

/** Options of {@link readModelCheckpoint} (and `Decoder.fromSafetensors`). */
export interface CheckpointOptions {
  /** The config's maxSeqLen (default 4096). */
  maxSeqLen?: number;
  /** Names the file in errors (default "checkpoint"). */
  source?: string;
  /**
   * Attention heads, for a file without `rotary_emb.inv_freq` and specdec metadata (PyTorch does
   * not always save that buffer); checked against the file when it has them.
   */
  heads?: number;
  /** Width of each head, as `heads` (give either; the other follows from `to_qkv`). */
  dimHead?: number;
  /**
   * Load weights that are NaN or ±Infinity (with one console.warn naming them) instead of
   * refusing the file. Default false.
   */
  allowNonFinite?: boolean;
  /**
   * The exit head's layer k, for a file with `to_early_exit_logits.*` tensors but no specdec
   * metadata (a PyTorch file: the names do not say k); checked against the metadata when both.
   */
  earlyExitLayer?: number;
}

/** A model as a checkpoint holds it. */
export interface ModelCheckpoint {
  /** The config, inferred from tensor shapes. */
  config: FullDecoderConfig;
  /** Every parameter's values by checkpoint name. */
  values: Map<string, Float32Array<ArrayBuffer>>;
  /** Rotary inverse frequencies `(D/2)`, when the file has `rotary_emb.inv_freq`. */
  invFreq?: Float32Array;
}

/**
 * Reads a model checkpoint: safetensors with PyTorch state_dict names (F32, F16, BF16 or F64). The
 * config is inferred from tensor shapes ({@link inferConfig}); every parameter must be present
 * with its shape, and nothing else; every weight must be finite unless `allowNonFinite`.
 *
 * @param bytes the safetensors file
 * @param options `maxSeqLen` for the config; `heads`/`dimHead` for a file that does not say;
 *   `allowNonFinite`; `source` names the file in errors
 * @returns config, parameter values and rotary frequencies
 * @throws Error naming the file and the tensor: an invalid file, missing, unexpected, mis-shaped
 *   or non-finite tensors, a config it cannot infer, or a bad option
 */
export function readModelCheckpoint(
  bytes: Uint8Array,
  options: CheckpointOptions = {},
): ModelCheckpoint {
  if (options === null || typeof options !== "object") {
    throw new Error(`specdec: checkpoint options must be an object, got ${describeValue(options)}`);
  }
  const source = options.source ?? "checkpoint";
  const { tensors, metadata } = readSafetensors(bytes, source);
  const config = inferConfig(tensors, source, options.maxSeqLen, metadata, options);
  const exit = inferEarlyExit(tensors, source, metadata, options.earlyExitLayer, config.depth);
  Object.assign(config, resolveConfig({ ...config, ...exit }));
  const expected = paramSpecs(config);
  const known = new Set(expected.map((s) => s.name));
  known.add(ROTARY_INV_FREQ);
  const extra = [...tensors.keys()].filter((k) => !known.has(k));
  if (extra.length) {
    throw new Error(
      `specdec: ${source} has unexpected tensors: ${extra.slice(0, 5).join(", ")}` +
        `${extra.length > 5 ? ` (+${extra.length - 5} more)` : ""}`,
    );
  }
  const values = new Map<string, Float32Array<ArrayBuffer>>();
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
  const invFreq = tensors.get(ROTARY_INV_FREQ)?.data;
  checkFinite(source, [...values, ...(invFreq ? [[ROTARY_INV_FREQ, invFreq] as const] : [])], {
    allow: options.allowNonFinite === true,
  });
  return { config, values, invFreq };
}

/**
 * Refuses (or, when allowed, warns once about) tensors holding NaN or ±Infinity: such a weight
 * makes every logit NaN, which no sampler can turn into a token.
 */
function checkFinite(
  source: string,
  tensors: Iterable<readonly [string, Float32Array]>,
  { allow }: { allow: boolean },
): void {
  const bad: string[] = [];
  for (const [name, data] of tensors) {
    let nan = 0, inf = 0;
    for (let i = 0; i < data.length; i++) {
      const v = data[i];
      if (v - v !== 0) Number.isNaN(v) ? nan++ : inf++; // v - v is NaN for NaN and ±Infinity
    }
    if (nan || inf) {
      const what = [nan && `${nan} NaN`, inf && `${inf} ±Infinity`].filter(Boolean).join(" and ");
      bad.push(`"${name}" (${what} of ${data.length} values)`);
    }
  }
  if (!bad.length) return;
  const list = `${bad.slice(0, 5).join(", ")}${bad.length > 5 ? ` (+${bad.length - 5} more)` : ""}`;
  if (!allow) {
    throw new Error(
      `specdec: ${source} has non-finite weights in ${list}; refusing to load it ` +
        `(pass { allowNonFinite: true } to load it anyway)`,
    );
  }
  console.warn(`specdec: warning: ${source} has non-finite weights in ${list}; loading anyway`);
}

/**
 * Writes a model checkpoint: safetensors (F32) with PyTorch state_dict names, including
 * `rotary_emb.inv_freq`, loadable by `torch` + `safetensors` into the reference `Decoder`. The
 * metadata records heads, dimHead and ffMult.
 *
 * @param config the model's config
 * @param values parameter values in {@link paramSpecs} order
 * @param invFreq rotary inverse frequencies `(D/2)`
 * @returns the file's bytes
 */
export function writeModelCheckpoint(
  config: FullDecoderConfig,
  values: Float32Array[],
  invFreq: Float32Array,
): Uint8Array<ArrayBuffer> {
  const tensors: Record<string, Tensor> = {};
  paramSpecs(config).forEach((s, i) => tensors[s.name] = { shape: s.shape, data: values[i] });
  tensors[ROTARY_INV_FREQ] = { shape: [invFreq.length], data: invFreq };
  const { heads, dimHead, ffMult, earlyExitLayer } = config;
  // the names do not say the exit head's layer, so the metadata does
  const exit = earlyExitLayer > 0 ? { earlyExitLayer } : {};
  return writeSafetensors(tensors, {
    format: "pt",
    specdec: JSON.stringify({ heads, dimHead, ffMult, ...exit }),
  });
}

/**
 * The exit branch of a checkpoint: the extra blocks counted from their names, k from the specdec
 * metadata or the caller (which must agree); a head without k, or k without a head, is refused.
 */
function inferEarlyExit(
  tensors: Map<string, Tensor>,
  source: string,
  metadata: Record<string, string>,
  given: number | undefined,
  depth: number,
): { earlyExitLayer: number; earlyExitExtraBlocks: number } {
  const head = exitWeightName("exitWeight");
  let blocks = 0;
  while (
    tensors.has(exitBlockWeightName(blocks, "norm")) ||
    tensors.has(exitBlockWeightName(blocks, "qkv"))
  ) blocks++;
  let saved: unknown;
  try {
    saved = metadata.specdec === undefined ? undefined : JSON.parse(metadata.specdec);
  } catch { /* savedSplit reports bad metadata */ }
  const fromFile = (saved as Record<string, unknown> | undefined)?.earlyExitLayer;
  if (fromFile !== undefined && (!Number.isSafeInteger(fromFile) || (fromFile as number) < 1)) {
    throw new Error(
      `specdec: ${source} has invalid "specdec" metadata: earlyExitLayer must be a positive ` +
        `integer, got ${describeValue(fromFile)}`,
    );
  }
  if (given !== undefined && (!Number.isSafeInteger(given) || given < 0 || given >= depth)) {
    throw new Error(
      `specdec: option earlyExitLayer must be an integer from 1 to depth − 1 = ${depth - 1} ` +
        `(or 0), got ${describeValue(given)} (loading ${source})`,
    );
  }
  if (given !== undefined && fromFile !== undefined && given !== fromFile) {
    throw new Error(
      `specdec: ${source}: option earlyExitLayer ${given} disagrees with the specdec metadata's ` +
        `earlyExitLayer ${fromFile}`,
    );
  }
  const k = (fromFile as number | undefined) ?? given ?? 0;
  if (!tensors.has(head)) {
    if (k > 0 || blocks > 0) {
      throw new Error(
        `specdec: ${source} is missing tensor "${head}": ` +
          (k > 0 ? `earlyExitLayer is ${k}` : `it has "${exitBlockWeightName(0, "qkv")}"`) +
          ` but no exit head`,
      );
    }
    return { earlyExitLayer: 0, earlyExitExtraBlocks: 0 };
  }
  if (k === 0) {
    throw new Error(
      `specdec: ${source} has an exit head ("${head}") but does not say after which layer ` +
        `(no earlyExitLayer in its specdec metadata): pass { earlyExitLayer } to ` +
        `Decoder.fromSafetensors`,
    );
  }
  if (k >= depth) {
    throw new Error(
      `specdec: ${source}: earlyExitLayer ${k} is not below the ${depth} layers it has`,
    );
  }
  return { earlyExitLayer: k, earlyExitExtraBlocks: blocks };
}

/** The caller's or the file's heads/dimHead, as inferConfig weighs them. */
interface HeadSplit {
  heads?: number;
  dimHead?: number;
}

/** The `specdec` metadata this library writes (heads, dimHead, ffMult), validated. */
function savedSplit(source: string, metadata: Record<string, string>): HeadSplit {
  const raw = metadata.specdec;
  if (raw === undefined) return {};
  const bad = (why: string): never => {
    throw new Error(
      `specdec: ${source} has invalid "specdec" metadata ${JSON.stringify(raw)}: ${why}`,
    );
  };
  let saved: unknown;
  try {
    saved = JSON.parse(raw);
  } catch {
    bad("not JSON");
  }
  if (saved === null || typeof saved !== "object" || Array.isArray(saved)) {
    bad(`expected an object like {"heads":4,"dimHead":32}, got ${describeValue(saved)}`);
  }
  const out: HeadSplit = {};
  for (const k of ["heads", "dimHead"] as const) {
    const v = (saved as Record<string, unknown>)[k];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || (v as number) < 1) {
      bad(`${k} must be a positive integer, got ${describeValue(v)}`);
    }
    out[k] = v as number;
  }
  return out;
}

/**
 * Infers a model config from checkpoint tensor shapes: numTokens from the token embedding (and
 * the output projection), dim from the tensors that carry it (by majority, so the odd one out is
 * the one named), depth from the layers present, heads × dimHead from `to_qkv` split by
 * `rotary_emb.inv_freq`, the caller's `heads`/`dimHead`, or the metadata specdec writes (these
 * must agree), ffMult from the first FF projection. With none of them, a split is taken only when
 * it is the only one the shapes allow.
 *
 * @param tensors the checkpoint's tensors
 * @param source names the file in errors
 * @param maxSeqLen the config's maxSeqLen (default 4096)
 * @param metadata the file's `__metadata__`
 * @param given the caller's `heads` and/or `dimHead`
 * @returns the full config
 * @throws Error naming the tensor whose shape does not fit, the sources that disagree, or the
 *   possible splits and the option that picks one
 */
export function inferConfig(
  tensors: Map<string, Tensor>,
  source: string,
  maxSeqLen?: number,
  metadata: Record<string, string> = {},
  given: HeadSplit = {},
): FullDecoderConfig {
  const need = (name: string): Tensor => {
    const t = tensors.get(name);
    if (!t) throw new Error(`specdec: ${source} is missing tensor "${name}"`);
    return t;
  };
  for (const k of ["heads", "dimHead"] as const) {
    const v = given[k];
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) {
      throw new Error(
        `specdec: option ${k} must be a positive integer, got ${
          describeValue(v)
        } (loading ${source})`,
      );
    }
  }
  const embName = modelWeightName("tokenEmbedding");
  const emb = need(embName);
  if (emb.shape.length !== 2) {
    throw new Error(
      `specdec: ${source} tensor "${embName}" has shape [${emb.shape}], expected [numTokens, dim]`,
    );
  }
  const numTokens = emb.shape[0];
  const outName = modelWeightName("logitsWeight");
  const out = tensors.get(outName);
  if (out && out.shape.length === 2 && out.shape[0] !== numTokens) {
    throw new Error(
      `specdec: ${source} tensor "${embName}" has ${numTokens} rows but "${outName}" has ` +
        `${out.shape[0]}: both must be numTokens (shapes [${emb.shape}] and [${out.shape}])`,
    );
  }
  let depth = 0;
  while (
    tensors.has(layerWeightName(depth, "norm")) || tensors.has(layerWeightName(depth, "qkv"))
  ) depth++;
  const qkvName = layerWeightName(0, "qkv");
  if (depth === 0) throw new Error(`specdec: ${source} has no layers ("${qkvName}" missing)`);
  const dim = majorityDim(tensors, depth);
  const qkv = need(qkvName);
  const inner = qkv.shape.length === 2 && qkv.shape[0] % 3 === 0 ? qkv.shape[0] / 3 : NaN;
  const { dimHead, from } = headWidth(tensors, source, metadata, given, inner, qkvName, dim);
  const heads = inner / dimHead;
  if (!Number.isInteger(heads) || heads < 1 || qkv.shape[1] !== dim) {
    const known = Number.isInteger(dimHead);
    throw new Error(
      `specdec: ${source} tensor "${qkvName}" has shape [${qkv.shape}], which is not ` +
        `[3·heads·${known ? dimHead : "dimHead"}, ${dim}]` +
        (known ? ` for dimHead ${dimHead} (from ${from})` : ""),
    );
  }
  if (dimHead % 2 !== 0) {
    throw new Error(
      `specdec: ${source}: dimHead ${dimHead} (from ${from}) is odd; rotary needs an even dimHead`,
    );
  }
  const ffInName = layerWeightName(0, "ffIn");
  const ff = need(ffInName);
  const ffMult = ff.shape[0] / dim;
  if (ff.shape.length !== 2 || !Number.isInteger(ffMult) || ffMult < 1) {
    throw new Error(
      `specdec: ${source} tensor "${ffInName}" has shape [${ff.shape}], not [ffMult·${dim}, ${dim}]`,
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

/**
 * The model width by majority over every tensor that carries it (ties go to the token
 * embedding's), so that one mis-shaped tensor is reported by its own name, not its neighbours'.
 */
function majorityDim(tensors: Map<string, Tensor>, depth: number): number {
  const carriers: [string, number, number][] = [ // name, rank, axis holding dim
    [modelWeightName("tokenEmbedding"), 2, 1],
    [modelWeightName("logitsWeight"), 2, 1],
    [modelWeightName("finalNorm"), 1, 0],
  ];
  for (let l = 0; l < depth; l++) {
    carriers.push(
      [layerWeightName(l, "norm"), 1, 0],
      [layerWeightName(l, "qkv"), 2, 1],
      [layerWeightName(l, "attnOut"), 2, 0],
      [layerWeightName(l, "ffNorm"), 1, 0],
      [layerWeightName(l, "ffIn"), 2, 1],
      [layerWeightName(l, "ffOut"), 2, 0],
      [layerWeightName(l, "ffOutBias"), 1, 0],
    );
  }
  const votes = new Map<number, number>();
  for (const [name, rank, axis] of carriers) {
    const t = tensors.get(name);
    if (t && t.shape.length === rank) votes.set(t.shape[axis], (votes.get(t.shape[axis]) ?? 0) + 1);
  }
  let best = tensors.get(carriers[0][0])!.shape[1], most = votes.get(best) ?? 0;
  for (const [d, n] of votes) if (n > most) best = d, most = n;
  return best;
}

/**
 * dimHead from every source that states it (rotary_emb.inv_freq, the caller, the specdec
 * metadata), which must agree; else the only even split of `inner` = heads·dimHead, or an error
 * listing the splits.
 */
function headWidth(
  tensors: Map<string, Tensor>,
  source: string,
  metadata: Record<string, string>,
  given: HeadSplit,
  inner: number,
  qkvName: string,
  dim: number,
): { dimHead: number; from: string } {
  const stated: { dimHead: number; from: string }[] = [];
  const inv = tensors.get(ROTARY_INV_FREQ);
  if (inv) {
    if (inv.shape.length !== 1 || inv.shape[0] < 1) {
      throw new Error(
        `specdec: ${source} tensor "${ROTARY_INV_FREQ}" has shape [${inv.shape}], expected ` +
          `[dimHead/2]`,
      );
    }
    stated.push({ dimHead: 2 * inv.shape[0], from: ROTARY_INV_FREQ });
  }
  const saved = savedSplit(source, metadata);
  for (const [split, who] of [[given, "option"], [saved, "specdec metadata"]] as const) {
    if (split.dimHead !== undefined) {
      stated.push({ dimHead: split.dimHead, from: `${who} dimHead ${split.dimHead}` });
    }
    if (split.heads !== undefined) {
      if (Number.isInteger(inner) && inner % split.heads !== 0) {
        throw new Error(
          `specdec: ${source} tensor "${qkvName}" has shape [${3 * inner}, ${dim}], which is not ` +
            `[3·${split.heads}·dimHead, ${dim}] for ${who} heads ${split.heads}`,
        );
      }
      stated.push({ dimHead: inner / split.heads, from: `${who} heads ${split.heads}` });
    }
  }
  if (stated.length) {
    const first = stated[0];
    const other = stated.find((s) => s.dimHead !== first.dimHead);
    if (other && Number.isFinite(inner)) {
      throw new Error(
        `specdec: ${source}: ${first.from} gives dimHead ${first.dimHead} but ${other.from} ` +
          `gives ${fmt(other.dimHead)} (with "${qkvName}" of ${3 * inner} rows = 3·heads·dimHead)`,
      );
    }
    return first;
  }
  if (!Number.isInteger(inner)) {
    return { dimHead: NaN, from: "nowhere" }; // the caller reports the shape of to_qkv
  }
  const splits: string[] = [];
  let only = 0;
  for (let d = 2; d <= inner; d += 2) {
    if (inner % d === 0) splits.push(`${inner / d}×${d}`), only = d;
  }
  if (splits.length === 1) return { dimHead: only, from: `the only split of ${inner}` };
  throw new Error(
    `specdec: ${source} has no "${ROTARY_INV_FREQ}" and no specdec metadata, and ` +
      `"${qkvName}" of shape [${3 * inner}, ${dim}] allows ` +
      (splits.length
        ? `${splits.length} heads×dimHead splits: ${splits.join(", ")}; pass { heads } or ` +
          `{ dimHead } to Decoder.fromSafetensors to choose one`
        : `no split with an even dimHead (heads·dimHead = ${inner})`),
  );
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : `${+n.toFixed(3)} (not an integer)`;
}
