import { deepStrictEqual, throws } from "node:assert/strict";
import { readSafetensors, writeSafetensors } from "../model/checkpoint.ts";

/** Builds a safetensors file from a raw header object and data bytes. */
function raw(
  header: unknown,
  data: Uint8Array = new Uint8Array(0),
  lengthOverride?: number,
): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(lengthOverride ?? json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("writeSafetensors() then readSafetensors() round-trips values, shapes and metadata", () => {
  const a = new Float32Array([1.5, -2, 3.25, 0, Infinity, -0]);
  const bytes = writeSafetensors({
    "a.weight": { shape: [2, 3], data: a },
    b: { shape: [], data: new Float32Array([7]) },
  }, {
    format: "pt",
  });
  const { tensors, metadata } = readSafetensors(bytes);
  deepStrictEqual(tensors.get("a.weight"), { shape: [2, 3], data: a });
  deepStrictEqual(tensors.get("b")?.data, new Float32Array([7]));
  deepStrictEqual(metadata, { format: "pt" });
  // header padded to 8 bytes, as the safetensors reference writer does
  deepStrictEqual(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
});

Deno.test("readSafetensors() reports truncated and garbled files", () => {
  throws(
    () => readSafetensors(new Uint8Array(3), "m.safetensors"),
    /m\.safetensors .* only 3 bytes/,
  );
  throws(() => readSafetensors(raw({}, undefined, 1000)), /header length 1000 runs past the end/);
  throws(() => readSafetensors(raw("{not json")), /header is not valid JSON/);
  throws(() => readSafetensors(raw("[1,2]")), /header is not a JSON object/);
});

Deno.test("readSafetensors() reports bad dtypes, shapes and offsets", () => {
  const data = new Uint8Array(16);
  throws(
    () => readSafetensors(raw({ w: { dtype: "I64", shape: [2], data_offsets: [0, 16] } }, data)),
    /tensor "w" has dtype "I64" \(not read by specdec\); supported: F32, F16, BF16, F64/,
  );
  throws(
    () => readSafetensors(raw({ w: { dtype: "F32", shape: [2, -1], data_offsets: [0, 8] } }, data)),
    /tensor "w" has an invalid shape/,
  );
  throws(
    () => readSafetensors(raw({ w: { dtype: "F32", shape: [8], data_offsets: [0, 32] } }, data)),
    /tensor "w" data_offsets \[0, 32\] are out of range \(data is 16 bytes\)/,
  );
  throws(
    () => readSafetensors(raw({ w: { dtype: "F32", shape: [3], data_offsets: [0, 16] } }, data)),
    /needs 12 bytes, its data_offsets span 16/,
  );
  throws(
    () =>
      readSafetensors(
        raw({
          a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
          b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
        }, data),
      ),
    /tensors "a" and "b" overlap/,
  );
  throws(
    () => readSafetensors(raw({ w: { dtype: "F32", shape: [1] } }, data)),
    /invalid data_offsets/,
  );
});

Deno.test("readSafetensors() converts F16, BF16 and F64", () => {
  const data = new Uint8Array(2 + 2 + 8);
  const dv = new DataView(data.buffer);
  dv.setUint16(0, 0x3c00, true); // f16 1.0
  dv.setUint16(2, 0xc040, true); // bf16 -3.0
  dv.setFloat64(4, 0.5, true);
  const { tensors } = readSafetensors(raw({
    h: { dtype: "F16", shape: [1], data_offsets: [0, 2] },
    b: { dtype: "BF16", shape: [1], data_offsets: [2, 4] },
    d: { dtype: "F64", shape: [1], data_offsets: [4, 12] },
  }, data));
  deepStrictEqual(
    [tensors.get("h")!.data[0], tensors.get("b")!.data[0], tensors.get("d")!.data[0]],
    [1, -3, 0.5],
  );
});

Deno.test("writeSafetensors() rejects a shape that disagrees with the data", () => {
  throws(
    () => writeSafetensors({ w: { shape: [2, 2], data: new Float32Array(3) } }),
    /tensor "w" has shape \[2,2\] \(4 values\) but 3 values/,
  );
});
