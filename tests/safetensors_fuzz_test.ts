/**
 * Fuzzes the safetensors reader: thousands of seeded mutations of small valid checkpoints (byte
 * flips, truncations, appended bytes, header length ± k, and header JSON edits: duplicate keys,
 * shifted offsets, gaps, trailing bytes, dtype and shape changes, odd metadata and entries, bad
 * padding, plus valid rewrites). Every mutant must either be rejected with an `Error` whose message
 * starts with "specdec: <source>" and names no `undefined`, or load exactly what its bytes say, as
 * decoded by an independent reader below. Mutants known to break a rule must be rejected. A sample
 * also goes through the model loader (CPU) and `Decoder.fromSafetensors` (GPU).
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import { readModelCheckpoint, readSafetensors, writeModelCheckpoint } from "../model/checkpoint.ts";
import { resolveConfig } from "../model/config.ts";
import { Decoder } from "../model/decoder.ts";
import { initParams, paramSpecs } from "../model/params.ts";
import { rotaryInvFreq } from "../kernels/rotary.ts";
import { gpuTest, rng } from "./helpers.ts";

const SOURCE = "fuzz.safetensors";
const CONFIG = resolveConfig({ numTokens: 8, dim: 8, depth: 1, heads: 2, dimHead: 4, ffMult: 1 });

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** A file from header JSON text and data bytes, the length field as given (default: exact). */
function assemble(json: string, data: Uint8Array, lengthField?: bigint): Uint8Array {
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** Splits a valid file into its header object (parsed), header text and data bytes. */
function split(
  file: Uint8Array,
): { header: Record<string, unknown>; text: string; data: Uint8Array } {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const text = new TextDecoder().decode(file.subarray(8, 8 + n));
  return { header: JSON.parse(text), text, data: file.slice(8 + n) };
}

/** Pads JSON with spaces to a multiple of 8, as the reference writer does. */
function pad(json: string): string {
  return json + " ".repeat((8 - (json.length % 8)) % 8);
}

/** The base files: the model's F32 checkpoint, and the same tensors in mixed dtypes. */
function bases(): Uint8Array[] {
  const values = initParams(CONFIG, 3);
  const f32 = writeModelCheckpoint(
    CONFIG,
    paramSpecs(CONFIG).map((s) => values.get(s.name)!),
    rotaryInvFreq(CONFIG.dimHead),
  );
  // mixed: F16, BF16, F64 and F32 in turn, in reverse name order (offsets need not follow names)
  const { header } = split(f32);
  const names = Object.keys(header).filter((k) => k !== "__metadata__").reverse();
  const dtypes = ["F16", "BF16", "F64", "F32"];
  const chunks: Uint8Array[] = [];
  const mixed: Record<string, unknown> = { __metadata__: header.__metadata__ };
  let off = 0;
  names.forEach((name, i) => {
    const e = header[name] as Entry;
    const dtype = dtypes[i % 4];
    const count = e.shape.reduce((a, b) => a * b, 1);
    const width = { F16: 2, BF16: 2, F64: 8, F32: 4 }[dtype]!;
    const bytes = new Uint8Array(count * width);
    const dv = new DataView(bytes.buffer);
    const r = rng(i);
    for (let k = 0; k < count; k++) {
      const v = (r() - 0.5) * 4;
      if (dtype === "F16") dv.setUint16(2 * k, 0x3c00 + Math.floor(r() * 0x3ff), true);
      else if (dtype === "BF16") dv.setUint16(2 * k, bf16(v), true);
      else if (dtype === "F64") dv.setFloat64(8 * k, v, true);
      else dv.setFloat32(4 * k, v, true);
    }
    mixed[name] = { dtype, shape: e.shape, data_offsets: [off, off + bytes.length] };
    chunks.push(bytes);
    off += bytes.length;
  });
  const data = new Uint8Array(off);
  let at = 0;
  for (const c of chunks) data.set(c, at), at += c.length;
  return [f32, assemble(pad(JSON.stringify(mixed)), data)];
}

function bf16(v: number): number {
  return new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16;
}

/** An independent reader of an accepted file's tensors (JSON.parse + DataView), for the oracle. */
function oracle(file: Uint8Array): Map<string, { shape: number[]; data: number[] }> {
  const { header, data } = split(file);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const covered = new Uint8Array(data.length);
  const out = new Map<string, { shape: number[]; data: number[] }>();
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as Entry;
    const [b, end] = e.data_offsets;
    for (let k = b; k < end; k++) covered[k]++;
    const count = e.shape.reduce((a, c) => a * c, 1);
    const vals: number[] = [];
    for (let k = 0; k < count; k++) {
      if (e.dtype === "F32") vals.push(dv.getFloat32(b + 4 * k, true));
      else if (e.dtype === "F64") vals.push(Math.fround(dv.getFloat64(b + 8 * k, true)));
      else if (e.dtype === "BF16") {
        vals.push(
          new Float32Array(new Uint32Array([dv.getUint16(b + 2 * k, true) << 16]).buffer)[0],
        );
      } else vals.push(half(dv.getUint16(b + 2 * k, true)));
    }
    out.set(name, { shape: e.shape, data: vals });
  }
  // what the reader accepted must tile the data exactly: every byte in exactly one tensor
  ok(covered.every((c) => c === 1), "an accepted file's tensors cover every data byte once");
  return out;
}

