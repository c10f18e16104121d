import { deepStrictEqual, ok } from "node:assert/strict";
import { embedding, embeddingBackward } from "../kernels/embedding.ts";
import { type Dispatch, grid } from "../kernels/gpu.ts";
import { assertClose, gpuTest, randomF32, randomInts, randomNormal } from "./helpers.ts";
import { dot, embeddingBackwardRef, embeddingRef, finiteDifferences } from "./reference/ops.ts";

/** The same dispatch with its workgroups split over x and y at a tiny limit (tests the split). */
function splitGrid(d: Dispatch): Dispatch {
  return { ...d, workgroups: grid(d.workgroups[0], 3) };
}

Deno.test("embeddingBackwardRef() matches central finite differences", () => {
  const T = 6, C = 3, V = 4;
  const tokens = [1, 3, 1, 0, 1, 3];
  const table = randomNormal(V * C, 1), dOut = randomNormal(T * C, 2);
  const fd = finiteDifferences((tab) => dot(embeddingRef(tokens, tab, T, C), dOut), table);
  assertClose(embeddingBackwardRef(tokens, dOut, T, C, V), fd, { atol: 1e-8, label: "dTable" });
});

gpuTest("embedding() matches the reference on odd sizes, zero rows for tokens ≥ V", async (gpu) => {
  const cases: [number, number, number][] = [[7, 33, 19], [1, 300, 19], [9, 1, 3], [5, 257, 2]];
  for (const [T, C, V] of cases) {
    const tokens = Uint32Array.from(randomInts(T, V, T + C));
    if (T > 2) tokens[T - 1] = V; // out of range
    if (T > 3) tokens[1] = 0xffffffff;
    const table = randomNormal(V * C, C);
    const tb = gpu.upload("tokens", tokens), tab = gpu.upload("table", table);
    const out = gpu.upload("out", randomF32(T * C, 3)); // garbage that must be overwritten
    let d = embedding(gpu, { tokens: tb, table: tab, out, T, C });
    if (T * C > 1000) d = splitGrid(d);
    gpu.run("embedding", [d]);
    deepStrictEqual(
      Array.from(await gpu.readF32(out)),
      Array.from(embeddingRef(tokens, table, T, C)),
      `T=${T} C=${C} V=${V}`,
    );
  }
});

/**
 * dTable in float32 summing t = 0..T−1 in order and then adding the old value: what the kernel
 * promises, to the bit.
 */
function orderedF32Sum(
  tokens: ArrayLike<number>,
  dOut: Float32Array,
  T: number,
  C: number,
  V: number,
  old?: Float32Array,
): number[] {
  const out: number[] = [];
  for (let v = 0; v < V; v++) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let t = 0; t < T; t++) if (tokens[t] === v) s = Math.fround(s + dOut[t * C + c]);
      out.push(old ? Math.fround(s + old[v * C + c]) : s);
    }
  }
  return out;
}

gpuTest("embeddingBackward() sums over t in order, with and without accumulation", async (gpu) => {
  const cases: [number, number, number, boolean][] = [
    [7, 33, 19, false],
    [7, 33, 19, true],
    [1, 300, 19, true],
    [40, 1, 3, false],
    [25, 600, 5, false], // several column blocks, many repeats per token
    [3, 2, 1, true],
    [1100, 70, 7, true], // T over the kernel's chunk of 512 tokens: matches in 3 chunks
  ];
  for (const [T, C, V, accumulate] of cases) {
    const tokens = Uint32Array.from(randomInts(T, V, T * C + V));
    if (T > 2) tokens[T - 2] = V + 4; // out of range: contributes nothing
    const dOut = randomNormal(T * C, T + C), old = randomF32(V * C, 8);
    const tb = gpu.upload("tokens", tokens), dOb = gpu.upload("dOut", dOut);
    const dTable = gpu.upload("dTable", old);
    let d = embeddingBackward(gpu, { tokens: tb, dOut: dOb, dTable, T, C, V, accumulate });
    if (V * Math.ceil(C / 256) > 3) d = splitGrid(d);
    gpu.run("embeddingBackward", [d]);
    const got = Array.from(await gpu.readF32(dTable));
    const label = `T=${T} C=${C} V=${V} acc=${accumulate}`;
    deepStrictEqual(got, orderedF32Sum(tokens, dOut, T, C, V, accumulate ? old : undefined), label);
    const ref = embeddingBackwardRef(tokens, dOut, T, C, V);
    if (accumulate) { for (let i = 0; i < V * C; i++) ref[i] += old[i]; }
    assertClose(got, ref, { atol: 1e-5, rtol: 1e-5, label });
  }
});

gpuTest(
  "embedding() reads back what embeddingBackward() scatters for one-hot tokens",
  async (gpu) => {
    // A permutation of tokens: the backward of the lookup is the inverse lookup.
    const T = 5, C = 4, V = 5;
    const tokens = new Uint32Array([3, 0, 4, 1, 2]);
    const dOut = randomNormal(T * C, 4);
    const tb = gpu.upload("tokens", tokens), dOb = gpu.upload("dOut", dOut);
    const dTable = gpu.buffer("dTable", V * C * 4), back = gpu.buffer("back", T * C * 4);
    gpu.run("round trip", [
      embeddingBackward(gpu, { tokens: tb, dOut: dOb, dTable, T, C, V }),
      embedding(gpu, { tokens: tb, table: dTable, out: back, T, C }),
    ]);
    const got = await gpu.readF32(back);
    ok(got.some((v) => v !== 0));
    deepStrictEqual(got, dOut);
  },
);
