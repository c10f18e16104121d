/**
 * safetensors reading and writing (float32 little-endian out; F32, F16, BF16 and F64 in), strict
 * about the format, with errors that name the file, the tensor and the rule.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: {…} }`, then the data;
 * offsets count from the end of the header.
 *
 * {@link readSafetensors} enforces the rules of the reference implementation (the Rust
 * `safetensors` crate's `SafeTensors::read_metadata` and `Metadata::validate`), so a file it
 * accepts loads the same everywhere, plus three the reference leaves to its JSON library:
 *
 * 1. the file has at least 8 bytes; the header length N is at most 100,000,000 and 8 + N is
 *    within the file;
 * 2. the header is UTF-8, starts with `{`, is one JSON object, and anything after it is padding of
 *    spaces (0x20), as the reference writer pads to 8 bytes;
 * 3. no key appears twice in any object (JSON.parse, like serde's maps, silently keeps the last);
 * 4. `__metadata__`, when present, is an object whose values are all strings;
 * 5. every other entry is an object with `dtype` (a string; F32, F16, BF16 and F64 are read, the
 *    reference's other dtypes are named as unsupported), `shape` (non-negative integers) and
 *    `data_offsets` (two integers `[begin, end]`, begin ≤ end ≤ the data's length); other fields
 *    are ignored, as the reference ignores them;
 * 6. `end − begin` is the shape's element count times the dtype's size;
 * 7. sorted by offsets, the tensors cover the data section exactly: the first begins at 0, each
 *    begins where the previous ends (no gap, no overlap), and the last ends at the end of the file
 *    (no trailing bytes).
 *
 * Values are not checked here (a NaN is a valid float); model loading refuses non-finite weights
 * (see checkpoint.ts).
 *
 * @module
 */

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

/** The reference's limit on the header length (its MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };
/** The reference's other dtypes: named as unsupported rather than unknown. */
const OTHER_DTYPES = new Set([
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "I16",
  "U16",
  "I32",
  "U32",
  "I64",
  "U64",
]);
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

/** A JSON value with its kind spelled for messages: `null`, `array [1,2]`, `number 3`, `string "x"`. */
export function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (v === undefined) return "nothing";
  if (Array.isArray(v)) return `array ${clip(JSON.stringify(v))}`;
  if (typeof v === "string") return `string ${clip(JSON.stringify(v))}`;
  if (typeof v === "object") return `object ${clip(JSON.stringify(v))}`;
  return `${typeof v} ${String(v)}`;
}

function clip(s: string, max = 60): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/**
 * A strict JSON parser for the header: standard JSON (RFC 8259), except that a key repeated in an
 * object is an error (JSON.parse keeps the last one silently). Returns the value and where it ends.
 */
