/**
 * safetensors reading and writing (float32 little-endian out; F32, F16, BF16 and F64 in), with
 * errors that name the file, the tensor and the limit.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: {…} }`, then the data;
 * offsets count from the end of the header.
 *
 * A model checkpoint is such a file with the reference's PyTorch state_dict names (see params.ts);
 * {@link readModelCheckpoint} and {@link writeModelCheckpoint} convert between it and a config plus
 * parameter values.
 *
 * @module
 */
import { type FullDecoderConfig, resolveConfig } from "./config.ts";
import { layerWeightName, modelWeightName, paramSpecs, ROTARY_INV_FREQ } from "./params.ts";

/** A float32 tensor with its shape. */
export interface Tensor {
  /** Dimensions, outermost first (torch order). */
  shape: number[];
  /** Row-major values. */
  data: Float32Array;
}

/** A parsed safetensors file. */
export interface Safetensors {
  /** Tensors by name, converted to float32. */
  tensors: Map<string, Tensor>;
  /** The `__metadata__` string map (empty when absent). */
  metadata: Record<string, string>;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
// one shared word to reinterpret a bfloat16 (the top half of a float32) without allocating
const bf16Bits = new Uint32Array(1);
const bf16Value = new Float32Array(bf16Bits.buffer);

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/**
 * Parses a safetensors file.
 *
 * @param bytes the whole file
 * @param source a name for error messages (a path, or "checkpoint")
 * @returns tensors (as float32) and metadata
 * @throws Error naming the source and the problem: truncated file, bad JSON, unknown dtype,
 *   offsets out of range or overlapping, shape/size mismatch
 * @example
 * ```ts
 * import { readSafetensors, writeSafetensors } from "@x/specdec";
 * const bytes = writeSafetensors({ w: { shape: [2], data: new Float32Array([1, 2]) } });
 * console.log(readSafetensors(bytes).tensors.get("w")?.data); // Float32Array [1, 2]
 * ```
 */
export function readSafetensors(bytes: Uint8Array, source = "checkpoint"): Safetensors {
  const fail = (msg: string): never => {
    throw new Error(`specdec: ${source} is not a valid safetensors file: ${msg}`);
  };
  if (!(bytes instanceof Uint8Array)) fail("expected the file's bytes as a Uint8Array");
  if (bytes.byteLength < 8) {
    fail(`only ${bytes.byteLength} bytes; the 8-byte header length is missing`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.byteLength - 8) {
    fail(`header length ${headerLen} runs past the end of the file (${bytes.byteLength} bytes)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)),
    );
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  const metadata: Record<string, string> = {};
  const ranges: [number, number, string][] = [];
  const tensors = new Map<string, Tensor>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (raw && typeof raw === "object") {
        for (const [k, v] of Object.entries(raw)) metadata[k] = String(v);
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!info || typeof info !== "object") fail(`tensor "${name}" has no description`);
    const dtype = String(info.dtype);
    const width = DTYPE_BYTES[dtype];
    if (!width) {
      fail(
        `tensor "${name}" has dtype ${dtype}; supported: ${Object.keys(DTYPE_BYTES).join(", ")}`,
      );
    }
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      fail(`tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offs = info.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0)
    ) fail(`tensor "${name}" has invalid data_offsets ${JSON.stringify(offs)}`);
    const [begin, end] = offs as [number, number];
    if (begin > end || end > dataLen) {
      fail(
        `tensor "${name}" data_offsets [${begin}, ${end}] are out of range (data is ${dataLen} bytes)`,
      );
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (count * width !== end - begin) {
      fail(
        `tensor "${name}" of shape [${shape}] and dtype ${dtype} needs ${count * width} bytes, ` +
          `its data_offsets span ${end - begin}`,
      );
    }
    ranges.push([begin, end, name]);
    const at = dataStart + begin;
    let data: Float32Array;
    if (dtype === "F32" && LITTLE_ENDIAN) {
      // bulk copy (the offset need not be 4-aligned in the file, so copy the bytes first)
      data = new Float32Array(bytes.slice(at, at + 4 * count).buffer);
      tensors.set(name, { shape: shape as number[], data });
      continue;
    }
    data = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      switch (dtype) {
        case "F32":
          data[i] = view.getFloat32(at + 4 * i, true);
          break;
        case "F64":
          data[i] = view.getFloat64(at + 8 * i, true);
          break;
        case "F16":
          data[i] = f16ToF32(view.getUint16(at + 2 * i, true));
          break;
        case "BF16":
          bf16Bits[0] = view.getUint16(at + 2 * i, true) << 16;
          data[i] = bf16Value[0];
          break;
      }
    }
    tensors.set(name, { shape: shape as number[], data });
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      fail(`tensors "${ranges[i - 1][2]}" and "${ranges[i][2]}" overlap in the data section`);
    }
  }
  return { tensors, metadata };
}