/** IEEE half to number, written independently of the reader's. */
function half(h: number): number {
  const sign = h >> 15 ? -1 : 1, exp = (h >> 10) & 31, man = h & 1023;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (exp ? Math.pow(2, exp - 15) * (1 + man / 1024) : Math.pow(2, -14) * (man / 1024));
}

function sameValues(got: Float32Array, want: number[], what: string): void {
  ok(got.length === want.length, `${what}: ${got.length} values, want ${want.length}`);
  for (let k = 0; k < want.length; k++) {
    if (!Object.is(got[k], want[k]) && !(Number.isNaN(got[k]) && Number.isNaN(want[k]))) {
      throw new Error(`${what}[${k}] = ${got[k]}, the bytes say ${want[k]}`);
    }
  }
}

/** One mutant: its bytes, its kind, and whether it breaks a rule for certain. */
interface Mutant {
  bytes: Uint8Array;
  kind: string;
  mustReject: boolean;
}

/** The seeded mutations of one base file. */
function mutate(base: Uint8Array, r: () => number): Mutant {
  const int = (n: number) => Math.floor(r() * n);
  const pick = <T>(xs: T[]): T => xs[int(xs.length)];
  const { header, text, data } = split(base);
  const n = text.length;
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const name = pick(names);
  const entry = () => header[name] as Entry;
  const rebuild = (h: unknown, d = data, kind = "json", mustReject = false): Mutant => ({
    bytes: assemble(pad(JSON.stringify(h)), d),
    kind,
    mustReject,
  });
  const op = int(24);
  switch (op) {
    case 0: { // random byte overwrites anywhere
      const b = base.slice();
      for (let k = 1 + int(3); k > 0; k--) b[int(b.length)] = int(256);
      return { bytes: b, kind: "byte flips", mustReject: false };
    }
    case 1: // a bit flipped in the data: always valid, values must match the bytes
    case 2: {
      const b = base.slice();
      const at = 8 + n + int(data.length);
      b[at] ^= 1 << int(8);
      return { bytes: b, kind: "data bit flip", mustReject: false };
    }
    case 3: // truncation
      return { bytes: base.slice(0, int(base.length)), kind: "truncation", mustReject: true };
    case 4: { // trailing bytes
      const b = new Uint8Array(base.length + 1 + int(16));
      b.set(base);
      return { bytes: b, kind: "trailing bytes", mustReject: true };
    }
    case 5: { // header length ± k
      const k = (1 + int(16)) * (r() < 0.5 ? -1 : 1);
      const b = base.slice();
      new DataView(b.buffer).setBigUint64(0, BigInt(n + k), true);
      return { bytes: b, kind: "header length ±k", mustReject: true };
    }
    case 6: { // a duplicate key, textually (JSON.stringify cannot write one)
      const dupOf = pick([...names, "__metadata__"]);
      const json = JSON.stringify(header);
      const dup = `${JSON.stringify(dupOf)}:${JSON.stringify(header[dupOf])},`;
      const where = r() < 0.5 ? 1 : json.indexOf(`,${JSON.stringify(names.at(-1))}`) + 1;
      return {
        bytes: assemble(pad(json.slice(0, where) + dup + json.slice(where)), data),
        kind: "duplicate key",
        mustReject: true,
      };
    }
    case 7: { // one tensor's offsets shifted
      const k = (1 + int(8)) * (r() < 0.5 ? -1 : 1);
      const [b, e] = entry().data_offsets;
      entry().data_offsets = [b + k, e + k];
      return rebuild(header, data, "offsets shifted", true);
    }
    case 8: { // one end moved
      const [b, e] = entry().data_offsets;
      entry().data_offsets = [b, e + (1 + int(8)) * (r() < 0.5 ? -1 : 1)];
      return rebuild(header, data, "end moved", true);
    }
    case 9: { // a gap: every tensor at or after one begins k bytes later, k bytes inserted
      const k = 1 + int(8);
      const at = entry().data_offsets[0];
      for (const m of names) {
        const e = header[m] as Entry;
        if (e.data_offsets[0] >= at) {
          e.data_offsets = [e.data_offsets[0] + k, e.data_offsets[1] + k];
        }
      }
      const d = new Uint8Array(data.length + k);
      d.set(data.subarray(0, at));
      d.set(data.subarray(at), at + k);
      return rebuild(header, d, "gap", true);
    }
    case 10: { // dtype changed
      const dtype = pick(["F32", "F16", "BF16", "F64", "I64", "U8", "f32", "", null, 3, ["F32"]]);
      const same = dtype === entry().dtype;
      (entry() as unknown as Record<string, unknown>).dtype = dtype;
      // a different width breaks the size rule; BF16↔F16 keeps it (the file stays valid)
      const w = (d: unknown) =>
        ({ F32: 4, F16: 2, BF16: 2, F64: 8 } as Record<string, number>)[d as string];
      return rebuild(header, data, "dtype changed", !same && w(dtype) === undefined);
    }
    case 11: { // shape changed
      const s = entry().shape;
      const shape = pick<unknown>([
        [...s].reverse(), // same count: valid
        [...s, 1], // same count: valid
        s.map((d) => d + 1),
        [s[0] * 2],
        [-1],
        [1.5],
        null,
        "8",
        [],
        [2 ** 53],
      ]);
      (entry() as unknown as Record<string, unknown>).shape = shape;
      return rebuild(header, data, "shape changed", false);
    }
    case 12: { // odd metadata
      header.__metadata__ = pick<unknown>([null, [], [1], 3, "pt", { format: 1 }, { a: null }, {
        a: { b: "c" },
      }, {}]);
      const ok = JSON.stringify(header.__metadata__) === "{}";
      return rebuild(header, data, "odd metadata", !ok);
    }
    case 13: { // odd tensor entry
      header[name] = pick<unknown>([null, [], [1, 2], 3, "F32", true, {}]);
      return rebuild(header, data, "odd entry", true);
    }
    case 14: { // a field removed
      delete (entry() as unknown as Record<string, unknown>)[
        pick(["dtype", "shape", "data_offsets"])
      ];
      return rebuild(header, data, "field removed", true);
    }
    case 15: { // data_offsets malformed
      (entry() as unknown as Record<string, unknown>).data_offsets = pick<unknown>([
        [0],
        [0, 4, 8],
        ["0", "4"],
        [-4, 0],
        [0.5, 4.5],
        null,
        { begin: 0, end: 4 },
      ]);
      return rebuild(header, data, "offsets malformed", true);
    }
    case 16: { // padding that is not spaces
      const c = pick(["\n", "\t", "\r", "\u0000", "x", "}"]);
      return {
        bytes: assemble(JSON.stringify(header) + c + "   ", data),
        kind: "bad padding",
        mustReject: true,
      };
    }
    case 17: { // valid rewrites: keys reordered, whitespace inside, longer padding, unknown field
      const keys = Object.keys(header);
      const shuffled: Record<string, unknown> = {};
      for (let k = keys.length - 1; k > 0; k--) { // Fisher–Yates (sort() with a random comparator is not reproducible)
        const j = int(k + 1);
        [keys[k], keys[j]] = [keys[j], keys[k]];
      }
      for (const k of keys) shuffled[k] = header[k];
      (shuffled[name] as Record<string, unknown>).note = "ignored";
      const json = JSON.stringify(shuffled, null, int(3)) + " ".repeat(int(20));
      return { bytes: assemble(json, data), kind: "valid rewrite", mustReject: false };
    }
    case 18: { // two tensors' offsets swapped: valid when they have the same size
      const other = pick(names);
      const a = entry(), b = header[other] as Entry;
      [a.data_offsets, b.data_offsets] = [b.data_offsets, a.data_offsets];
      return rebuild(header, data, "offsets swapped", false);
    }
    case 19: { // a tensor renamed (valid for the reader, unexpected for the model)
      const e = header[name];
      delete header[name];
      const to = pick([name + "x", "", "__proto__", "constructor", "layers.9.0.norm.weight"]);
      Object.defineProperty(header, to, { value: e, enumerable: true, writable: true });
      return rebuild(header, data, "renamed", false);
    }
    case 20: { // a character of the header text deleted or inserted
      const at = int(n);
      const t = r() < 0.5
        ? text.slice(0, at) + text.slice(at + 1)
        : text.slice(0, at) + pick(['"', "{", "}", ",", ":", "[", "0", "\\", " "]) + text.slice(at);
      return { bytes: assemble(t, data), kind: "header char edit", mustReject: false };
    }
    case 21: { // the header length's high bytes set
      const b = base.slice();
      b[8 - 1 - int(4)] = 1 + int(255);
      return { bytes: b, kind: "header length huge", mustReject: true };
    }
    case 22: { // a byte of the header overwritten
      const b = base.slice();
      b[8 + int(n)] = int(256);
      return { bytes: b, kind: "header byte", mustReject: false };
    }
    default: { // several data bytes overwritten (NaN, Inf patterns likely)
      const b = base.slice();
      for (let k = 0; k < 4; k++) {
        b[8 + n + int(data.length)] = pick([0xff, 0x7f, 0x80, 0x7c, int(256)]);
      }
      return { bytes: b, kind: "data bytes", mustReject: false };
    }
  }
}

