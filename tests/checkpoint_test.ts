import { deepStrictEqual, match, ok, throws } from "node:assert/strict";
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

/** A valid two-tensor file: a (2 f32) then b (1 f32); `header` edits its JSON before writing. */
function twoTensors(
  edit: (h: Record<string, unknown>) => unknown = (h) => h,
  data = new Uint8Array(12),
): Uint8Array {
  const h: Record<string, unknown> = {
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
  };
  return raw(edit(h) ?? h, data);
}

Deno.test("readSafetensors() enforces the reference's header rules", () => {
  const src = "m.safetensors";
  const read = (bytes: Uint8Array) => () => readSafetensors(bytes, src);
  // the valid file loads
  deepStrictEqual(readSafetensors(twoTensors()).tensors.size, 2);
  // header length over the reference's 100 MB limit, in a small file
  throws(
    read(raw({}, undefined, 100_000_001)),
    /m\.safetensors .*header length 100000001 is over the limit of 100000000 bytes/,
  );
  throws(read(raw("")), /header length is 0/);
  throws(read(raw(" {}")), /must start with '\{', found byte 0x20/);
  // padding after the JSON must be spaces (the reference pads with b' ')
  throws(read(raw("{}\n")), /header has "\\n" after its JSON object at character 2/);
  throws(read(raw("{}x")), /header has "x" after its JSON object/);
  deepStrictEqual(readSafetensors(raw("{}      ")).tensors.size, 0);
  // invalid UTF-8
  const badUtf8 = raw("{}  ");
  badUtf8[10] = 0xff;
  throws(read(badUtf8), /header is not valid UTF-8/);
  // duplicate keys: JSON.parse would keep the last one silently
  throws(
    read(raw(
      '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
      new Uint8Array(4),
    )),
    /m\.safetensors .*duplicate key "w" in the header/,
  );
  throws(
    read(
      raw('{"w":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}', new Uint8Array(4)),
    ),
    /duplicate key "shape" in "w"/,
  );
  throws(
    read(raw('{"__metadata__":{"a":"1","\\u0061":"2"}}')),
    /duplicate key "a" in "__metadata__"/,
  );
});

Deno.test("readSafetensors() names odd metadata and tensor entries without 'undefined' or TypeErrors", () => {
  const cases: [unknown, RegExp][] = [
    [{ __metadata__: null }, /"__metadata__" must be an object of strings, got null/],
    [{ __metadata__: [1] }, /"__metadata__" must be an object of strings, got array \[1\]/],
    [{ __metadata__: 3 }, /got number 3/],
    [
      { __metadata__: { format: 1 } },
      /"__metadata__" entry "format" must be a string, got number 1/,
    ],
    [{ __metadata__: { format: null } }, /entry "format" must be a string, got null/],
    [{ w: null }, /tensor "w" must be an object \{ dtype, shape, data_offsets \}, got null/],
    [{ w: [1, 2] }, /tensor "w" must be an object .*got array \[1,2\]/],
    [{ w: "F32" }, /tensor "w" must be an object .*got string "F32"/],
    [{ w: { shape: [1], data_offsets: [0, 4] } }, /tensor "w" has no dtype .*got nothing/],
    [
      { w: { dtype: null, shape: [1], data_offsets: [0, 4] } },
      /tensor "w" has no dtype .*got null/,
    ],
    [{ w: { dtype: "f32", shape: [1], data_offsets: [0, 4] } }, /dtype "f32" \(unknown\)/],
    [{ w: { dtype: "F32", data_offsets: [0, 4] } }, /tensor "w" has an invalid shape nothing/],
    [{ w: { dtype: "F32", shape: null, data_offsets: [0, 4] } }, /invalid shape null/],
    [{ w: { dtype: "F32", shape: [1.5], data_offsets: [0, 4] } }, /invalid shape array \[1\.5\]/],
    [{ w: { dtype: "F32", shape: [1], data_offsets: null } }, /invalid data_offsets: null/],
    [{ w: { dtype: "F32", shape: [1], data_offsets: [0] } }, /invalid data_offsets: array \[0\]/],
    [{ w: { dtype: "F32", shape: [1], data_offsets: [4, 0] } }, /\[4, 0\] are out of range/],
    [
      { w: { dtype: "F32", shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } },
      /needs \d.* bytes, its data_offsets span 4/,
    ],
  ];
  for (const [header, re] of cases) {
    try {
      readSafetensors(raw(header, new Uint8Array(4)), "odd.safetensors");
      throw new Error(`accepted ${JSON.stringify(header)}`);
    } catch (e) {
      const msg = (e as Error).message;
      ok(msg.startsWith("specdec: odd.safetensors is not a valid safetensors file: "), msg);
      ok(!/undefined|TypeError|\[object Object\]/.test(msg), msg);
      match(msg, re);
    }
  }
});

Deno.test("readSafetensors() requires the tensors to cover the data section exactly", () => {
  const read = (bytes: Uint8Array) => () => readSafetensors(bytes, "c.safetensors");
  // trailing bytes after the last tensor
  throws(
    read(twoTensors(undefined, new Uint8Array(13))),
    /c\.safetensors .*1 trailing bytes after the last tensor "b" \(tensors cover 12 of 13 bytes/,
  );
  throws(read(raw({}, new Uint8Array(4))), /4 trailing bytes after a header with no tensors/);
  // a gap between tensors, and before the first
  throws(
    read(twoTensors((h) => {
      h.b = { dtype: "F32", shape: [1], data_offsets: [12, 16] };
    }, new Uint8Array(16))),
    /gap: bytes \[8, 12\) between tensors "a" and "b" belong to no tensor/,
  );
  throws(
    read(raw({ w: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8))),
    /gap: bytes \[0, 4\) before tensor "w"/,
  );
  // the case: a header length one byte short turns the last padding space into data
  const good = writeSafetensors({ w: { shape: [3], data: new Float32Array([1, 2, 3]) } });
  const dv = new DataView(good.buffer);
  const n = Number(dv.getBigUint64(0, true));
  ok(good[8 + n - 1] === 0x20, "the fixture's header ends with padding");
  const short = good.slice();
  new DataView(short.buffer).setBigUint64(0, BigInt(n - 1), true);
  throws(read(short), /1 trailing bytes .*is the header length \d+ right\?/);
  // zero-size tensors are fine anywhere in the order
  const z = readSafetensors(raw({
    e: { dtype: "F32", shape: [0, 3], data_offsets: [4, 4] },
    w: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
  }, new Uint8Array(4)));
  deepStrictEqual(z.tensors.get("e")?.data.length, 0);
});

Deno.test("readSafetensors() keeps a tensor or metadata key named __proto__ as data", () => {
  const { tensors, metadata } = readSafetensors(raw(
    '{"__metadata__":{"__proto__":"x"},"__proto__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    new Uint8Array(4),
  ));
  deepStrictEqual(Object.keys(metadata), ["__proto__"]);
  deepStrictEqual(tensors.get("__proto__")?.shape, [1]);
});