/**
 * Serialises float32 tensors as safetensors (F32, little-endian, header padded to 8 bytes).
 *
 * @param tensors tensors by name
 * @param metadata optional `__metadata__` strings
 * @returns the file's bytes
 * @example
 * ```ts
 * import { writeSafetensors } from "@x/specdec";
 * const bytes = writeSafetensors({ w: { shape: [2, 1], data: new Float32Array([1, 2]) } });
 * await Deno.writeFile("w.safetensors", bytes);
 * ```
 */
export function writeSafetensors(
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new Error(
        `specdec: tensor "${name}" has shape [${t.shape}] (${count} values) but ${t.data.length} values`,
      );
    }
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + 4 * count] };
    offset += 4 * count;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const name of names) {
    const d = tensors[name].data;
    const bytes = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    // Float32Array is host-endian; WebGPU hosts are little-endian in practice, but be exact:
    if (LITTLE_ENDIAN) out.set(bytes, at);
    else for (let i = 0; i < d.length; i++) view.setFloat32(at + 4 * i, d[i], true);
    at += d.byteLength;
  }
  return out;
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
 * Reads a model checkpoint: safetensors with PyTorch state_dict names (F32, F16 or BF16). The
 * config is inferred from tensor shapes ({@link inferConfig}); every parameter must be present
 * with its shape, and nothing else.
 *
 * @param bytes the safetensors file
 * @param options `maxSeqLen` for the config; `source` names the file in errors
 * @returns config, parameter values and rotary frequencies
 * @throws Error naming missing, unexpected or mis-shaped tensors
 */
export function readModelCheckpoint(
  bytes: Uint8Array,
  options: { maxSeqLen?: number; source?: string } = {},
): ModelCheckpoint {
  const source = options.source ?? "checkpoint";
  const { tensors, metadata } = readSafetensors(bytes, source);
  const config = inferConfig(tensors, source, options.maxSeqLen, metadata);
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
  return { config, values, invFreq: tensors.get(ROTARY_INV_FREQ)?.data };
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
  const { heads, dimHead, ffMult } = config;
  return writeSafetensors(tensors, {
    format: "pt",
    specdec: JSON.stringify({ heads, dimHead, ffMult }),
  });
}

/**
 * Infers a model config from checkpoint tensor shapes: numTokens and dim from the token
 * embedding, depth from the layers present, dimHead from `rotary_emb.inv_freq` (else the metadata
 * specdec writes, else 64), heads from `to_qkv`, ffMult from the first FF projection.
 *
 * @param tensors the checkpoint's tensors
 * @param source names the file in errors
 * @param maxSeqLen the config's maxSeqLen (default 4096)
 * @param metadata the file's `__metadata__`
 * @returns the full config
 * @throws Error naming the tensor whose shape does not fit
 */
export function inferConfig(
  tensors: Map<string, Tensor>,
  source: string,
  maxSeqLen?: number,
  metadata: Record<string, string> = {},
): FullDecoderConfig {
  const need = (name: string): Tensor => {
    const t = tensors.get(name);
    if (!t) throw new Error(`specdec: ${source} is missing tensor "${name}"`);
    return t;
  };
  const embName = modelWeightName("tokenEmbedding");
  const emb = need(embName);
  if (emb.shape.length !== 2) {
    throw new Error(
      `specdec: ${source} tensor "${embName}" has shape [${emb.shape}], expected [numTokens, dim]`,
    );
  }
  const [numTokens, dim] = emb.shape;
  let depth = 0;
  while (
    tensors.has(layerWeightName(depth, "norm")) || tensors.has(layerWeightName(depth, "qkv"))
  ) depth++;
  const qkvName = layerWeightName(0, "qkv");
  if (depth === 0) throw new Error(`specdec: ${source} has no layers ("${qkvName}" missing)`);
  const inv = tensors.get(ROTARY_INV_FREQ);
  // dimHead: from rotary_emb.inv_freq, else from the metadata specdec writes, else the default 64
  let saved: { dimHead?: number } = {};
  try {
    saved = JSON.parse(metadata.specdec ?? "{}");
  } catch { /* foreign metadata: ignore */ }
  const dimHead = inv ? 2 * inv.data.length : (saved.dimHead ?? 64);
  const qkv = need(qkvName);
  const inner = qkv.shape[0] / 3;
  const heads = inner / dimHead;
  if (!Number.isInteger(heads) || heads < 1) {
    throw new Error(
      `specdec: ${source} tensor "${qkvName}" has shape [${qkv.shape}], which is not ` +
        `[3·heads·${dimHead}, ${dim}] for dimHead ${dimHead} (from rotary_emb.inv_freq)`,
    );
  }
  const ffInName = layerWeightName(0, "ffIn");
  const ff = need(ffInName);
  const ffMult = ff.shape[0] / dim;
  if (!Number.isInteger(ffMult) || ffMult < 1) {
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