/** The rule a rejection names, for the counts. */
function rule(msg: string): string {
  const rules: [string, RegExp][] = [
    ["file too short", /8-byte header length is missing/],
    ["header length", /header length \d+ (runs past|is over)|header length is 0/],
    ["header start", /must start with/],
    ["UTF-8", /not valid UTF-8/],
    ["duplicate key", /duplicate key/],
    ["JSON syntax", /not valid JSON/],
    ["padding", /after its JSON object/],
    ["metadata", /"__metadata__"/],
    ["entry not an object", /must be an object \{ dtype/],
    ["size vs shape", /needs \d+ bytes|needs [\d.e+]+ bytes/],
    ["dtype", /dtype/],
    ["shape", /invalid shape/],
    ["data_offsets", /invalid data_offsets|out of range/],
    ["overlap", /overlap/],
    ["gap", /gap/],
    ["trailing bytes", /trailing bytes/],
    ["model: unexpected tensors", /unexpected tensors/],
    ["model: missing tensor", /missing tensor|has no layers/],
    ["model: shape", /has shape|rows but/],
    ["model: heads×dimHead", /splits|dimHead/],
    ["model: non-finite", /non-finite/],
  ];
  return rules.find(([, re]) => re.test(msg))?.[0] ?? `other: ${msg}`;
}

function checkRejection(e: unknown, m: Mutant): string {
  ok(e instanceof Error && e.constructor === Error, `${m.kind}: threw ${String(e)}`);
  const msg = (e as Error).message;
  ok(msg.startsWith(`specdec: ${SOURCE}`), `${m.kind}: message does not name the file: ${msg}`);
  // "NaN" only as a count of NaN weights ("1 NaN of 64 values"), never as a computed size
  ok(!/undefined|NaN|\[object Object\]|TypeError/.test(msg.replace(/\d+ NaN of/g, "")), msg);
  return rule(msg);
}

const MUTANTS = 6000;

function* mutants(): Generator<Mutant> {
  const r = rng(2024);
  const files = bases();
  for (let i = 0; i < MUTANTS; i++) yield mutate(files[i % files.length], r);
}

Deno.test(`readSafetensors() rejects or loads exactly each of ${MUTANTS} mutated checkpoints`, () => {
  const rejected = new Map<string, number>();
  const loadedByKind = new Map<string, number>();
  let loaded = 0;
  for (const m of mutants()) {
    let got;
    try {
      got = readSafetensors(m.bytes, SOURCE);
    } catch (e) {
      const r = checkRejection(e, m);
      rejected.set(r, (rejected.get(r) ?? 0) + 1);
      continue;
    }
    ok(!m.mustReject, `a "${m.kind}" mutant was accepted`);
    const want = oracle(m.bytes);
    deepStrictEqual([...got.tensors.keys()].sort(), [...want.keys()].sort(), m.kind);
    for (const [name, w] of want) {
      deepStrictEqual(got.tensors.get(name)!.shape, w.shape, `${m.kind} ${name}`);
      sameValues(got.tensors.get(name)!.data, w.data, `${m.kind} ${name}`);
    }
    loaded++;
    loadedByKind.set(m.kind, (loadedByKind.get(m.kind) ?? 0) + 1);
  }
  const total = [...rejected.values()].reduce((a, b) => a + b, 0) + loaded;
  deepStrictEqual(total, MUTANTS);
  ok(![...rejected.keys()].some((k) => k.startsWith("other")), [...rejected.keys()].join("; "));
  // the mix must exercise both outcomes broadly
  ok(
    loaded > MUTANTS / 10 && rejected.size >= 12,
    `${loaded} loaded, rules ${[...rejected.keys()]}`,
  );
  console.log(
    `safetensors fuzz: ${total} mutants, ${total - loaded} rejected, ${loaded} loaded exactly\n` +
      `  rejected by rule: ${
        [...rejected].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ")
      }\n` +
      `  loaded by kind: ${[...loadedByKind].map(([k, v]) => `${k} ${v}`).join(", ")}`,
  );
});

Deno.test("readModelCheckpoint() rejects or loads exactly every 10th mutant", () => {
  const rejected = new Map<string, number>();
  let loaded = 0, i = 0;
  for (const m of mutants()) {
    if (i++ % 10) continue;
    let ck;
    try {
      ck = readModelCheckpoint(m.bytes, { source: SOURCE });
    } catch (e) {
      const r = checkRejection(e, m);
      rejected.set(r, (rejected.get(r) ?? 0) + 1);
      continue;
    }
    const want = oracle(m.bytes);
    for (const [name, v] of ck.values) sameValues(v, want.get(name)!.data, `${m.kind} ${name}`);
    ok([...ck.values.values()].every((v) => v.every(Number.isFinite)), "only finite weights load");
    loaded++;
  }
  ok(loaded > 0 && rejected.has("model: non-finite"), `${loaded} loaded, ${[...rejected.keys()]}`);
  console.log(
    `model loader on ${i / 10} mutants: ${loaded} loaded exactly, rejected by rule: ` +
      [...rejected].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", "),
  );
});

gpuTest("Decoder.fromSafetensors() rejects or loads exactly a sample of mutants", async (gpu) => {
  let loaded = 0, rejected = 0, i = 0;
  for (const m of mutants()) {
    if (i++ % 150) continue;
    let model;
    try {
      model = await Decoder.fromSafetensors(gpu, m.bytes, { source: SOURCE });
    } catch (e) {
      checkRejection(e, m);
      rejected++;
      continue;
    }
    const want = oracle(m.bytes);
    const got = await model.paramValues();
    for (const [name, v] of Object.entries(got)) sameValues(v, want.get(name)!.data, name);
    model.destroy();
    loaded++;
  }
  ok(loaded > 0 && rejected > 0, `${loaded} loaded, ${rejected} rejected`);
});