function parseJson(text: string, fail: (msg: string) => never): { value: unknown; end: number } {
  let i = 0;
  const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  // control characters must be escaped inside JSON strings, so the class excludes them
  // deno-lint-ignore no-control-regex
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const bad = (what: string): never => fail(`header is not valid JSON: ${what} at character ${i}`);
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
  };
  const str = (): string => {
    STRING.lastIndex = i;
    const m = STRING.exec(text);
    if (!m) return bad("a malformed string");
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const value = (path: string, depth: number): unknown => {
    if (depth > 64) bad("nesting deeper than 64");
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: Record<string, unknown> = {};
      const seen = new Set<string>();
      ws();
      if (text[i] === "}") return i++, obj;
      for (;;) {
        ws();
        if (text[i] !== '"') bad("expected a key");
        const key = str();
        if (seen.has(key)) fail(`duplicate key ${JSON.stringify(key)} in ${path}`);
        seen.add(key);
        ws();
        if (text[i] !== ":") bad("expected ':'");
        i++;
        const v = value(path === "the header" ? JSON.stringify(key) : `${path}.${key}`, depth + 1);
        // defineProperty: a key "__proto__" is data, not the prototype
        Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true });
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") return i++, obj;
        else bad("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: unknown[] = [];
      ws();
      if (text[i] === "]") return i++, arr;
      for (;;) {
        arr.push(value(path, depth + 1));
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") return i++, arr;
        else bad("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, i)) return i += word.length, v;
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return bad(i >= text.length ? "unexpected end" : `unexpected ${JSON.stringify(c)}`);
    i += m[0].length;
    return Number(m[0]);
  };
  const v = value("the header", 0);
  return { value: v, end: i };
}

/**
 * Parses a safetensors file, enforcing the format (see the module doc for the rules).
 *
 * @param bytes the whole file
 * @param source a name for error messages (a path, or "checkpoint")
 * @returns tensors (as float32) and metadata
 * @throws Error `specdec: <source> is not a valid safetensors file: …` naming the tensor and the
 *   rule: truncated file, header length, bad JSON, duplicate keys, bad metadata, unknown dtype,
 *   bad shape or offsets, size mismatch, gaps, overlaps or trailing bytes in the data section
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
  if (!(bytes instanceof Uint8Array)) {
    fail(`expected the file's bytes as a Uint8Array, got ${describeValue(bytes)}`);
  }
  if (bytes.byteLength < 8) {
    fail(`only ${bytes.byteLength} bytes; the 8-byte header length is missing`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len64 = view.getBigUint64(0, true);
  if (len64 > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${len64} is over the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  const headerLen = Number(len64);
  if (headerLen > bytes.byteLength - 8) {
    fail(`header length ${headerLen} runs past the end of the file (${bytes.byteLength} bytes)`);
  }
  if (headerLen === 0 || bytes[8] !== 0x7b) {
    fail(
      headerLen === 0
        ? "header length is 0; the header must be a JSON object"
        : `header is not a JSON object: it must start with '{', found byte ` +
          `0x${bytes[8].toString(16).padStart(2, "0")}`,
    );
  }
  let text = "";
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      bytes.subarray(8, 8 + headerLen),
    );
  } catch {
    fail("header is not valid UTF-8");
  }
  const { value, end } = parseJson(text, fail);
  for (let k = end; k < text.length; k++) {
    if (text.charCodeAt(k) !== 0x20) {
      fail(
        `header has ${JSON.stringify(text[k])} after its JSON object at character ${k} ` +
          `(only spaces may pad the header; is the header length ${headerLen} right?)`,
      );
    }
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail("header is not a JSON object");
  }
  const header = value as Record<string, unknown>;
  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] =
    [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
        fail(`"__metadata__" must be an object of strings, got ${describeValue(raw)}`);
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") {
          fail(
            `"__metadata__" entry ${JSON.stringify(k)} must be a string, got ${describeValue(v)}`,
          );
        }
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: true });
      }
      continue;
    }
    const t = `tensor ${JSON.stringify(name)}`;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      fail(`${t} must be an object { dtype, shape, data_offsets }, got ${describeValue(raw)}`);
    }
    const info = raw as Record<string, unknown>;
    const dtype = info.dtype;
    if (typeof dtype !== "string") {
      fail(`${t} has no dtype (a string like "F32"), got ${describeValue(dtype)}`);
    }
    if (!DTYPE_BYTES[dtype as string]) {
      fail(
        `${t} has dtype ${JSON.stringify(dtype)} (${
          OTHER_DTYPES.has(dtype as string) ? "not read by specdec" : "unknown"
        }); supported: ${Object.keys(DTYPE_BYTES).join(", ")}`,
      );
    }
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(
        `${t} has an invalid shape ${describeValue(shape)} (expected an array of ` +
          `non-negative integers)`,
      );
    }
    const offs = info.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(
        `${t} has invalid data_offsets: ${describeValue(offs)} (expected [begin, end], ` +
          `non-negative integers)`,
      );
    }
    const [begin, end] = offs as [number, number];
    if (begin > end || end > dataLen) {
      fail(
        `${t} data_offsets [${begin}, ${end}] are out of range (data is ${dataLen} bytes)`,
      );
    }
    const width = DTYPE_BYTES[dtype as string];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (count * width !== end - begin) {
      fail(
        `${t} of shape [${shape}] and dtype ${dtype} needs ${count * width} bytes, ` +
          `its data_offsets span ${end - begin}`,
      );
    }
    entries.push({ name, dtype: dtype as string, shape: shape as number[], begin, end });
  }
  // the tensors must tile the data section: sorted by offsets, each begins where the last ended
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  for (let k = 0; k < entries.length; k++) {
    const e = entries[k], prev = entries[k - 1];
    if (e.begin < covered) {
      fail(`tensors "${prev.name}" and "${e.name}" overlap in the data section`);
    }
    if (e.begin > covered) {
      fail(
        `the data section has a gap: bytes [${covered}, ${e.begin}) ` +
          `${
            prev ? `between tensors "${prev.name}" and "${e.name}"` : `before tensor "${e.name}"`
          }` +
          ` belong to no tensor`,
      );
    }
    covered = e.end;
  }
  if (covered !== dataLen) {
    const last = entries.at(-1);
    fail(
      `the data section has ${dataLen - covered} trailing bytes after ` +
        `${last ? `the last tensor "${last.name}"` : "a header with no tensors"} (tensors cover ` +
        `${covered} of ${dataLen} bytes; is the header length ${headerLen} right?)`,
    );
  }
  const tensors = new Map<string, Tensor>();
  for (const { name, dtype, shape, begin } of entries) {
    tensors.set(name, { shape, data: decode(bytes, view, dataStart + begin, dtype, shape) });
  }
  return { tensors, metadata };
}

/** Converts one tensor's bytes at `at` to float32. */
function decode(
  bytes: Uint8Array,
  view: DataView,
  at: number,
  dtype: string,
  shape: number[],
): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  if (dtype === "F32" && LITTLE_ENDIAN) {
    // bulk copy (the offset need not be 4-aligned in the file, so copy the bytes first)
    return new Float32Array(bytes.slice(at, at + 4 * count).buffer);
  }
  const data = new Float32Array(count);
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
  return data;
}

/**
 * Serialises float32 tensors as safetensors (F32, little-endian, header padded with spaces to 8
 * bytes, tensors in name order), as the reference writer lays them out.
 *
 * @param tensors tensors by name
 * @param metadata optional `__metadata__` strings
 * @returns the file's bytes
 * @throws Error when a tensor's shape disagrees with its data
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
